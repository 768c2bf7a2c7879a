"""A run is resolved once (adaslot/config/run.py): the RunSpec train resolves is the one its run folder and
checkpoints hold, the one resume, sweep results and sweep planning read, and no other module resolves a
model config; a run folder written before RunSpec existed still loads and resumes exactly."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from helpers import REPO, TINY_MODEL, losses, tiny_train, torch_threads

from adaslot.checkpoint import load_checkpoint
from adaslot.config import DemoConfig, RunSpec, TrainConfig, demo_config, from_flags
from adaslot.config.base import to_flags
from adaslot.distributed import DistInfo
from adaslot.errors import AdaslotError
from adaslot.sweep.results import read_runs
from adaslot.train import Run, build_source, run_train

# A run folder written by `adaslot train` at commit ebb2958 (before RunSpec; tests/data/README.md)
OLD_RUN = REPO / "tests" / "data" / "run-main-ebb2958"
OLD_STORE = "tests/data/v1-synthetic-train.zarr"  # as the old run's config.json names it (from REPO)


def test_the_run_folder_and_checkpoint_hold_the_spec_train_resolved(tmp_path, train_store):
    cfg = tiny_train(tmp_path / "sweep" / "runs" / "a", from_cache=str(train_store), num_iters=2)
    source = build_source(cfg, DistInfo(), cfg.batch_size)
    try:
        run = Run(cfg, DistInfo(), source)
        while not run.done:
            run.train_step(source.next_batch())
        run.close()
    finally:
        source.close()
    resolved = run.spec
    assert resolved.model.num_slots == 4 and resolved.model.slot_dim == TINY_MODEL["slot_dim"]
    assert (resolved.model.feature_dim, resolved.model.num_tokens) == (192, 196)  # the store's D and T
    assert resolved.encoder == "random-vit-tiny" and resolved.feature_contract["num_tokens"] == 196
    assert RunSpec.load(cfg.out) == resolved
    assert RunSpec.from_payload(load_checkpoint(Path(cfg.out) / "checkpoints" / "last.pt")) == resolved
    # the sweep's results read the same spec (flat: train settings bare, model settings as model.X)
    [record] = read_runs(tmp_path / "sweep")
    assert record.settings == resolved.flat() and record.num_iters == 2
    assert record.settings["model.num_slots"] == 4 and "model_overrides" not in record.settings


def test_only_run_spec_resolves_a_model_config_and_reads_config_json():
    """No second resolution: model_config_for is called in config/run.py only (convert.py matches an
    official checkpoint to a preset: no run), and only config/run.py names the run folder's config.json."""
    calls, readers = set(), set()
    for path in sorted((REPO / "adaslot").rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(REPO / "adaslot"))
        if re.search(r"(?<!def )\bmodel_config_for\(", text):
            calls.add(name)
        if re.search(r"[\"']config\.json[\"']", text):
            readers.add(name)
    assert calls == {"config/run.py", "convert.py"}
    assert readers == {"config/run.py"}
    sources = "".join(p.read_text() for p in (REPO / "adaslot").rglob("*.py"))
    assert not re.search(r"\bflat_settings\b", sources)


def _old_run_config(out: Path, **kw) -> TrainConfig:
    """The settings of OLD_RUN's command (tests/data/README.md), into `out`."""
    base = dict(out=str(out), from_cache=OLD_STORE, num_iters=2, ckpt_every=2, batch_size=4,
                lr_schedule="constant", lr=1e-3, num_slots=3, device="cpu", workers=0, threads=1, log_every=1,
                keep_last=1, progress=False,
                model_overrides={"slot_dim": 8, "input_mlp_hidden": 8, "slot_mlp_hidden": 8,
                                 "decoder_hidden": (8, 8), "selector_hidden": 8})
    base.update(kw)
    return TrainConfig(**base)


def test_a_run_folder_of_the_old_format_loads_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the old run names its store relative to the repository
    saved = RunSpec.load(OLD_RUN)
    assert saved.train == _old_run_config(Path("/tmp/spec/run-main"))  # where it was written
    assert (saved.model.feature_dim, saved.model.num_tokens, saved.model.num_slots) == (192, 16, 3)
    assert saved == RunSpec.from_payload(load_checkpoint(OLD_RUN / "checkpoints" / "last.pt"))

    old = tmp_path / "old"
    shutil.copytree(OLD_RUN, old, symlinks=True)
    with torch_threads(1):
        resumed = run_train(_old_run_config(old, num_iters=4))
        assert f"resuming {old} from step 2" in capsys.readouterr().out
        fresh = run_train(_old_run_config(tmp_path / "fresh", num_iters=4))
    assert resumed["step"] == fresh["step"] == 4
    got, want = losses(old), losses(tmp_path / "fresh")
    assert sorted(got) == [1, 2, 3, 4]
    assert got == want  # the old run's steps 1-2 and its resumed steps 3-4, bit for bit
    new = RunSpec.load(old)
    assert new.model == saved.model and new.train.num_iters == 4


def test_resume_refuses_another_model_setting_by_its_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    old = tmp_path / "old"
    shutil.copytree(OLD_RUN, old, symlinks=True)
    changed = _old_run_config(old, num_iters=4)
    changed = changed.replace(model_overrides={**changed.model_overrides, "slot_dim": 16})
    with pytest.raises(AdaslotError, match=r"--model slot_dim 8 -> 16"):
        run_train(changed)


def test_the_demo_nests_its_train_config_and_its_flags_set_it():
    cfg = from_flags(DemoConfig, {"selector": "quality", "sparsity_weight": 0.3, "merge_slots": 0.0})
    assert (cfg.train.selector, cfg.train.sparsity_weight, cfg.train.merge_slots) == ("quality", 0.3, 0.0)
    assert to_flags(cfg) == ["--selector", "quality", "--merge-slots", "0.0", "--sparsity-weight", "0.3"]
    assert from_flags(DemoConfig, {}) == DemoConfig()
    quick = demo_config("quick")
    assert quick.train.batch_size == 8 and demo_config("long").train.ckpt_every == 2000
    s1, s2 = (quick.stage_config(s, Path("o"), Path("f.zarr"), None) for s in (1, 2))
    assert (s1.selector, s1.merge_slots, s2.selector, s2.merge_slots) == (None, None, "adaslot", 0.12)
    assert s1.lr == s2.lr == quick.train.lr and (s1.seed, s2.seed) == (quick.seed + 1, quick.seed + 2)
    RunSpec.resolve(s1.validate(), 128, 64)
    with pytest.raises(AdaslotError, match="--selector must be one of"):  # checked before anything runs
        from_flags(DemoConfig, {"selector": "greedy"}).validate()
    assert RunSpec.resolve(s2.validate(), 128, 64).model.merge_slots == 0.12


def test_the_demo_nests_the_cache_and_eval_configs_it_runs():
    shapes, movi = demo_config("quick"), demo_config("quick", dataset="movi")
    assert (shapes.cache.views, movi.cache.views) == (2, 1)  # MOVi frames are never flipped
    assert (shapes.eval.protocols, movi.eval.protocols) == (("adaslot", "fullres"), ("movi",))
    assert "cache" not in to_flags(shapes) and "--num-vis" not in to_flags(shapes)  # not flags of the demo
    shapes.validate()  # the settings the demo fills in per run (PER_RUN) are checked when it runs them
