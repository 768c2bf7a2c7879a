"""torchrun caching: 2 CPU ranks (gloo) encode disjoint whole shards of one store; the result is
byte-identical to a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import same_contents, shard_files

from adaslot.config import CacheConfig, DataSpec
from adaslot.store import open_store
from adaslot.store.writer import run_cache_features

pytestmark = pytest.mark.e2e  # whole cache-features runs under torchrun


def test_torchrun_two_ranks_equals_single_process(synthetic_coco, tmp_path):
    common = dict(data=DataSpec(root=str(synthetic_coco)), encoder="random-vit-tiny", image_size=64,
                  batch_size=2, workers=0, device="cpu", chunk_samples=1, shard_samples=2, progress=False)
    single = tmp_path / "single.zarr"
    run_cache_features(CacheConfig(out=str(single), **common))

    multi = tmp_path / "multi.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "adaslot.cli", "cache-features", "--out", str(multi), "--dataset", "coco",
           "--root", str(synthetic_coco), "--split", "train", "--encoder", "random-vit-tiny",
           "--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu",
           "--chunk-size", "1", "--shard-size", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    st = open_store(multi)
    assert st.complete and st.shards_done() == (6, 6)
    assert shard_files(multi) == shard_files(single)
    assert same_contents(str(multi), str(single))
