"""DDP under torchrun: 2 CPU ranks (gloo), online and from a feature store.

Online mode: the sample stream and the slot/Gumbel noise are functions of the global batch, so rank r's
rows of every global batch are exactly what one process computes on those rows; only float summation order
differs (DDP averages the two half-batch gradients). Cache mode: each rank streams its own chunks, so the
global batch of a step is rank 0's local batch followed by rank 1's; one process fed that concatenation
computes the same losses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, TINY_FLAGS, TINY_MODEL, losses

from adaslot.checkpoint import list_checkpoints, load_checkpoint
from adaslot.config import DataSpec, TrainConfig
from adaslot.distributed import DistInfo, all_reduce_mean, barrier, broadcast_object, init

pytestmark = pytest.mark.e2e  # training under torchrun

COMMON = ["--num-slots", "4", "--batch-size", "4", "--lr", "1e-3", "--lr-schedule", "constant", "--log-every",
          "1", "--ckpt-every", "2", "--workers", "0", "--device", "cpu", "--seed", "1", "--no-progress"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 cli.py ARGS` on CPU (gloo), one thread per rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "cli.py"), *args, *TINY_FLAGS, *COMMON]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       timeout=180, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_helpers_are_noops_in_one_process():
    info = init("cpu")
    assert info == DistInfo() and info.is_main and not info.enabled
    t = torch.tensor([3.0])
    barrier()
    assert all_reduce_mean(t).item() == 3.0 and broadcast_object({"a": 1}) == {"a": 1}


def test_torchrun_two_ranks_resume_and_match_one_process(tmp_path, synthetic_coco):
    from adaslot.train import run_train

    def cfg(out: Path, n: int) -> TrainConfig:
        return TrainConfig(out=str(out), data=DataSpec(root=str(synthetic_coco)), encoder="random-vit-tiny",
                           model_overrides=dict(TINY_MODEL), num_slots=4, batch_size=4, num_iters=n, lr=1e-3,
                           lr_schedule="constant", log_every=1, ckpt_every=2, workers=0, device="cpu", seed=1,
                           progress=False)

    ref, run = tmp_path / "ref", tmp_path / "ddp"
    run_train(cfg(ref, 4))  # one process, 4 steps
    run_train(cfg(run, 2))  # one process, 2 steps; 2 DDP ranks continue it to 4
    r = torchrun("train", "--out", str(run), "--root", str(synthetic_coco), "--encoder", "random-vit-tiny",
                 "--num-iters", "4")
    assert r.stdout.count("resuming") == 1  # rank 0 speaks; both ranks resumed
    got, want = losses(run), losses(ref)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert got[step] == pytest.approx(want[step], rel=1e-5)
    ckpt = load_checkpoint(run / "checkpoints" / "step-00000004.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 4
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000002.pt", "step-00000004.pt"]
    a, b = ckpt["model"], load_checkpoint(ref / "checkpoints" / "step-00000004.pt")["model"]
    # Parameters move by ~lr = 1e-3 per step. Summation order (two half-batch gradients averaged, 1 vs 2
    # threads) changes them by far less, except Adam's near-sign-flips on near-zero gradient entries (a few
    # of the positional embedding's): bound the worst case at 20% of one step, and count the outliers.
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diff.max() <= 2e-4 and (diff > 1e-5).float().mean() < 1e-2


def test_torchrun_two_ranks_from_a_store_equal_one_process_on_the_joined_batches(tmp_path, train_store):
    """2 ranks streaming their own chunks of one store: the logged losses equal a 1-process replay that feeds
    [rank 0's batch; rank 1's batch] (read with the ranks' own loaders) through the same step code."""
    from adaslot.config import RunSpec
    from adaslot.model import AdaSlot
    from adaslot.store.loader import FeatureLoader
    from adaslot.train import NoiseSampler, TrainForward, optimisation_step

    run = tmp_path / "ddp-cache"
    torchrun("train", "--out", str(run), "--from-cache", str(train_store), "--num-iters", "3")
    got = losses(run)
    assert sorted(got) == [1, 2, 3]
    assert load_checkpoint(run / "checkpoints" / "step-00000003.pt")["world_size"] == 2

    cfg = TrainConfig(out=str(run), from_cache=str(train_store), model_overrides=dict(TINY_MODEL),
                      num_slots=4, batch_size=4, lr=1e-3, lr_schedule="constant", seed=1)
    mcfg = RunSpec.resolve(cfg, 192, 196).model
    torch.manual_seed(cfg.seed)
    model = AdaSlot(mcfg)
    forward = TrainForward(model, cfg.sparsity_weight, "fp32")
    noise = NoiseSampler(cfg.seed, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loaders = [FeatureLoader(str(train_store), 2, seed=cfg.seed, rank=r, world_size=2) for r in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in (1, 2, 3):
            feats = torch.cat([next(ld)[0] for ld in loaders]).float()
            slot_noise, gumbel = noise.sample(4, mcfg, slice(0, 4))
            loss, *_ = optimisation_step(forward, model, optimizer, feats, slot_noise, gumbel, cfg.grad_clip)
            assert got[step] == pytest.approx(loss, rel=1e-5), step
    finally:
        torch.set_num_threads(threads)
        for ld in loaders:
            ld.close()
