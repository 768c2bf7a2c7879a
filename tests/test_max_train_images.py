"""A setting added as one field: `--max-train-images N` (TrainConfig.max_train_images, declared `input`, not
resumable). Besides where it acts (the store loader and the online sample stream), nothing was edited for
it: its flag, `to_flags`, the resume check and the sweep's batch sharing come from the declaration."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import typer
from helpers import tiny_train
from typer.testing import CliRunner

from adaslot.cli import _build, app
from adaslot.config import DataSpec, TrainConfig
from adaslot.config.base import to_flags
from adaslot.distributed import DistInfo
from adaslot.errors import AdaslotError
from adaslot.store import open_store
from adaslot.store.loader import FeatureLoader
from adaslot.sweep.plan import share_groups
from adaslot.train import build_source, run_train


def test_the_store_loader_reads_only_the_first_n_valid_rows(train_store):
    first = np.flatnonzero(open_store(str(train_store)).valid)[:5]
    for in_memory in (False, True):
        loader = FeatureLoader(str(train_store), 2, seed=3, in_memory=in_memory, max_samples=5)
        for epoch in (0, 1):
            rows, _views, _order = loader.epoch_plan(epoch)
            assert sorted(rows.tolist()) == first.tolist(), (in_memory, epoch)
        _features, got = next(loader)
        assert set(got.tolist()) <= set(first.tolist())
        loader.close()


def test_the_online_stream_draws_only_the_first_n_images(tmp_path, synthetic_coco):
    cfg = tiny_train(tmp_path / "run", data=DataSpec(root=str(synthetic_coco)), encoder="random-vit-tiny",
                     max_train_images=5)
    source = build_source(cfg, DistInfo(), cfg.batch_size)
    try:
        drawn = [i for batch in islice(iter(source.stream), 6) for i, _flip in batch]
        assert set(drawn) == set(range(5)) and len(source.dataset) > 5
    finally:
        source.close()


def test_it_is_a_flag_with_its_help_and_to_flags_round_trips_it():
    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output
    assert "--max-train-images" in out and "train on the first N images" in out
    cfg = TrainConfig(out="r", from_cache="s", max_train_images=5)
    flags = to_flags(cfg)
    assert flags[flags.index("--max-train-images") + 1] == "5"
    train = typer.main.get_command(app).commands["train"]  # the click command typer builds
    assert _build(TrainConfig, train.make_context("train", list(flags)).params) == cfg


def test_its_range_is_checked_like_every_setting():
    with pytest.raises(AdaslotError, match=r"^--max-train-images must be >= 1, got 0$"):
        TrainConfig(out="r", from_cache="s", max_train_images=0).validate()


def test_sweep_variants_that_differ_in_it_read_separate_batches(tmp_path):
    base = tiny_train(tmp_path / "a", from_cache="store.zarr")
    assert len(share_groups([base, base.replace(out=str(tmp_path / "b"), lr=1e-2)])) == 1
    assert len(share_groups([base, base.replace(out=str(tmp_path / "b"), max_train_images=4)])) == 2


def test_a_run_trains_on_the_subset_and_its_rerun_refuses_another(tmp_path, train_store):
    cfg = tiny_train(tmp_path / "run", from_cache=str(train_store), num_iters=2, max_train_images=4)
    assert run_train(cfg)["step"] == 2
    with pytest.raises(AdaslotError, match=r"--max-train-images 4 -> 8"):
        run_train(cfg.replace(num_iters=4, max_train_images=8))
    assert run_train(cfg.replace(num_iters=3))["step"] == 3  # same subset: it resumes
