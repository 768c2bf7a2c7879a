"""`adaslot sweep`: plan the variants, train and score what is missing (in this process or in `--jobs`
worker processes), then write the results (sweep.csv, summary.md, curves.png, effects.png) and print them.

Resumable and idempotent: a variant whose run folder is trained and scored is skipped, an unfinished one
resumes from its checkpoints (train.Run), so a killed sweep rerun with the same command ends with the same
table; new grid values add variants beside the old ones.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from adaslot.config import SweepConfig
from adaslot.device import torch_threads
from adaslot.errors import AdaslotError
from adaslot.files import write_json
from adaslot.sweep.plan import assign, is_scored, needs, resolve_warmstart, share_groups, train_command
from adaslot.sweep.results import (
    TRAIN_METRICS,
    find_axes,
    print_summary,
    read_runs,
    summarise,
    write_csv,
    write_summary,
)
from adaslot.sweep.worker import Failure, run_worker, score_run


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or resume, or extend) the sweep in cfg.out; with cfg.collect only score and tabulate; with
    cfg.print_commands only print the variants' `adaslot train` commands. Returns the results summary."""
    from adaslot.metrics import RENAMED_KEYS

    cfg = cfg.validate()
    cfg = cfg.replace(rank_by=RENAMED_KEYS.get(cfg.rank_by, cfg.rank_by))  # --rank-by corloc (old name)
    check_rank_by(cfg.rank_by, None if cfg.collect else cfg.base.stage)
    if cfg.collect:
        return collect(cfg)
    variants = cfg.variants()
    if cfg.stage1_sweep:
        variants = resolve_warmstart(variants, cfg.stage1_sweep)
    if cfg.print_commands:
        for v in variants:
            print(train_command(v.cfg))
        return {"commands": len(variants)}

    out = Path(cfg.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", cfg.to_dict())  # the latest command's settings, for the record
    todo = {v.cfg.out: needs(v.cfg, cfg.scoring()) for v in variants}
    train = [v.cfg for v in variants if todo[v.cfg.out] == "train"]
    score_only = [[v.cfg] for v in variants if todo[v.cfg.out] == "score"]
    workers = assign(share_groups(train) + score_only, cfg.jobs)
    skipped = sum(need == "nothing" for need in todo.values())
    if skipped:
        print(f"{skipped} of {len(variants)} variants are already trained and scored (skipped)")
    devices = cfg.device_list()
    failures: list[Failure] = []
    with _Progress(variants, cfg.progress):
        if len(workers) == 1:  # in this process
            with torch_threads(cfg.threads):
                failures = run_worker(workers[0], devices[0], cfg.threads, cfg.scoring())
        elif workers:
            spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked loader threads
            with ProcessPoolExecutor(len(workers), mp_context=spawn) as pool:
                futures = [pool.submit(run_worker, groups, devices[i % len(devices)], cfg.threads,
                                       cfg.scoring(), os.getpid()) for i, groups in enumerate(workers)]
                failures = [f for fut in futures for f in fut.result()]
    result = write_results(out, cfg.rank_by)
    if failures:
        raise AdaslotError(f"{len(failures)} of {len(variants)} variants failed (the rest is in {out}): "
                           + "; ".join(f"{Path(d).name}: {why}" for d, why in failures[:3]))
    return result


def collect(cfg: SweepConfig) -> dict[str, Any]:
    """Score the trained but unscored runs of cfg.collect/runs/ (in this process), then write the results."""
    out = Path(cfg.collect or "")
    runs = read_runs(out)
    if not runs:
        raise AdaslotError(f"--collect {out}: no run folders (with config.json) in {out}/runs/")
    with torch_threads(cfg.threads):
        for r in runs:
            if r.trained and not is_scored(r.dir, r.checkpoint_step, cfg.scoring()):
                if cfg.progress:
                    print(f"scoring {r.name}")
                score_run(r.dir, cfg.scoring(), cfg.device_list()[0])
    return write_results(out, cfg.rank_by)


def write_results(out: Path, rank_by: str) -> dict[str, Any]:
    """sweep.csv, summary.md, curves.png, effects.png from the run folders in out/runs; the table printed."""
    from adaslot.sweep.plots import plot_curves, plot_effects

    runs = read_runs(out)
    manifest = out / "sweep.json"  # the grid order of the latest sweep command, if one ran here
    axes = find_axes(runs, list(json.loads(manifest.read_text())["grid"]) if manifest.is_file() else None)
    groups = summarise(runs, axes, rank_by)
    files = {"csv": write_csv(runs, axes, out / "sweep.csv"),
             "summary": write_summary(runs, groups, axes, rank_by, out / "summary.md"),
             "curves": plot_curves(runs, axes, rank_by, out / "curves.png"),
             "effects": plot_effects(runs, axes, rank_by, out / "effects.png")}
    print_summary(groups, rank_by, f"adaslot sweep {out}: ranked by {rank_by}")
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return {"runs": len(runs), "axes": axes, "best": groups[0].label if groups else None,
            **{k: str(v) for k, v in files.items()}}


STAGE2_METRICS = ("mean_kept_slots", "kept_vs_objects_r")  # only adaptive (stage-2) models keep or drop


def check_rank_by(rank_by: str, stage: int | None = None) -> None:
    """--rank-by must name a metric a sweep reports: a training metric or a scalar of the eval summary (one
    a stage-1 model has, for a stage-1 sweep)."""
    known = known_metrics()
    if rank_by not in known:
        raise AdaslotError(f"--rank-by {rank_by}: unknown metric; choose one of {', '.join(known)}")
    if stage == 1 and rank_by in STAGE2_METRICS:
        raise AdaslotError(f"--rank-by {rank_by} is a stage-2 metric (kept slots); this is a stage-1 sweep")


def known_metrics() -> list[str]:
    """The metric names of a sweep: the scalars of an eval summary (as `adaslot eval` computes it, on one
    made-up stage-2 image) and the training metrics."""
    import numpy as np

    from adaslot.metrics import MetricAccumulator, image_scores

    acc = MetricAccumulator()
    acc.add(image_scores(np.zeros((2, 2), int), np.ones((1, 2, 2), bool), [1]), kept_slots=1)
    keys = [k for k, v in acc.summary().items() if isinstance(v, int | float)]
    return [*keys, *TRAIN_METRICS]


class _Progress:
    """One bar over the steps of every variant, read from their metrics.jsonl (works for worker processes
    too) by a background thread once a second."""

    def __init__(self, variants: list[Any], enabled: bool) -> None:
        from adaslot.progress import progress_bar

        self.runs = [(Path(v.cfg.out), v.cfg.resolved().num_iters) for v in variants]
        self.enabled, self.stop = enabled, threading.Event()
        self.bar = progress_bar("sweep", enabled, unit="step", fields="runs done {task.fields[done]}")
        self.task = self.bar.add_task("sweep", total=sum(n for _, n in self.runs), done="-")
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        from adaslot.sweep.results import checkpoint_step, read_score
        from adaslot.train import read_metrics

        while True:
            try:
                steps = [max([r["step"] for r in read_metrics(d) if "loss" in r] or [checkpoint_step(d)])
                         for d, _ in self.runs]
            except ValueError:  # a line being written: next time
                steps = []
            if not steps:
                if self.stop.wait(1.0):
                    return
                continue
            done = sum(read_score(d) is not None and s >= n
                       for (d, n), s in zip(self.runs, steps, strict=True))
            self.bar.update(self.task, completed=sum(steps), done=f"{done}/{len(self.runs)}")
            if self.stop.wait(1.0):
                return

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.bar.__enter__()
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.stop.set()
            self.thread.join()
            self.bar.__exit__(*exc)
