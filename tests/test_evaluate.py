"""`adaslot eval` end to end: real random-vit-tiny encoder, tiny random AdaSlot checkpoints, real COCO-format
files read by pycocotools (the synthetic fixture, plus a small non-square dataset written here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, write_coco
from PIL import Image

from adaslot.checkpoint import make_payload, save_checkpoint
from adaslot.config import DataSpec, EvalConfig, ModelConfig
from adaslot.config.model import MethodOverrides
from adaslot.data.coco import CocoDataset
from adaslot.data.transforms import compute_geometry
from adaslot.encoders import build_encoder
from adaslot.errors import AdaslotError
from adaslot.evaluate import (
    EvalItem,
    EvalOptions,
    evaluate_model,
    gt_at_side,
    labels_at_side,
    labels_full_image,
    labels_fullres,
    patch_ceiling,
    print_results,
    run_eval,
    score_image,
)
from adaslot.features import LiveFeatures
from adaslot.metrics import overlap_free_labels
from adaslot.model import AdaSlot

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
torch.set_num_threads(1)

ENCODER = "random-vit-tiny"


def _files(root: Path, strict: bool = False) -> DataSpec:
    """The val data of a dataset written by `write_coco` (img/ + ann.json)."""
    return DataSpec(split="val", images=str(root / "img"), annotations=str(root / "ann.json"), strict=strict)


def _quick(checkpoint: Path, root: Path, tmp_path: Path, strict: bool = False) -> EvalConfig:
    """Eval of `checkpoint` on a `write_coco` dataset into tmp_path/o: no pictures, main process, CPU."""
    return EvalConfig(checkpoint=str(checkpoint), data=_files(root, strict), out=str(tmp_path / "o"),
                      workers=0, num_vis=0, device="cpu", progress=False)


def tiny_config(adaptive: bool) -> ModelConfig:
    return ModelConfig(feature_dim=192, num_tokens=196, slot_dim=32, num_slots=5, input_mlp_hidden=64,
                       slot_mlp_hidden=64, decoder_hidden=(64,), adaptive=adaptive, selector_hidden=32)


@pytest.fixture(scope="module")
def encoder():
    return build_encoder(ENCODER)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, encoder) -> dict[int, Path]:
    """Stage-1 and stage-2 checkpoints of a tiny random model, saved with the train module's format."""
    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    for stage in (1, 2):
        cfg = tiny_config(stage == 2)
        torch.manual_seed(stage)
        model = AdaSlot(cfg)
        if stage == 2:  # bias the selector so that some slots are kept and some dropped
            torch.nn.init.normal_(model.selector.net[-1].bias, 0, 2.0)
        out[stage] = save_checkpoint(d / f"stage{stage}.pt", make_payload(
            stage=stage, model_config=cfg, encoder=ENCODER, model_state=model.state_dict(),
            feature_contract=encoder.contract(), step=123))
    return out


@pytest.fixture(scope="module")
def odd_coco(tmp_path_factory) -> Path:
    """Non-square images: overlapping objects, a crowd-only image, an image without annotations."""
    return write_coco(tmp_path_factory.mktemp("odd"), [
        (240, 320, [((20, 120, 30, 150), 1, 0), ((100, 200, 140, 300), 2, 0), ((150, 230, 10, 100), 3, 1)]),
        (300, 200, [((40, 260, 50, 150), 1, 1)]),
        (256, 256, []),
    ])


# ---------------------------------------------------------------- masks from alpha


def test_fullres_masks_follow_the_geometry():
    alpha = torch.rand(5, 14, 14, generator=torch.Generator().manual_seed(0)).softmax(0)
    # A 448 x 448 image seen at 224: full resolution = bilinear upsampling of alpha straight to 448.
    labels, region = labels_fullres(alpha, compute_geometry(448, 448, 224))
    assert region == (0, 0, 448, 448)
    assert (labels == labels_at_side(alpha, 448)).mean() > 0.999  # float rounding may flip near-ties
    # A landscape image: the crop cuts the sides; full-image masks replicate the crop border outwards.
    geom = compute_geometry(240, 320, 224)
    top, left, bottom, right = geom.crop_region_original()
    assert (top, bottom) == (0, 240) and 0 < left < right < 320
    labels, _ = labels_fullres(alpha, geom)
    full = labels_full_image(alpha, geom)
    assert labels.shape == (240, right - left) and full.shape == (240, 320)
    assert (full[:, left:right] == labels).all()
    for c in range(left):
        assert (full[:, c] == full[:, left]).all()
    for c in range(right, 320):
        assert (full[:, c] == full[:, right - 1]).all()


def _oracle_item(h: int, w: int, boxes: list[tuple[int, int, int, int]]) -> tuple[EvalItem, torch.Tensor]:
    """An image whose objects are patch-aligned rectangles, and the alpha that paints them exactly."""
    masks = np.zeros((len(boxes), h, w), bool)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    geom = compute_geometry(h, w, 224)
    # slot 0 = background, slot i + 1 = object i, one-hot per 16 x 16 patch of the 224 crop
    lab = np.zeros((224, 224), np.int64)
    crop = masks[:, geom.crop_top:geom.crop_top + 224, geom.crop_left:geom.crop_left + 224] if h == w == 224 \
        else None
    assert crop is not None
    for i in range(len(boxes)):
        lab[crop[i]] = i + 1
    patch = torch.from_numpy(lab[8::16, 8::16])
    alpha = torch.nn.functional.one_hot(patch, len(boxes) + 1).permute(2, 0, 1).float()
    item = EvalItem(1, None, geom, masks, np.arange(1, len(boxes) + 1), np.zeros(len(boxes), bool))
    return item, alpha


def test_oracle_alpha_scores_perfectly_under_every_protocol():
    item, alpha = _oracle_item(224, 224, [(16, 96, 32, 128), (128, 208, 64, 224), (0, 48, 160, 224)])
    scores = score_image(alpha, item, ("adaslot", "dinosaur", "fullres"))
    # Bilinear one-hot patches put straight edges exactly on the patch edges; only the convex corners get
    # rounded off (a few pixels per corner), so "perfect" is just below 1.
    for p in ("adaslot", "dinosaur", "fullres"):
        assert scores[p]["fg_ari"] > 0.98 and scores[p]["mbo_i"] > 0.98 and scores[p]["miou"] > 0.98, p
        assert scores[p]["mask_corloc"] == 1.0 and scores[p]["num_objects"] == 3
    assert scores["adaslot"] == pytest.approx(scores["fullres"])  # a 224 px original: the same pixels
    # block upsampling of the same patch labels is exact: the patch ceiling of this image is 1
    assert patch_ceiling([item]) == 1.0


def test_patch_ceiling_below_one_for_unaligned_objects(synthetic_coco):
    ds = CocoDataset.from_root(synthetic_coco, "val")
    c = patch_ceiling(ds)
    assert 0.5 < c < 1.0


# ---------------------------------------------------------------- the eval loop


@pytest.mark.e2e
def test_eval_stage2_end_to_end(checkpoints, odd_coco, tmp_path):
    out = tmp_path / "ev"
    cfg = EvalConfig(checkpoint=str(checkpoints[2]), data=_files(odd_coco), out=str(out), save_masks=True,
                     num_vis=2, workers=0, batch_size=2, device="cpu")
    r = run_eval(cfg)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["protocols"]) == {"adaslot", "dinosaur", "fullres"}
    for p, s in m["protocols"].items():
        for key in ("fg_ari", "mbo_i", "mbo_c", "miou", "mask_corloc", "num_images", "num_skipped",
                    "mean_kept_slots", "kept_vs_objects_r"):
            assert key in s, (p, key)
        assert s["num_images"] == 3
        hist = s["kept_histogram"]  # entry k = images with k kept slots
        assert sum(hist) == 3
        assert s["mean_kept_slots"] == pytest.approx(np.dot(np.arange(len(hist)), hist) / 3)
    # image 3 has no annotation; image 2 only a crowd one (dropped by the dinosaur protocol)
    assert m["protocols"]["adaslot"]["num_skipped"] == 1
    assert m["protocols"]["fullres"]["num_skipped"] == 1
    assert m["protocols"]["dinosaur"]["num_skipped"] == 2
    assert m["keep_mode"].startswith("deterministic")
    assert m["checkpoint"]["step"] == 123 and len(m["checkpoint"]["sha256"]) == 64
    assert m["feature_contract"]["encoder"] == ENCODER
    assert r["out"] == str(out)
    # full-image label maps at the original size, crop boxes beside them; two picture grids
    for image_id, (h, w) in {1: (240, 320), 2: (300, 200), 3: (256, 256)}.items():
        png = np.asarray(Image.open(out / "masks" / f"{image_id:012d}.png"))
        assert png.shape == (h, w) and png.max() < 5
    boxes = json.loads((out / "masks" / "crop_boxes.json").read_text())
    assert boxes["2"]["crop_top_left_bottom_right"][1::2] == [0, 200]
    assert len(list((out / "vis").glob("*.png"))) == 2


@pytest.mark.e2e
def test_gumbel_eval_is_seeded_and_recorded(checkpoints, synthetic_coco):
    from adaslot.checkpoint import load_model

    model, _ = load_model(checkpoints[2])
    enc = LiveFeatures(build_encoder(ENCODER))
    ds = CocoDataset.from_root(synthetic_coco, "val")
    cfg = EvalOptions(protocols=("adaslot",), workers=0, gumbel_eval=3)
    model.train()
    rng_before = torch.get_rng_state()
    a = evaluate_model(model, enc, ds, cfg)
    b = evaluate_model(model, enc, ds, cfg)
    assert model.training  # restored
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    assert a["protocols"] == b["protocols"]
    assert "gumbel" in a["keep_mode"] and "seed 3" in a["keep_mode"]
    det = evaluate_model(model, enc, ds, EvalOptions(protocols=("adaslot",), workers=0, max_images=4))
    assert det["keep_mode"].startswith("deterministic") and det["num_images"] == 4


@pytest.mark.e2e
def test_stage1_in_memory_on_synthetic(checkpoints, synthetic_coco):
    from sklearn.metrics import adjusted_rand_score

    from adaslot.checkpoint import load_model

    model, _ = load_model(checkpoints[1])
    seen = []
    r = evaluate_model(model, LiveFeatures(build_encoder(ENCODER)),
                       CocoDataset.from_root(synthetic_coco, "val"),
                       EvalOptions(protocols=("adaslot", "fullres"), workers=0), on_image=seen.append)
    s = r["protocols"]["adaslot"]
    assert set(r["protocols"]) == {"adaslot", "fullres"} and "mean_kept_slots" not in s
    assert s["num_images"] == 6 and s["num_skipped"] == 0 and len(seen) == 6
    # Known values: each image's FG-ARI is scikit-learn's ARI over its single-object GT pixels at 224, and
    # the summary is the mean of the per-image scores.
    for x in seen:
        gt, _ = overlap_free_labels(gt_at_side(x.item.masks, 224))
        pred = labels_at_side(x.alpha_grid, 224)
        assert x.scores["adaslot"]["fg_ari"] == pytest.approx(adjusted_rand_score(gt[gt > 0], pred[gt > 0]))
    for key in ("fg_ari", "mbo_i", "miou", "mask_corloc"):
        assert s[key] == pytest.approx(np.mean([x.scores["adaslot"][key] for x in seen]))
    # 224 px originals: full resolution == the adaslot protocol (up to float near-ties)
    assert abs(r["protocols"]["fullres"]["mbo_i"] - s["mbo_i"]) < 1e-3


# ---------------------------------------------------------------- one-line errors through the CLI


@pytest.mark.e2e
def test_cli_eval_table(checkpoints, synthetic_coco, tmp_path, monkeypatch, capsys):
    code, _ = run_cli(["eval", str(checkpoints[1]), "--root", str(synthetic_coco), "--out", str(tmp_path),
                       "--protocol", "dinosaur", "--num-vis", "0", "--workers", "0", "--no-progress",
                       "--device", "cpu"], monkeypatch, capsys)
    assert code in (0, None)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert list(m["protocols"]) == ["dinosaur"] and m["protocols"]["dinosaur"]["num_images"] == 6


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["not-a-checkpoint", "no-annotations", "encoder-weights", "protocol",
                                  "gumbel-stage1"])
def test_cli_bad_inputs_are_one_line_errors(case, checkpoints, synthetic_coco, tmp_path, monkeypatch, capsys):
    ckpt = str(checkpoints[1])
    data = ["--root", str(synthetic_coco)]
    extra: list[str] = []
    if case == "not-a-checkpoint":
        bad = tmp_path / "model.pt"
        bad.write_bytes(b"this is not a checkpoint")
        ckpt = str(bad)
    elif case == "no-annotations":
        empty = write_coco(tmp_path / "empty", [(64, 80, []), (50, 50, [])])
        data = ["--images", str(empty / "img"), "--annotations", str(empty / "ann.json")]
    elif case == "encoder-weights":
        import timm

        torch.manual_seed(1)  # other weights than random-vit-tiny's seed 0
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
        torch.save(vit.state_dict(), tmp_path / "other.pth")
        extra = ["--encoder-weights", str(tmp_path / "other.pth")]
    elif case == "gumbel-stage1":
        extra = ["--gumbel-eval", "3"]  # checkpoints[1] is stage 1: nothing to sample
    else:
        extra = ["--protocol", "coco"]
    code, err = run_cli(["eval", ckpt, *data, *extra, "--out", str(tmp_path / "o"), "--workers", "0",
                         "--no-progress", "--device", "cpu"], monkeypatch, capsys)
    assert code == 2
    assert err.startswith("adaslot: error: ") and "\n" not in err
    expected = {"not-a-checkpoint": "not an adaslot checkpoint", "no-annotations": "no annotated images",
                "encoder-weights": "feature contract", "protocol": "unknown --protocol",
                "gumbel-stage1": "stage-1 checkpoint"}[case]
    assert expected in err


@pytest.mark.e2e
def test_unreadable_image_is_skipped_and_listed(checkpoints, tmp_path):
    data = write_coco(tmp_path / "d", [(64, 96, [((8, 40, 8, 60), 1, 0)]),
                                       (80, 80, [((0, 30, 0, 30), 2, 0)])])
    (data / "img" / "2.png").write_bytes(b"not a png")
    r = run_eval(_quick(checkpoints[1], data, tmp_path))
    assert r["num_images"] == 1 and r["protocols"]["adaslot"]["num_images"] == 1
    assert [s["image_id"] for s in r["skipped_images"]] == [2]
    assert r["skipped_images"][0]["reason"] == "unreadable"
    assert r["dataset"]["skipped"] == 1
    # --strict: the first unusable image stops the run with one line, and no metrics.json is left behind
    with pytest.raises(AdaslotError, match=r"image 2 \(.*2\.png\): unreadable .*drop --strict"):
        run_eval(_quick(checkpoints[1], data, tmp_path, strict=True))
    assert not (tmp_path / "o" / "metrics.json").exists()
    (data / "img" / "1.png").unlink()  # an image listed in the annotations but missing on disk
    with pytest.raises(AdaslotError, match=r"image 1 \(.*1\.png\): missing"):
        run_eval(_quick(checkpoints[1], data, tmp_path, strict=True))


@pytest.mark.e2e
def test_from_cache_proxy_matches_the_image_pass(checkpoints, synthetic_coco, tmp_path):
    from adaslot.config import CacheConfig
    from adaslot.store.writer import run_cache_features

    store = tmp_path / "val.zarr"
    run_cache_features(CacheConfig(out=str(store), data=DataSpec(root=str(synthetic_coco), split="val"),
                               encoder=ENCODER, workers=0, device="cpu", progress=False, chunk_samples=2,
                               shard_samples=4))
    common = dict(checkpoint=str(checkpoints[2]), data=DataSpec(root=str(synthetic_coco), split="val"),
                  workers=0, num_vis=0,
                  device="cpu", batch_size=4, protocol="adaslot,dinosaur")
    full = run_eval(EvalConfig(out=str(tmp_path / "a"), **common))
    proxy = run_eval(EvalConfig(out=str(tmp_path / "b"), from_cache=str(store), **common))
    assert "PROXY" in proxy["source"] and "PROXY" not in full["source"]
    for p in ("adaslot", "dinosaur"):
        for key in ("fg_ari", "mbo_i", "miou", "mean_kept_slots"):
            # fp16 storage moves a few near-tie pixels at most
            assert proxy["protocols"][p][key] == pytest.approx(full["protocols"][p][key], abs=2e-3), (p, key)
    # a checkpoint trained on other features refuses the store
    payload = torch.load(checkpoints[2], weights_only=True)
    payload["feature_contract"]["weights_sha256"] = "0" * 64
    other = tmp_path / "other.pt"
    save_checkpoint(other, payload)
    cfg = EvalConfig(out=str(tmp_path / "c"), from_cache=str(store), **{**common, "checkpoint": str(other)})
    with pytest.raises(AdaslotError, match="does not match"):
        run_eval(cfg)


@pytest.mark.e2e
@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--workers", "-1"), ("--max-images", "0"),
                                        ("--num-vis", "-1")])
def test_cli_bad_numbers_are_one_line_errors_before_output(flag, value, checkpoints, synthetic_coco, tmp_path,
                                                          monkeypatch, capsys):
    out = tmp_path / "o"
    code, err = run_cli(["eval", str(checkpoints[1]), "--root", str(synthetic_coco), "--out", str(out), flag,
                         value, "--no-progress", "--device", "cpu"], monkeypatch, capsys)
    assert code == 2 and err == f"adaslot: error: {flag} must be >= {0 if value == '-1' else 1}, got {value}"
    assert not out.exists()


@pytest.mark.e2e
def test_missing_images_are_reported(checkpoints, tmp_path, capsys):
    data = write_coco(tmp_path / "d", [(64, 96, [((8, 40, 8, 60), 1, 0)]),
                                       (80, 80, [((0, 30, 0, 30), 2, 0)])])
    (data / "img" / "2.png").unlink()
    r = run_eval(_quick(checkpoints[1], data, tmp_path))
    print_results(r)
    assert "1 annotated images missing on disk" in capsys.readouterr().out


# ---------------------------------------------------------------- object diagnostics and slot merging


@pytest.mark.e2e
def test_diagnostics_for_every_protocol_and_merging(checkpoints, synthetic_coco, tmp_path, capsys):
    data = DataSpec(root=str(synthetic_coco), split="val")
    cfg = EvalConfig(checkpoint=str(checkpoints[1]), data=data, out=str(tmp_path / "plain"), workers=0,
                     num_vis=0, device="cpu", progress=False)
    plain = run_eval(cfg)
    m = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    for p, s in m["protocols"].items():
        for key in ("split_rate", "merge_rate", "background_slots", "count_confusion", "per_object_count"):
            assert key in s, (p, key)
        assert s["count_confusion"]["slots"] == "active"  # stage 1: slots that win a pixel
        assert sum(map(sum, s["count_confusion"]["counts"])) == 6
        assert sum(v["num_images"] for v in s["per_object_count"].values()) == 6
    assert m["count_confusion_png"] and Image.open(m["count_confusion_png"]).format == "PNG"
    print_results(plain)
    assert "per GT object count (adaslot protocol)" in capsys.readouterr().out

    # the largest threshold, 2, merges all slots (cosine distances are < 2) into one: one kept slot per
    # image, its mask is every pixel
    merged = run_eval(cfg.replace(out=str(tmp_path / "all"), method=MethodOverrides(merge_slots=2.0)))
    s = merged["protocols"]["adaslot"]
    assert "merged below cosine distance 2" in merged["keep_mode"] and merged["method"]["merge_slots"] == 2.0
    assert s["mean_kept_slots"] == 1.0 and s["mean_active_slots"] == 1.0
    assert s["count_confusion"]["slots"] == "kept"
    assert all(len(row) == 2 and row[0] == 0 for row in s["count_confusion"]["counts"])
    assert s["split_rate"] == 0.0  # one slot cannot split an object
    # a threshold below every distance merges nothing: the plain result, now counted as kept slots
    none = run_eval(cfg.replace(out=str(tmp_path / "none"), method=MethodOverrides(merge_slots=1e-12)))
    for p, s in none["protocols"].items():
        assert s["fg_ari"] == plain["protocols"][p]["fg_ari"] and s["mean_kept_slots"] == 5.0


@pytest.mark.e2e
def test_cli_merge_slots_flag(checkpoints, synthetic_coco, tmp_path, monkeypatch, capsys):
    args = ["eval", str(checkpoints[2]), "--root", str(synthetic_coco), "--num-vis", "0", "--workers", "0",
            "--no-progress", "--device", "cpu", "--protocol", "adaslot"]
    for bad, why in (("2.5", "<= 2, got 2.5"), ("-0.1", ">= 0, got -0.1")):  # (0, 2], or 0 for off
        code, err = run_cli([*args, "--out", str(tmp_path / "x"), "--merge-slots", bad], monkeypatch, capsys)
        assert code == 2 and err == f"adaslot: error: --merge-slots must be {why}", err
    code, _ = run_cli([*args, "--out", str(tmp_path / "ok"), "--merge-slots", "0.12"], monkeypatch, capsys)
    m = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert code == 0 and m["config"]["method"]["merge_slots"] == 0.12
    assert m["keep_mode"].startswith("deterministic") and m["method"]["overridden"] == ["merge_slots"]
    assert m["protocols"]["adaslot"]["count_confusion"]["slots"] == "kept"
