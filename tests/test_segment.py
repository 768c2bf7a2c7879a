"""The Python API (`adaslot.load`, `Segmenter.segment`) and `adaslot segment`, on the shipped demo checkpoint
(demo encoder: no weights file) and on real image files of awkward sizes and modes written here."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, run_cli, write_coco
from PIL import Image

import adaslot
from adaslot.api import prepare_image
from adaslot.config import get_preset
from adaslot.data.transforms import ImageLoadError, compute_geometry, maps_to_original
from adaslot.errors import AdaslotError
from adaslot.evaluate.masks import labels_full_image

torch.set_num_threads(1)
CKPT = str(adaslot.DEMO_CHECKPOINT)
K, D = get_preset("demo").num_slots_stage2, 64  # the demo checkpoint: stage 2, K_max slots of 64 dims
# name -> (height, width) of the images `awkward` writes
SIZES = {"one.png": (1, 1), "wide.jpg": (17, 301), "sub/tall.png": (1000, 40), "gray.png": (50, 60),
         "rgba.png": (48, 64), "sixteen.png": (40, 30), "cmyk.jpg": (33, 70)}


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """RGB uint8 [h, w, 3]: a coloured background, a disc and a bar (objects the demo model splits)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 3) ** 2] = rng.integers(0, 256, 3)
    img[:, int(0.7 * w):int(0.85 * w) + 1] = rng.integers(0, 256, 3)
    return img


@pytest.fixture(scope="module")
def awkward(tmp_path_factory) -> Path:
    """Real files: 1x1, 17x301 JPEG, 1000x40 (in a subfolder), grayscale, RGBA, 16-bit, CMYK; a corrupt JPEG
    and a text file (not listed from a folder)."""
    d = tmp_path_factory.mktemp("awkward")
    (d / "sub").mkdir()
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        rgb = _scene(h, w, i)
        if name == "gray.png":
            im = Image.fromarray(rgb).convert("L")
        elif name == "rgba.png":
            im = Image.fromarray(np.dstack([rgb, np.full((h, w), 128, np.uint8)]), "RGBA")
        elif name == "sixteen.png":
            im = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # mode I;16, full 16-bit range
        elif name == "cmyk.jpg":
            im = Image.fromarray(rgb).convert("CMYK")
        else:
            im = Image.fromarray(rgb)
        im.save(d / name)
    assert Image.open(d / "sixteen.png").mode == "I;16"
    buf = io.BytesIO()
    Image.fromarray(_scene(64, 64, 9)).save(buf, "JPEG")
    (d / "corrupt.jpg").write_bytes(buf.getvalue()[:300])  # cut short: "truncated"
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def model() -> adaslot.Segmenter:
    return adaslot.load(CKPT, device="cpu")


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ---------------------------------------------------------------- the package and the Python API


@pytest.mark.e2e  # a fresh interpreter
def test_import_adaslot_stays_light_and_exports_the_api():
    code = "import adaslot, sys; print('torch' in sys.modules, sorted(adaslot.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.split(" ", 1)[0] == "False"  # torch is imported by adaslot.load, not by `import adaslot`
    for name in ("load", "Segmenter", "Segmentation", "DEMO_CHECKPOINT"):
        assert name in out and hasattr(adaslot, name)
    with pytest.raises(AttributeError):
        adaslot.no_such_name  # noqa: B018


def test_segment_awkward_files_at_their_original_size(model, awkward):
    paths = [awkward / n for n in SIZES]
    results = model.segment(paths, alpha=True, batch_size=3)
    assert repr(model).startswith(f"Segmenter(stage 2, K={K}, encoder demo-colour-pos, 64 px")
    assert len(results) == len(SIZES)
    for (name, (h, w)), r in zip(SIZES.items(), results, strict=True):
        assert r.labels.shape == (h, w) and r.labels.dtype == np.int64, name
        assert r.alpha.shape == (K, h, w) and r.slots.shape == (K, D) and r.kept.shape == (K,)
        assert r.kept.dtype == bool and r.source == str(awkward / name)
        assert r.region == compute_geometry(h, w, 64).crop_region_original()
        assert (r.labels == r.alpha.argmax(0)).all()  # labels are the argmax of the full-size alpha
        assert np.allclose(r.alpha.sum(0), 1.0, atol=1e-4)  # bilinear weights keep the sum over slots
        assert set(np.unique(r.labels)) <= set(np.flatnonzero(r.kept))  # a dropped slot owns no pixel
    assert results[0].region == (0, 0, 1, 1)
    # the 17 x 301 image: the crop keeps the middle 17 x 17 columns
    assert results[1].region == (0, 142, 17, 159)
    # the scenes have objects: the model gives more than one slot somewhere on the larger images
    assert all(r.num_kept > 1 for r in results[1:])  # the model keeps several slots
    assert any(len(np.unique(r.labels)) > 1 for r in results[1:])  # merged, some still split
    with pytest.raises(ImageLoadError, match="truncated"):
        model.segment(awkward / "corrupt.jpg")


def test_segment_is_deterministic_and_batch_independent(model, awkward):
    paths = [awkward / n for n in SIZES]
    batch = model.segment(paths, batch_size=4)
    again = model.segment(paths, batch_size=4)
    single = model.segment(paths[1])
    for a, b in zip(batch, again, strict=True):
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.slots, b.slots)
    assert np.array_equal(single.labels, batch[1].labels)
    assert np.allclose(single.slots, batch[1].slots, atol=1e-5)
    other_seed = adaslot.Segmenter(model.model, model.encoder, seed=1).segment(paths[1])
    assert not np.allclose(other_seed.slots, single.slots)  # the seed is the slot-initialisation noise


def test_every_input_kind_gives_the_file_s_result(model, awkward):
    path = awkward / "wide.jpg"
    want = model.segment(path).labels
    pil = Image.open(path)
    rgb = np.array(pil.convert("RGB"))
    for image in (str(path), pil, rgb, torch.from_numpy(rgb).permute(2, 0, 1),
                  rgb.astype(np.float32) / 255, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255):
        assert np.array_equal(model.segment(image).labels, want), type(image)
    # 16-bit grayscale as an array = the 16-bit PNG; RGBA array = its file (alpha dropped)
    sixteen = awkward / "sixteen.png"
    want16 = model.segment(sixteen).labels
    assert np.array_equal(model.segment(np.asarray(Image.open(sixteen))).labels, want16)
    rgba = awkward / "rgba.png"
    assert np.array_equal(model.segment(np.asarray(Image.open(rgba))).labels, model.segment(rgba).labels)
    # a numpy batch [N, H, W, C] is a list of images
    stack = model.segment(np.stack([rgb, rgb]))
    assert isinstance(stack, list) and len(stack) == 2 and np.array_equal(stack[1].labels, want)
    with pytest.raises(AdaslotError, match=r"in \[0, 1\]"):
        model.segment(rgb.astype(np.float32))
    with pytest.raises(AdaslotError, match="cannot read an image"):
        model.segment(42)


def test_segment_takes_the_keep_decision_from_the_model(model, awkward):
    """A stage-2 model with the quality selector (no learned selector): `kept` is its selection, recomputed
    here from the slot attention of a plain forward, and dropped slots own no pixel."""
    from adaslot.model import AdaSlot
    from adaslot.model.quality import quality_select

    cfg = dataclasses.replace(model.model.cfg, selector="quality")
    quality = AdaSlot(cfg)
    weights = model.model.state_dict()
    quality.load_state_dict({k: v for k, v in weights.items() if not k.startswith("selector.")})
    seg = adaslot.Segmenter(quality.eval(), model.encoder)
    paths = [awkward / n for n in SIZES]
    results = seg.segment(paths)
    x = torch.stack([prepare_image(p, 64)[0] for p in paths])
    with torch.no_grad():
        attn = quality(model.encoder(x), slots_init=quality.slot_attention.fixed_init(len(x), K, 0)).attn
    want = quality_select(attn, k_min=cfg.quality_k_min, tau=cfg.quality_tau, rho=cfg.quality_rho,
                          alpha=cfg.quality_alpha).numpy() > 0.5
    assert np.array_equal(np.stack([r.kept for r in results]), want)
    assert want.sum(1).min() < K  # the selection drops slots here, so the check above is not vacuous
    for r in results:
        assert set(np.unique(r.labels)) <= set(np.flatnonzero(r.kept))


def test_full_image_labels_in_row_blocks_equal_one_pass():
    alpha = torch.rand(7, 14, 14, generator=torch.Generator().manual_seed(0)).softmax(0)
    for h, w in ((1, 1), (17, 301), (1000, 40), (333, 500)):
        geom = compute_geometry(h, w, 224)
        one_pass = maps_to_original(alpha, geom, full_image=True)[0].max(0).indices.numpy()
        blocked = labels_full_image(alpha, geom, block=7 * w * 5 + 3)  # 5 rows per block, a short last one
        assert blocked.shape == (h, w) and np.array_equal(blocked, one_pass)


def test_fixed_slot_init_is_one_draw_for_every_image(model):
    sa = model.model.slot_attention
    a = sa.fixed_init(3, K, seed=0)
    assert a.shape == (3, K, D) and torch.equal(a[0], a[2]) and torch.equal(a[:1], sa.fixed_init(1, K, 0))
    g = torch.Generator().manual_seed(0)
    want = sa.slots_mu + sa.slots_logsigma.exp() * torch.randn(K, D, generator=g)
    assert torch.allclose(a[1], want[0])
    assert not torch.allclose(sa.fixed_init(1, K, 1), a[:1])


# ---------------------------------------------------------------- the command


@pytest.mark.e2e
def test_segment_command_writes_lists_and_resumes(awkward, tmp_path, monkeypatch, capsys, model):
    awkward = Path(shutil.copytree(awkward, tmp_path / "in"))  # this test replaces a file
    out = tmp_path / "out"
    args = ["segment", CKPT, str(awkward), str(tmp_path / "nothing.png"), "--out", str(out), "--vis",
            "--save-slots", "--workers", "0", "--batch-size", "3", "--device", "cpu", "--no-progress"]
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    masks = {n: out / "masks" / (os.path.splitext(n)[0] + ".png") for n in SIZES}  # wide.jpg -> wide.png
    api = {n: r.labels for n, r in zip(SIZES, model.segment([awkward / n for n in SIZES]), strict=True)}
    for name, path in masks.items():
        assert np.array_equal(_png(path), api[name]), name  # the command = the API, at the original size
        assert (out / "vis" / path.relative_to(out / "masks")).is_file()
    vis = Image.open(out / "vis" / "sub" / "tall.png")
    assert vis.width == 3 * 192  # network input | slots | overlay, the 64 px input magnified 3x
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_images"] == len(SIZES)
    assert {(s["file"].rsplit("/", 1)[-1], s["reason"]) for s in manifest["skipped"]} == {
        ("nothing.png", "missing"), ("corrupt.jpg", "truncated")}
    rec = {r["name"]: r for r in manifest["images"]}
    assert rec["wide.png"]["crop_top_left_bottom_right"] == [0, 142, 17, 159]
    assert (rec["sub/tall.png"]["height"], rec["sub/tall.png"]["width"]) == (1000, 40)
    z = np.load(out / "slots.npz")
    assert z["slots"].shape == (len(SIZES), K, D) and z["kept"].shape == (len(SIZES), K)
    order = [str(awkward / n) for n in sorted(SIZES)]  # folder files in sorted path order
    assert list(z["paths"]) == order
    first = {n: z[n].copy() for n in z.files}
    assert np.allclose(first["slots"][order.index(str(awkward / "wide.jpg"))],
                       model.segment(awkward / "wide.jpg").slots, atol=1e-5)

    # rerun: nothing to do
    before = {p: p.stat().st_mtime_ns for p in masks.values()}
    monkeypatch.setattr(sys, "argv", ["adaslot", *args])
    from adaslot import cli

    with pytest.raises(SystemExit):
        cli.main()
    said = capsys.readouterr().out
    assert "(0 in this run)" in said and "corrupt.jpg: truncated" in said
    assert before == {p: p.stat().st_mtime_ns for p in masks.values()}

    # a kill: one image's picture gone, a torn last log line; one image file replaced since
    (out / "vis" / "gray.png").unlink()
    with open(out / "done.jsonl", "a") as f:
        f.write('{"file": "/x", "na')
    Image.fromarray(_scene(17, 301, 42)).save(awkward / "wide.jpg")
    with pytest.raises(SystemExit):
        cli.main()
    assert "(2 in this run)" in capsys.readouterr().out
    assert (out / "vis" / "gray.png").is_file()
    assert np.array_equal(_png(masks["wide.jpg"]), model.segment(awkward / "wide.jpg").labels)
    z = np.load(out / "slots.npz")
    assert list(z["paths"]) == order
    changed = order.index(str(awkward / "wide.jpg"))
    keep = [i for i in range(len(order)) if i != changed]
    assert np.array_equal(z["slots"][keep], first["slots"][keep])
    assert not np.allclose(z["slots"][changed], first["slots"][changed])
    assert all(json.loads(line) for line in (out / "done.jsonl").read_text().splitlines())


@pytest.mark.e2e
def test_segment_command_strict_missing_and_foreign_out(awkward, tmp_path, monkeypatch, capsys):
    base = ["segment", CKPT, "--workers", "0", "--device", "cpu", "--no-progress"]
    code, err = run_cli([*base, str(awkward), "--out", str(tmp_path / "s"), "--strict"], monkeypatch, capsys)
    assert code == 2 and "\n" not in err
    assert re.search(r"corrupt\.jpg: truncated .*; drop --strict to skip it$", err)
    code, err = run_cli([*base, str(tmp_path / "none" / "*.png"), "--out", str(tmp_path / "n")], monkeypatch,
                        capsys)
    assert code == 2 and "no images found" in err
    out = str(tmp_path / "o")
    assert run_cli([*base, str(awkward / "one.png"), "--out", out], monkeypatch, capsys)[0] == 0
    code, err = run_cli([*base, str(awkward / "one.png"), "--out", out, "--seed", "1"], monkeypatch, capsys)
    assert code == 2 and "another segment run (seed differs)" in err
    code, err = run_cli([*base, str(awkward / "one.png"), "--out", out, "--seed", "1", "--overwrite"],
                        monkeypatch, capsys)
    assert code == 0
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["run"]["seed"] == 1


def test_globs_and_names(awkward, tmp_path):
    from adaslot.segment import find_images

    found, missing = find_images([str(awkward / "**" / "*.png"), str(awkward / "wide.jpg")])
    names = dict((os.path.relpath(f, awkward), n) for f, n in found)
    assert names == {"gray.png": "gray.png", "one.png": "one.png", "rgba.png": "rgba.png",
                     "sixteen.png": "sixteen.png", "sub/tall.png": "sub/tall.png", "wide.jpg": "wide.png"}
    assert missing == []
    flat, _ = find_images([str(awkward)], recursive=False)  # image suffixes only: no notes.txt, no sub/
    assert sorted(n for _, n in flat) == ["cmyk.png", "corrupt.png", "gray.png", "one.png", "rgba.png",
                                          "sixteen.png", "wide.png"]
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "out" / "masks").mkdir(parents=True)
    (tmp_path / "out" / "masks" / "a.png").write_bytes(b"")  # an earlier run's output inside the input folder
    found, _ = find_images([str(tmp_path)], exclude=str(tmp_path / "out"))
    assert sorted(n for _, n in found) == ["a.jpg.png", "a.png.png"]


@pytest.mark.e2e
def test_eval_save_masks_and_segment_give_identical_pngs(tmp_path, monkeypatch, capsys):
    """The one mask path: `eval --save-masks` and `segment` write the same bytes for the same image."""
    sizes = [(17, 301), (1000, 40), (64, 64), (50, 90)]
    root = write_coco(tmp_path / "coco", [(h, w, [((0, h // 2, 0, w // 2), 1, 0)]) for h, w in sizes])
    for i, (h, w) in enumerate(sizes, start=1):  # scenes the model splits into several slots
        Image.fromarray(_scene(h, w, i)).save(root / "img" / f"{i}.png")
    code, err = run_cli(["eval", CKPT, "--images", str(root / "img"), "--annotations", str(root / "ann.json"),
                         "--save-masks", "--out", str(tmp_path / "e"), "--batch-size", "3", "--workers", "0",
                         "--num-vis", "0", "--device", "cpu", "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    code, err = run_cli(["segment", CKPT, str(root / "img"), "--out", str(tmp_path / "s"), "--batch-size",
                         "2", "--workers", "0", "--device", "cpu", "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    assert any(len(np.unique(_png(tmp_path / "s" / "masks" / f"{i}.png"))) > 1 for i in range(1, 5))
    for i, (h, w) in enumerate(sizes, start=1):
        e = (tmp_path / "e" / "masks" / f"{i:012d}.png").read_bytes()
        s = (tmp_path / "s" / "masks" / f"{i}.png").read_bytes()
        assert e == s, i
        assert _png(tmp_path / "s" / "masks" / f"{i}.png").shape == (h, w)


# ---------------------------------------------------------------- the README section


def _readme_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Use a trained model", 1)[1].split("\n## ", 1)[0]


@pytest.mark.e2e
def test_readme_python_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", _readme_section(), re.S).group(1)
    assert len(code.strip().splitlines()) == 3
    Image.fromarray(_scene(120, 90, 0)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README's own example)
    result = scope["result"]
    assert result.labels.shape == (120, 90) and result.slots.shape == (K, D) and result.kept.shape == (K,)


@pytest.mark.e2e
def test_readme_command_lines_parse_and_the_demo_one_runs(tmp_path, monkeypatch, capsys):
    import typer

    from adaslot.cli import app

    block = re.search(r"```\n(adaslot segment.*?)```", _readme_section(), re.S).group(1)
    lines = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines()
             if line.startswith("adaslot ")]
    assert {cmd[1] for cmd in lines} == {"segment", "convert-official"}
    assert any("--encoder-weights" in cmd and "dino_vitbase16_pretrain.pth" in cmd for cmd in lines)
    group = typer.main.get_command(app)
    for cmd in lines:  # every flag exists and every required argument is there (nothing runs)
        sub = group.get_command(None, cmd[1])
        sub.make_context(cmd[1], cmd[2:])
    demo = next(cmd for cmd in lines if cmd[2] == "adaslot/assets/demo-stage2.pt")
    (tmp_path / "photos").mkdir()
    Image.fromarray(_scene(80, 100, 1)).save(tmp_path / "photos" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    code, err = run_cli([demo[1], CKPT, *demo[3:], "--workers", "0", "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    assert _png(tmp_path / "cache" / "segments" / "masks" / "a.png").shape == (80, 100)
    assert (tmp_path / "cache" / "segments" / "vis" / "a.png").is_file()
