"""A sweep worker: trains its groups of runs one after another, each group in lockstep on one input, then
scores every finished run (score.json in its run folder).

Lockstep: one loader (or online encoder) gives a batch, every unfinished run of the group takes one step on
it; a run is an ordinary train.Run, so it computes what `adaslot train` computes on the same batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaslot.config import RunSpec, TrainConfig
from adaslot.errors import AdaslotError

Failure = tuple[str, str]  # (run folder, one-line reason)


@dataclass
class RunInput:
    """What scoring needs of a finished run's input, read back from its RunSpec."""

    contract: dict[str, Any] | None
    encoder_name: str


def run_worker(groups: list[list[TrainConfig]], device: str, threads: int, scoring: dict[str, Any],
               parent_pid: int | None = None) -> list[Failure]:
    """Run `groups` (each a list of runs sharing one input) in turn; returns the runs that failed, with why.
    `parent_pid`: stop (exit) as soon as the sweep process that started this worker is gone."""
    torch.set_num_threads(threads)
    failures: list[Failure] = []
    for cfgs in groups:
        failures += train_group(cfgs, device, parent_pid)
        failed = {out for out, _ in failures}
        for cfg in cfgs:
            if cfg.out not in failed:
                try:
                    score_run(cfg.out, scoring, device)
                except AdaslotError as e:
                    failures.append((cfg.out, str(e)))
    return failures


def train_group(cfgs: list[TrainConfig], device: str, parent_pid: int | None = None) -> list[Failure]:
    """Train the runs `cfgs` (same input settings, same resume step) in lockstep on one input."""
    from adaslot.device import resolve_device
    from adaslot.distributed import DistInfo
    from adaslot.sweep.plan import needs
    from adaslot.train import Run, build_source

    cfgs = [c.replace(device=device) for c in cfgs if needs(c, {}) == "train"]
    if not cfgs:
        return []
    failures: list[Failure] = []
    try:
        dist = DistInfo(device=resolve_device(device))
        source = build_source(cfgs[0], dist, cfgs[0].batch_size)
    except AdaslotError as e:
        return [(c.out, str(e)) for c in cfgs]
    runs = []
    for cfg in cfgs:
        try:
            runs.append(Run(cfg, dist, source))
        except AdaslotError as e:
            failures.append((cfg.out, str(e)))
    if len({r.step for r in runs}) > 1:  # the planner groups by resume step; one loader has one position
        raise RuntimeError(f"runs of one group resume at different steps: "
                           f"{[(r.cfg.out, r.step) for r in runs]}")
    active = [r for r in runs if not r.done]
    try:
        while active:
            features = source.next_batch()  # [b, T, D], one read for every run of the group
            for run in list(active):
                try:
                    run.train_step(features)
                except AdaslotError as e:  # e.g. a NaN loss: this run stops, the others go on
                    failures.append((run.cfg.out, str(e)))
                    active.remove(run)
                    continue
                if run.done:
                    active.remove(run)
            if parent_pid is not None and os.getppid() != parent_pid:
                os._exit(1)  # the sweep was killed: stop now; its rerun resumes from the checkpoints
    finally:
        for run in runs:
            run.close()
        source.close()
    return failures


def score_run(run_dir: str | Path, scoring: dict[str, Any], device: str = "auto") -> dict[str, Any]:
    """Score the last checkpoint of a run folder on its val data with the code of `adaslot eval` (adaslot
    protocol, deterministic keep, the checkpoint's inference method; `scoring`: score_images, score_method
    overriding that method) and write run_dir/score.json: {step, checkpoint, score_images, score_method,
    method (the one that ran), val, eval}."""
    from adaslot.checkpoint import latest_checkpoint, load_model
    from adaslot.device import resolve_device
    from adaslot.evaluate.scoring import method_record
    from adaslot.files import write_json
    from adaslot.train.validate import Validator

    run_dir = Path(run_dir)
    spec = RunSpec.load(run_dir)
    cfg = spec.train
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise AdaslotError(f"{run_dir} has no checkpoint to score")
    if not cfg.val_source():
        raise AdaslotError(f"{run_dir}: its config names no val data (--val-from-cache or --val-root)")
    dev = resolve_device(device)
    score_images, score_method = scoring.get("score_images"), dict(scoring.get("score_method") or {})
    model, payload = load_model(ckpt, dev, score_method)
    run_input = RunInput(spec.feature_contract, spec.encoder)
    validator = Validator(cfg, run_input, dev, max_images=score_images or 0)
    scores = validator(model)
    score = {"step": int(payload["step"]), "checkpoint": ckpt.name, "score_images": score_images,
             "score_method": score_method, "method": method_record(model),
             "val": cfg.val_from_cache or cfg.val_root or cfg.data.root, "eval": scores}
    write_json(run_dir / "score.json", score)
    return score
