"""`adaslot demo --quick` end to end: real make-synthetic, cache (zarr), train stages 1 + 2, eval, results."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from adaslot.cli import app
from adaslot.config import DemoConfig, demo_config, get_preset, model_config_for
from adaslot.demo import RESULT_KEYS
from adaslot.encoders import build_encoder

pytestmark = pytest.mark.e2e  # whole demo runs


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--threads", "1", "--shipped", ""])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    for key in (*RESULT_KEYS, "shipped", "patch_ceiling_fg_ari"):
        assert key in results
    assert results["shipped"] is None  # skipped on request
    # Known value: one label everywhere scores FG-ARI 1 on a one-object image (one cluster each side) and 0
    # on every other image, so its mean is the share of one-object images
    single = results["per_object_count"].get("1", {"num_images": 0})["num_images"] / 16
    assert results["baseline"]["all"]["1x1"] == pytest.approx(single, abs=1e-12)
    assert results["baseline_fg_ari"] >= results["baseline"]["all"]["1x1"]
    assert results["baseline_fg_ari"] < results["patch_ceiling_fg_ari"] <= 1.0
    k_max = get_preset("demo").num_slots_stage2
    assert 0 <= results["mean_kept_slots"] <= k_max
    assert 1 <= results["mean_objects"] <= 6  # the demo draws 1-6 objects per image
    assert results["method"] == ("AdaSlot selector, sparsity weight 0.1 + slot merging (cosine distance < "
                                 "0.12)")
    assert results["inference_method"]["merge_slots"] == 0.12  # recorded by stage 2, run by eval
    assert "merged below cosine distance 0.12" in results["keep_mode"]
    confusion = results["count_confusion"]
    assert sum(map(sum, confusion["counts"])) == 16 and 0 <= results["split_rate"] <= 1
    assert set(results["per_object_count"]) <= {str(n) for n in range(1, 7)}
    assert results["cache_vs_online_step_ratio"] > 0
    assert (out / "eval" / "vis").is_dir() and any((out / "eval" / "vis").iterdir())
    assert "pictures" in res.output
    # the files `--long` ships, written from this run: slim checkpoint, config (command, method), pictures
    from adaslot.demo import export_assets, install_assets

    dest = tmp_path / "assets"
    evaluated = {"out": str(out / "eval"), "count_confusion_png": str(out / "eval" / "count_confusion.png")}
    export_assets(out / "stage2" / "checkpoints" / "last.pt", evaluated, results, dest)
    # `--long` then copies them into the package's folder (here a stand-in for it), file for file
    installed = install_assets(dest, tmp_path / "package-assets")
    assert sorted(p.name for p in Path(installed["dir"]).iterdir()) == sorted(p.name for p in dest.iterdir())
    assert Path(installed["checkpoint"]).read_bytes() == (dest / "demo-stage2.pt").read_bytes()
    shipped = json.loads((dest / "demo-config.json").read_text())
    command = shlex.split(shipped["command"])
    assert shipped["method"] == results["method"]
    assert command[:2] == ["adaslot", "demo"] and "--long" in command
    assert "optimizer" not in torch.load(dest / "demo-stage2.pt", weights_only=False)
    for png in ("demo-result.png", "demo-count-confusion.png"):
        assert Image.open(dest / png).size[0] > 100, png
    # a run is a function of its seed: the same command into another folder gives the same numbers
    again = tmp_path / "again"
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(again), "--threads", "1", "--shipped", ""])
    assert res.exit_code == 0, res.output
    second = json.loads((again / "results.json").read_text())
    for key in ("fg_ari", "mbo_i", "mean_kept_slots", "kept_vs_objects_r", "split_rate", "count_confusion",
                "stage1_final_loss", "stage2_final_loss"):
        assert second[key] == results[key], key


def test_demo_warns_and_finishes_when_the_shipped_checkpoint_has_other_features(tmp_path):
    """A shipped checkpoint made with another demo-encoder version is skipped with a warning; the run's own
    results are still written."""
    import torch

    from adaslot import DEMO_CHECKPOINT
    from adaslot.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(DEMO_CHECKPOINT)
    payload["feature_contract"] = {**payload["feature_contract"], "tap_point": "an older demo encoder"}
    stale = tmp_path / "stale.pt"
    save_checkpoint(stale, payload)
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--shipped", str(stale)])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # rich wraps long lines
    assert "shipped checkpoint skipped" in said and "an older demo encoder" in said
    assert json.loads((out / "results.json").read_text())["shipped"] is None


def test_final_loss_of_a_rerun_comes_from_the_log(tmp_path):
    """A rerun that finds a stage complete takes no step (train returns NaN); the demo then reports the
    last logged training loss, not null."""
    from adaslot.demo import _final_loss

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "val/fg_ari": 0.3}\n'
                                            '{"step": 2, "loss": 0.25}\n')
    assert _final_loss(0.125, tmp_path) == 0.125
    assert _final_loss(float("nan"), tmp_path) == 0.25


def test_demo_encoder_features_group_by_object():
    """The demo encoder is frozen and deterministic; its tokens are near-parallel inside a colour region and
    near-orthogonal across colours (what the demo relies on)."""
    import torch

    enc = build_encoder("demo-colour-pos")
    assert enc.embed_dim == 128 and enc.num_tokens(64) == 64
    img = torch.zeros(1, 3, 64, 64)
    img[:, 0, :, :32] = 0.9  # left half red
    img[:, 2, :, 32:] = 0.9  # right half blue
    f = torch.nn.functional.normalize(enc(img)[0], dim=-1)  # [64, 128], row-major 8 x 8
    sim = f @ f.T
    left = [r * 8 + c for r in range(8) for c in range(4)]
    right = [r * 8 + c for r in range(8) for c in range(4, 8)]
    assert sim[left][:, left].mean() > 0.6
    assert sim[left][:, right].mean() < 0.3
    again = build_encoder("demo-colour-pos")
    assert again.contract(64)["weights_sha256"] == enc.contract(64)["weights_sha256"]
    assert not any(p.requires_grad for p in enc.parameters())


def test_demo_encoder_boundary_patch_is_the_mixture_of_its_colours():
    """A patch half red, half blue gets the mean of the red and the blue patch's colour features (per-pixel
    features averaged), which is what alpha blending of two slots rebuilds; its position part is unchanged."""
    import torch

    enc = build_encoder("demo-colour-pos")
    img = torch.zeros(1, 3, 64, 64)
    img[:, 0, :, :12] = 0.9  # red up to column 12: patch column 1 (pixels 8-15) is half red, half blue
    img[:, 2, :, 12:] = 0.9
    f = enc(img)[0].view(8, 8, 128)
    red, mixed, blue = f[0, 0, :96], f[0, 1, :96], f[0, 2, :96]
    torch.testing.assert_close(mixed, (red + blue) / 2, atol=1e-5, rtol=0)
    assert not torch.allclose(red, blue, atol=0.1)
    pos = enc(torch.zeros(1, 3, 64, 64))[0].view(8, 8, 128)[..., 96:]
    torch.testing.assert_close(f[..., 96:], pos)


def test_demo_profiles_and_preset():
    assert demo_config("long").stage1_steps > demo_config("normal").stage1_steps
    assert demo_config("normal", seed=3).seed == 3
    assert model_config_for("demo", 2).adaptive
    assert model_config_for("coco", 1).attention_temperature == 1.0  # reference value
    assert math.isclose(model_config_for("coco", 1).slot_init_scale, 1.0)


def test_shipped_checkpoint_matches_demo_encoder_and_preset():
    """The committed checkpoint loads, is a stage-2 demo model, and was trained on exactly the features the
    current demo encoder gives (a change to the encoder must come with a new `adaslot demo --long`)."""
    from adaslot import DEMO_CHECKPOINT
    from adaslot.checkpoint import load_model

    model, payload = load_model(DEMO_CHECKPOINT)
    assert payload["stage"] == 2 and payload["encoder"] == "demo-colour-pos"
    # the demo's inference method is recorded in it (docs/adaptive.md)
    assert model.cfg == model_config_for("demo", 2, merge_slots=DemoConfig().train.merge_slots)
    contract = build_encoder("demo-colour-pos").contract(64)
    for key in ("weights_sha256", "tap_point", "input_size", "num_tokens", "feature_dim"):
        assert payload["feature_contract"][key] == contract[key], key
    assert DEMO_CHECKPOINT.stat().st_size < 5_000_000


def test_movi_demo_quick_end_to_end_twice(tmp_path):
    """`adaslot demo --dataset movi --quick`: MOVi-like videos in both layouts, cache from the TFDS records,
    stages 1 + 2, eval of the webdataset val shards with the movi protocol; the same numbers twice."""
    cfg = demo_config("quick", dataset="movi")
    assert cfg.data.format == "movi" and cfg.data.movi_background == "plain"
    assert demo_config("normal", dataset="movi").data.frames == 24  # the official video length
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        res = CliRunner().invoke(app, ["demo", "--dataset", "movi", "--quick", "--out", str(out), "--threads",
                                       "1"])
        assert res.exit_code == 0, res.output
        assert "movi protocol" in " ".join(res.output.split())
        runs.append(json.loads((out / "results.json").read_text()))
    results = runs[0]
    for key in (*RESULT_KEYS, "shipped", "patch_ceiling_fg_ari"):
        assert key in results, key
    assert results["dataset"] == "movi" and results["protocol"] == "movi"
    assert results["shipped"] is None  # the shipped checkpoint is the shape demo's: not compared
    metrics = json.loads((tmp_path / "a" / "eval" / "metrics.json").read_text())
    assert set(metrics["protocols"]) == {"movi"}
    # every frame of the one 10-frame val video is an image
    assert sum(map(sum, results["count_confusion"]["counts"])) == cfg.data.frames * cfg.data.num_val
    assert 0 <= results["fg_ari"] <= 1 and 0 <= results["mbo_i"] <= 1
    assert results["baseline_fg_ari"] < results["patch_ceiling_fg_ari"] <= 1.0
    assert 0 < results["mean_objects"] <= cfg.data.max_objects
    assert any((tmp_path / "a" / "eval" / "vis").iterdir())
    import zarr

    # the store: one view of the 9 official training frames of each video, 64 tokens (64 px, 8-px patches)
    feats = zarr.open_group(tmp_path / "a" / "features" / "train.zarr", mode="r")["features"]
    assert feats.shape[:3] == (9 * cfg.data.num_train, 1, 64)
    for key in ("fg_ari", "mbo_i", "baseline_fg_ari", "patch_ceiling_fg_ari", "mean_objects",
                "mean_kept_slots", "split_rate", "merge_rate", "count_confusion", "stage1_final_loss",
                "stage2_final_loss"):
        assert runs[1][key] == results[key], key
