"""A fixed-seed run computes exactly what it computed before: the per-step metrics of a short stage-1 run and
of a stage-2 run warm-started from it equal, bit for bit, those recorded in tests/data/fixed-seed-losses.json.

The file was recorded from the code before the architecture cleanup (`ADASLOT_RECORD=1 pytest
tests/test_fixed_seed.py` rewrites it); a refactoring that changes any sum, draw or order fails here.
Sums are compared at one torch thread, on the CPU that recorded them (another instruction set may round
differently).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import tiny_train, torch_threads

from adaslot.train import read_metrics, run_train

FIXTURE = Path(__file__).parent / "data" / "fixed-seed-losses.json"
KEYS = ("loss", "mse", "lr", "grad_norm", "sparsity", "kept_slots")  # timing keys are measured, never equal


def _steps(run: Path) -> list[dict[str, float]]:
    return [{"step": r["step"], **{k: r[k] for k in KEYS if k in r}}
            for r in read_metrics(run) if "loss" in r]


def _run(tmp_path: Path, store: Path) -> dict[str, list[dict[str, float]]]:
    common = dict(from_cache=str(store), lr_schedule="adaslot", warmup_steps=2, lr_half_life=3, seed=5)
    with torch_threads(1):
        s1 = run_train(tiny_train(tmp_path / "s1", num_iters=6, ckpt_every=6, **common))
        run_train(tiny_train(tmp_path / "s2", stage=2, num_iters=4, num_slots=6, ckpt_every=4,
                         warmstart=s1["checkpoint"], **common))
    return {"stage1": _steps(tmp_path / "s1"), "stage2": _steps(tmp_path / "s2")}


def test_fixed_seed_run_matches_the_recorded_losses(tmp_path, train_store):
    got = _run(tmp_path, train_store)
    if os.environ.get("ADASLOT_RECORD"):
        FIXTURE.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"recorded {FIXTURE}")
    want = json.loads(FIXTURE.read_text())
    assert [r["step"] for r in got["stage1"]] == list(range(1, 7))
    assert [r["step"] for r in got["stage2"]] == list(range(1, 5))
    assert got == want  # floats survive JSON exactly (repr round trip)
