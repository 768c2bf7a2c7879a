"""The batch decode path (data/decode.py): the same items as the per-image reference, with either decoder, in
workers or "on the device" (the CPU here), on real files of every kind the tests write; and --decoder in
cache-features."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from adaslot.data.coco import CocoDataset, collate
from adaslot.data.decode import finish_on_device, jpeg_kind

torch.set_num_threads(1)


def _photo(h: int, w: int, seed: int) -> Image.Image:
    """Photo-like content: smooth colour fields plus grain (JPEG blocks with real detail)."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.random((1, 3, 6, 8), dtype=np.float32))
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)[0]
    img = img + torch.from_numpy(rng.normal(0, 0.05, (3, h, w)).astype(np.float32))
    return Image.fromarray((img.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A COCO-format folder of every kind of file: JPEGs of several sizes (baseline, progressive, 4:4:4),
    grayscale, CMYK, PNG-in-.jpg, EXIF (rotated and upright), truncated, not an image, wrong size."""
    root = tmp_path_factory.mktemp("decode")
    img = root / "images"
    img.mkdir()
    files: list[tuple[str, int, int]] = []

    def add(name: str, im: Image.Image, fmt: str = "JPEG", wh: tuple[int, int] | None = None, **kw: object
            ) -> None:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        (img / name).write_bytes(buf.getvalue())
        w, h = wh or im.size
        files.append((name, w, h))

    for k, (h, w) in enumerate([(480, 640), (640, 361), (97, 131), (64, 64), (64, 64), (33, 300)]):
        add(f"rgb{k}.jpg", _photo(h, w, k), quality=90)
    add("progressive.jpg", _photo(120, 160, 10), quality=85, progressive=True)
    add("444.jpg", _photo(120, 160, 11), quality=95, subsampling=0)
    add("gray.jpg", _photo(100, 90, 12).convert("L"), quality=90)
    add("cmyk.jpg", _photo(100, 90, 13).convert("CMYK"), quality=90)
    add("png.jpg", _photo(64, 64, 14), fmt="PNG")
    rotated, upright = Image.Exif(), Image.Exif()
    rotated[0x0112], upright[0x0112] = 6, 1
    add("exif6.jpg", _photo(80, 50, 15), wh=(80, 50), exif=rotated)  # annotations in the displayed frame
    add("exif1.jpg", _photo(80, 50, 16), exif=upright)
    good = (img / "rgb2.jpg").read_bytes()
    (img / "truncated.jpg").write_bytes(good[: len(good) // 2])
    files.append(("truncated.jpg", 131, 97))
    (img / "text.jpg").write_bytes(b"not an image\n" * 20)
    files.append(("text.jpg", 64, 64))
    add("size.jpg", _photo(64, 64, 17), wh=(65, 64))
    coco = {"images": [{"id": i + 1, "file_name": f, "width": w, "height": h}
                       for i, (f, w, h) in enumerate(files)],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    (root / "ann.json").write_text(json.dumps(coco))
    return root


def _dataset(root: Path, decoder: str, size: int = 64) -> CocoDataset:
    return CocoDataset(root / "images", root / "ann.json", size=size, views=2, decoder=decoder)


def _by_id(items: list[dict]) -> dict[int, dict]:
    return {int(it["image_id"]): it for it in items}


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_batch_path_gives_the_reference_items(mixed: Path, decoder: str) -> None:
    """Every item of the batch path equals the per-image reference (PIL decode, `transform_image`): the same
    pixels bit for bit, geometry and notes; the same skip reason and detail for every bad file."""
    ref_ds = _dataset(mixed, "pil", size=48)
    ds = _dataset(mixed, decoder, size=48)
    ref = _by_id([ref_ds[i] for i in range(len(ref_ds))])
    got = _by_id(ds.__getitems__(list(range(len(ds)))))
    assert got.keys() == ref.keys() and len(got) == 16
    bad = {i: (it["reason"], it["detail"]) for i, it in ref.items() if not it["ok"]}
    assert sorted(r for r, _ in bad.values()) == ["size-mismatch", "truncated", "unreadable"]
    for i, r in ref.items():
        g = got[i]
        assert g["ok"] == r["ok"], r["file"]
        if not r["ok"]:
            assert (g["reason"], g["detail"]) == bad[i]
            continue
        assert torch.equal(g["image"], r["image"]), r["file"]
        assert g["geometry"] == r["geometry"] and g["notes"] == r["notes"], r["file"]
    notes = {Path(it["file"]).name: it["notes"] for it in ref.values() if it["ok"] and it["notes"]}
    assert notes == {"gray.jpg": ["converted-from-L"], "cmyk.jpg": ["converted-from-CMYK"],
                     "png.jpg": ["PNG-in-jpg"], "exif6.jpg": ["exif-transposed"]}


def test_which_files_torchvision_takes(mixed: Path) -> None:
    """torchvision decodes plain JPEGs (colour or gray, with or without EXIF); CMYK and PNG go to PIL."""
    kinds = {p.name: jpeg_kind(p.read_bytes()) for p in (mixed / "images").iterdir()}
    assert kinds["rgb0.jpg"] == kinds["progressive.jpg"] == kinds["gray.jpg"] == "plain"
    assert kinds["exif6.jpg"] == kinds["exif1.jpg"] == "exif"
    assert kinds["cmyk.jpg"] == kinds["png.jpg"] == kinds["text.jpg"] == "other"


def test_loader_and_device_path_give_the_reference_batch(mixed: Path) -> None:
    """Through a 2-worker DataLoader: the worker path (batched collate without a copy) and the device path
    (workers read bytes; decode + transform in the main process, here on the CPU) give the reference
    batches, skips included."""
    ref_ds = _dataset(mixed, "pil")
    ref = _by_id([ref_ds[i] for i in range(len(ref_ds))])
    batches = [list(range(0, 9)), list(range(9, len(ref_ds)))]
    for on_device in (False, True):
        ds = _dataset(mixed, "torchvision")
        ds.decode_on_device = on_device
        loader = DataLoader(ds, batch_sampler=batches, num_workers=2, collate_fn=collate)
        seen = 0
        for batch in loader:
            if on_device:
                assert "decoded" in batch and batch["image"].numel() == 0
                batch = finish_on_device(batch, 64, False, True, 2, "auto", torch.device("cpu"))
            ds.record(batch)
            assert batch["image"].shape == (len(batch["index"]), 2, 3, 64, 64)
            for j, image_id in enumerate(batch["image_id"].tolist()):
                assert torch.equal(batch["image"][j], ref[image_id]["image"])
                assert batch["geometry"][j] == ref[image_id]["geometry"]
            seen += len(batch["index"]) + len(batch["skipped"])
        assert seen == len(ds)
        assert ds.summary()["skipped_by_reason"] == {"truncated": 1, "unreadable": 1, "size-mismatch": 1}
        assert ds.summary()["notes"] == {"converted-from-L": 1, "converted-from-CMYK": 1, "PNG-in-jpg": 1,
                                         "exif-transposed": 1}


def test_cache_features_decoder_flag(synthetic_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    """`cache-features --decoder torchvision`: the store records the decoder and holds the same features as
    the reference's (libjpeg-turbo agrees on these files); cache-verify checks it with that decoder; a store
    made with one decoder is not resumed with the other (one line, exit 2)."""
    import zarr

    from tests.helpers import run_cli

    common = ["cache-features", "--root", str(synthetic_coco), "--split", "val",
              "--encoder", "demo-colour-pos", "--image-size", "64", "--workers", "0",
              "--device", "cpu", "--no-progress"]
    stores = {}
    for decoder in ("pil", "torchvision"):
        out = tmp_path / f"{decoder}.zarr"
        code, err = run_cli([*common, "--out", str(out), "--decoder", decoder], monkeypatch, capsys)
        assert code == 0, err
        stores[decoder] = zarr.open_group(out, mode="r")
    assert "decoder" not in stores["pil"].attrs["transform"]  # stores made before the option still resume
    assert stores["torchvision"].attrs["transform"]["decoder"] == "torchvision"
    a, b = (np.asarray(s["features"][:]) for s in stores.values())
    assert a.shape[0] == 6 and np.array_equal(a, b)
    verify = ["cache-verify", str(tmp_path / "torchvision.zarr"), "--sample", "3", "--device", "cpu"]
    code, err = run_cli(verify, monkeypatch, capsys)  # recomputes with the recorded decoder
    assert code == 0, err
    again = [*common, "--out", str(tmp_path / "pil.zarr"), "--decoder", "torchvision"]
    code, err = run_cli(again, monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 0 and "decoder" in err and "--overwrite" in err, err
