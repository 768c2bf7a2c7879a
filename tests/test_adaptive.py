"""The inference method as a property of the model (docs/adaptive.md): recorded by train, run by eval,
segment, the Python API and the sweep's scoring, overridden by one flag; and the training options that make
the count (docs/method.md#count-options), each checked to do what it says (and not when off)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, tiny_train
from PIL import Image

import adaslot
from adaslot.checkpoint import load_checkpoint, load_model, save_checkpoint
from adaslot.config import (
    DataSpec,
    DemoConfig,
    EvalConfig,
    ModelConfig,
    SegmentConfig,
    SweepConfig,
    TrainConfig,
    get_preset,
)
from adaslot.config.data import SyntheticConfig
from adaslot.config.demo import demo_data
from adaslot.config.model import MethodOverrides, overridable_method_fields
from adaslot.errors import AdaslotError
from adaslot.evaluate import run_eval
from adaslot.model import AdaSlot, GumbelSelector
from adaslot.schedules import ramp_weight
from adaslot.train import TrainForward, read_metrics, run_train

torch.set_num_threads(1)
CKPT = str(adaslot.DEMO_CHECKPOINT)


@pytest.fixture(scope="module")
def demo_val(tmp_path_factory) -> Path:
    """24 val images of the demo's data (another seed than the demo's), COCO layout."""
    from adaslot.data.make_synthetic import run_make_synthetic

    out = tmp_path_factory.mktemp("demo_val") / "data"
    cfg: SyntheticConfig = demo_data().replace(out=str(out), num_train=0, num_val=24, seed=5, progress=False)
    run_make_synthetic(cfg)
    return out


def _val_files(root: Path) -> list[tuple[int, Path]]:
    ann = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    return [(im["id"], root / "val2017" / im["file_name"]) for im in ann["images"]]


def _stage1_copy(tmp_path: Path) -> Path:
    """The shipped checkpoint as a stage-1 one (no selector): what a stage-1 run writes."""
    payload = load_checkpoint(CKPT)
    payload["stage"] = 1
    payload["model_config"] = {**payload["model_config"], "adaptive": False, "merge_slots": 0.0}
    payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith("selector.")}
    return save_checkpoint(tmp_path / "stage1.pt", payload)


# ---------------------------------------------------------------- one declaration


def test_every_method_setting_is_declared_once_and_aliased_elsewhere():
    model = {f.name: f.metadata for f in dataclasses.fields(ModelConfig)}
    keys = ("min", "max", "above", "choices")
    for cls in (MethodOverrides, TrainConfig, DemoConfig):
        for f in dataclasses.fields(cls):
            if f.name in overridable_method_fields():
                assert {k: f.metadata[k] for k in keys} == {k: model[f.name][k] for k in keys}, (cls, f.name)
    for cls in (EvalConfig, SegmentConfig, SweepConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & {"merge_slots", "merge_on", "selector"}, cls  # they come from MethodOverrides
    # off everywhere by default: no merging is 0, never None, in the model
    assert ModelConfig().merge_slots == 0 and get_preset("coco").model.merge_slots == 0


def test_count_options_are_off_in_the_reference_and_the_coco_preset():
    for cfg in (ModelConfig(), get_preset("coco").model):
        assert not (cfg.merge_in_training or cfg.reassign_kept or cfg.selector_context)
    t = TrainConfig(out="x")
    assert t.quadratic_weight == 0 and t.sparsity_ramp == 0 and t.quadratic_bias == 0.5
    with pytest.raises(AdaslotError, match="merge_in_training needs a merge threshold"):
        ModelConfig(merge_in_training=True).validate()


# ---------------------------------------------------------------- the shipped checkpoint carries its method


def test_shipped_checkpoint_records_the_demo_method():
    recorded = load_checkpoint(CKPT)["model_config"]
    assert recorded["merge_slots"] == DemoConfig().train.merge_slots == 0.12
    assert recorded["merge_on"] == "slots"
    assert adaslot.load(CKPT, device="cpu").method["merge_slots"] == 0.12


@pytest.mark.e2e  # the eval command and the Python API over 24 images
def test_readme_example_counts_equal_eval_on_demo_val_images(demo_val, tmp_path):
    """The README's three lines on the demo's val images: the same segments, per image and pixel for pixel,
    as `adaslot eval` of the same checkpoint (both run the method it recorded)."""
    res = run_eval(EvalConfig(checkpoint=CKPT, data=DataSpec(root=str(demo_val), split="val"),
                              out=str(tmp_path / "e"), protocol="adaslot", num_vis=0, save_masks=True,
                              workers=0, device="cpu", progress=False))
    model = adaslot.load(adaslot.DEMO_CHECKPOINT)
    files = _val_files(demo_val)
    results = [model.segment(str(path)) for _, path in files]
    counts = [r.num_segments for r in results]
    summary = res["protocols"]["adaslot"]
    assert np.mean(counts) == pytest.approx(summary["mean_kept_slots"], abs=1e-9)
    assert summary["kept_histogram"] == np.bincount(counts).tolist()
    assert min(counts) < max(counts) and max(counts) < get_preset("demo").num_slots_stage2  # merging happened
    for (image_id, _), r in zip(files, results, strict=True):
        eval_png = np.asarray(Image.open(tmp_path / "e" / "masks" / f"{image_id:012d}.png"))
        assert np.array_equal(eval_png, r.labels), image_id
        assert set(np.unique(r.labels)) <= set(np.flatnonzero(r.segments))
    assert res["method"]["merge_slots"] == 0.12 and res["method"]["overridden"] == []


@pytest.mark.e2e  # the eval and segment commands
@pytest.mark.parametrize("flags", [["--merge-slots", "0"], ["--merge-slots", "0.3", "--merge-on", "features"],
                                   ["--selector", "quality", "--quality-tau", "0.3"]])
def test_eval_and_segment_masks_are_pixel_equal_for_every_method(demo_val, tmp_path, monkeypatch, capsys,
                                                                  flags):
    files = _val_files(demo_val)[:6]
    img = tmp_path / "img"
    img.mkdir()
    for _, path in files:
        (img / path.name).write_bytes(path.read_bytes())
    ann = json.loads((demo_val / "annotations" / "instances_val2017.json").read_text())
    ids = {i for i, _ in files}
    ann["images"] = [im for im in ann["images"] if im["id"] in ids]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in ids]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    common = ["--workers", "0", "--device", "cpu", "--no-progress", *flags]
    code, err = run_cli(["eval", CKPT, "--images", str(img), "--annotations", str(tmp_path / "ann.json"),
                         "--save-masks", "--out", str(tmp_path / "e"), "--num-vis", "0", "--protocol",
                         "adaslot", *common], monkeypatch, capsys)
    assert code == 0, err
    code, err = run_cli(["segment", CKPT, str(img), "--out", str(tmp_path / "s"), *common], monkeypatch,
                        capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert metrics["method"]["merge_slots"] == manifest["run"]["method"]["merge_slots"]
    assert metrics["method"]["selector"] == manifest["run"]["method"]["selector"]
    for image_id, path in files:
        e = (tmp_path / "e" / "masks" / f"{image_id:012d}.png").read_bytes()
        assert e == (tmp_path / "s" / "masks" / f"{path.stem}.png").read_bytes(), image_id
    counts = [r["segments"] for r in manifest["images"]]
    assert np.mean(counts) == pytest.approx(metrics["protocols"]["adaslot"]["mean_kept_slots"], abs=1e-9)


def test_segmentation_exposes_groups_and_a_label_map_over_groups(demo_val):
    path = str(_val_files(demo_val)[0][1])
    everything = adaslot.load(CKPT, device="cpu", merge_slots=2.0).segment(path)  # every slot in one group
    kept = np.flatnonzero(everything.kept)
    assert (everything.groups[kept] == kept.min()).all() and everything.num_segments == 1
    assert set(np.unique(everything.labels)) == {kept.min()} and everything.method["merge_slots"] == 2.0
    plain = adaslot.load(CKPT, device="cpu", merge_slots=0).segment(path)
    assert np.array_equal(plain.groups, np.arange(len(plain.kept))) and plain.num_segments == plain.num_kept
    merged = adaslot.load(CKPT, device="cpu").segment(path, alpha=True)
    assert np.array_equal(merged.alpha.argmax(0), merged.labels)  # alpha: the segments' masks
    # a segment's label is its group: every pixel of a merged slot now carries its group's id
    assert set(np.unique(merged.labels)) <= set(np.unique(merged.groups[merged.kept]))


# ---------------------------------------------------------------- recorded, old, unknown, refused


def test_old_checkpoint_without_a_method_loads_as_no_merging(tmp_path):
    payload = load_checkpoint(CKPT)
    new = {f.name for f in dataclasses.fields(ModelConfig)} - {
        "feature_dim", "num_tokens", "slot_dim", "num_slots", "num_iterations", "input_mlp_hidden",
        "slot_mlp_hidden", "decoder_hidden", "adaptive", "selector", "selector_hidden", "quality_tau",
        "quality_rho", "quality_alpha", "quality_k_min", "eps", "slot_init_scale", "attention_temperature",
        "sparse_decoding", "split_first_layer"}
    assert new == {"merge_slots", "merge_on", "merge_in_training", "reassign_kept", "selector_context"}
    payload["model_config"] = {k: v for k, v in payload["model_config"].items() if k not in new}
    old = save_checkpoint(tmp_path / "old.pt", payload)
    model, _ = load_model(old)
    assert model.cfg.merge_slots == 0 and model.cfg.method["merge_slots"] == 0
    r = adaslot.load(old, device="cpu").segment(np.zeros((64, 64, 3), np.uint8))
    assert np.array_equal(r.groups, np.arange(len(r.kept)))


def test_unknown_recorded_method_and_bad_thresholds_are_one_line(demo_val, tmp_path, monkeypatch, capsys):
    img = str(_val_files(demo_val)[0][1])
    payload = load_checkpoint(CKPT)
    for key, value, want in (("merge_on", "prototypes", "inference method merge_on='prototypes'"),
                             ("selector", "metaslot", "inference method selector='metaslot'"),
                             ("merge_linkage", "ward", "model setting 'merge_linkage'='ward'")):
        bad = dict(payload, model_config={**payload["model_config"], key: value})
        path = save_checkpoint(tmp_path / f"{key}.pt", bad)
        code, err = run_cli(["segment", str(path), img, "--out", str(tmp_path / key), "--no-progress"],
                            monkeypatch, capsys)
        assert code == 2 and want in err and len(err.splitlines()) == 1, err
    for cmd in (["segment", CKPT, img, "--out", str(tmp_path / "x")], ["train", "--out", str(tmp_path / "t"),
                                                                       "--from-cache", "none"]):
        code, err = run_cli([*cmd, "--merge-slots", "2.5"], monkeypatch, capsys)
        assert code == 2 and err == "adaslot: error: --merge-slots must be <= 2, got 2.5", err
    with pytest.raises(AdaslotError, match="--merge-slots must be >= 0"):
        adaslot.load(CKPT, device="cpu", merge_slots=-1)
    with pytest.raises(AdaslotError, match="keyword 'merge'"):
        adaslot.load(CKPT, device="cpu", merge=0.1)


def test_merge_on_a_stage1_checkpoint_is_fine_keep_settings_are_refused(demo_val, tmp_path, monkeypatch,
                                                                          capsys):
    s1 = _stage1_copy(tmp_path)
    img = str(_val_files(demo_val)[0][1])
    r = adaslot.load(s1, device="cpu", merge_slots=2.0).segment(img)
    assert r.kept.all() and r.num_segments == 1
    with pytest.raises(AdaslotError, match="--quality-tau is a keep setting, but .* is a stage-1 model"):
        adaslot.load(s1, device="cpu", quality_tau=0.3)
    code, err = run_cli(["segment", str(s1), img, "--out", str(tmp_path / "s"), "--selector", "quality",
                         "--no-progress"], monkeypatch, capsys)
    assert code == 2 and "--selector is a keep setting" in err and len(err.splitlines()) == 1
    quality = dict(load_checkpoint(CKPT))
    quality["model_config"] = {**quality["model_config"], "selector": "quality"}
    quality["model"] = {k: v for k, v in quality["model"].items() if not k.startswith("selector.")}
    q = save_checkpoint(tmp_path / "quality.pt", quality)
    with pytest.raises(AdaslotError, match="--selector adaslot needs the Gumbel score network"):
        adaslot.load(q, device="cpu", selector="adaslot")


def test_train_records_merge_slots_and_eval_runs_it(train_store, tmp_path):
    res = run_train(tiny_train(tmp_path / "run", from_cache=str(train_store), num_iters=2, merge_slots=0.3))
    model, payload = load_model(res["checkpoint"])
    assert payload["model_config"]["merge_slots"] == 0.3 and model.cfg.method == {
        "merge_slots": 0.3, "merge_on": "slots", "merge_in_training": False}
    model.eval()
    out = model(torch.randn(2, model.cfg.num_tokens, model.cfg.feature_dim))
    assert out.groups is not None  # eval mode merges as recorded
    off, _ = load_model(res["checkpoint"], method={"merge_slots": 0})
    assert off(torch.randn(2, model.cfg.num_tokens, model.cfg.feature_dim)).groups is None


# ---------------------------------------------------------------- training options that make the count


def _tiny(**kw) -> ModelConfig:
    return ModelConfig(feature_dim=12, num_tokens=16, slot_dim=8, num_slots=4, input_mlp_hidden=16,
                       slot_mlp_hidden=16, decoder_hidden=(16,), selector_hidden=8, **kw).validate()


def test_merge_in_training_decodes_each_group_from_its_mean_slot():
    torch.manual_seed(0)
    feats = torch.randn(3, 16, 12)
    init = torch.randn(3, 4, 8)
    model = AdaSlot(_tiny(merge_slots=2.0, merge_in_training=True)).train()
    out = model(feats, slots_init=init)
    assert out.groups is not None and (out.groups == 0).all()  # threshold 2: one group per image
    want, _ = model.decoder(out.slots.mean(1, keepdim=True))  # the mean slot alone rebuilds the image
    assert torch.allclose(out.recon, want, atol=1e-4)
    out.recon.sum().backward()
    assert model.slot_attention.to_q.weight.grad.abs().sum() > 0
    model.cfg = dataclasses.replace(model.cfg, merge_in_training=False)  # off: training decodes every slot
    off = model(feats, slots_init=init)
    assert off.groups is None and not torch.allclose(off.recon, want, atol=1e-4)


def test_reassign_kept_gives_the_dropped_slots_tokens_to_the_survivors():
    torch.manual_seed(0)
    feats, init = torch.randn(2, 16, 12), torch.randn(2, 4, 8)
    noise = torch.zeros(2, 4, 2)
    noise[:, :2, 1] = 50  # keep slots 0, 1
    noise[:, 2:, 0] = 50  # drop slots 2, 3
    model = AdaSlot(_tiny(adaptive=True, reassign_kept=True)).train()
    out = model(feats, slots_init=init, gumbel_noise=noise)
    assert out.keep.tolist() == [[1, 1, 0, 0]] * 2
    assert (out.attn[:, 2:] == 0).all() and torch.allclose(out.attn[:, :2].sum(1), torch.ones(2, 16))
    model.cfg = dataclasses.replace(model.cfg, reassign_kept=False)
    off = model(feats, slots_init=init, gumbel_noise=noise)
    assert (off.attn[:, 2:] > 0).all()
    assert torch.equal(out.slots[:, 2:], off.slots[:, 2:])  # dropped slots keep their vectors
    assert not torch.allclose(out.slots[:, :2], off.slots[:, :2])  # survivors took another iteration


def test_quadratic_term_and_sparsity_ramp():
    assert [ramp_weight(s, 0.4, 100) for s in (0, 25, 50, 100, 150)] == pytest.approx([0, 0.1, 0.2, 0.4, 0.4])
    assert ramp_weight(0, 0.4, 0) == 0.4 and ramp_weight(-3, 0.4, 10) == 0.0
    torch.manual_seed(0)
    model = AdaSlot(_tiny(adaptive=True))
    feats, slot_noise = torch.randn(2, 16, 12), torch.randn(2, 4, 8)
    gumbel = torch.zeros(2, 4, 2)
    gumbel[:, 0, 1] = 50  # one slot of four kept: kept fraction 0.25
    gumbel[:, 1:, 0] = 50
    loss, mse, kept = TrainForward(model, 0.0, "fp32", quadratic_weight=2.0, quadratic_bias=0.5)(
        feats, slot_noise, gumbel)
    assert kept == 0.25 and (loss - mse).item() == pytest.approx(2.0 * (0.25 - 0.5) ** 2)
    half, mse, _ = TrainForward(model, 0.1, "fp32", quadratic_weight=2.0)(feats, slot_noise, gumbel,
                                                                            scale=0.5)
    assert (half - mse).item() == pytest.approx(0.5 * (0.1 * 0.25 + 2.0 * 0.0625))
    plain, mse, _ = TrainForward(model, 0.0, "fp32")(feats, slot_noise, gumbel)
    assert plain.item() == mse.item()  # quadratic term off: the MSE alone


def test_sparsity_ramp_in_a_training_run(train_store, tmp_path):
    s1 = run_train(tiny_train(tmp_path / "s1", from_cache=str(train_store), num_iters=2))
    run_train(tiny_train(tmp_path / "s2", from_cache=str(train_store), num_iters=4, stage=2,
                     warmstart=s1["checkpoint"], sparsity_weight=0.4, sparsity_ramp=4))
    logged = [r["sparsity_weight"] for r in read_metrics(tmp_path / "s2") if "sparsity_weight" in r]
    assert logged == pytest.approx([0.0, 0.1, 0.2, 0.3])  # the weight of each step's update


def test_selector_context_lets_a_slot_score_see_the_other_slots():
    torch.manual_seed(0)
    slots = torch.randn(2, 4, 8)
    other = slots.clone()
    other[:, 1:] += 1.0  # change every slot but slot 0
    with_context = GumbelSelector(8, 16, context=True)
    assert with_context.net[0].normalized_shape == (16,)
    assert not torch.allclose(with_context.scores(slots)[:, 0], with_context.scores(other)[:, 0])
    alone = GumbelSelector(8, 16)
    assert torch.equal(alone.scores(slots)[:, 0], alone.scores(other)[:, 0])
    model = AdaSlot(_tiny(adaptive=True, selector_context=True))
    assert model.selector.context


def test_merge_slots_0_turns_merging_in_training_off_too():
    cfg = _tiny(merge_slots=0.3, merge_in_training=True)
    off = cfg.with_method({"merge_slots": 0})
    assert off.merge_slots == 0 and not off.merge_in_training
    assert cfg.with_method({"merge_slots": 0.5}).merge_in_training  # another threshold keeps the decoding
