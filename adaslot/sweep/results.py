"""A sweep's results from its run folders alone (so `--collect` works on folders made anywhere):
OUT/sweep.csv (one row per run), OUT/summary.md (grouped over seeds) and the rich table.

Per run (OUT/runs/<name>/): config.json (its RunSpec) gives its settings, metrics.jsonl its losses, pace and
periodic validation, score.json its final scores. The grid axes are the settings the runs differ in (seeds
apart).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaslot.config.base import value_text
from adaslot.config.run import RunSpec
from adaslot.config.sweep import hidden_axes
from adaslot.errors import AdaslotError
from adaslot.evaluate.report import format_value
from adaslot.files import atomic_path
from adaslot.metrics import upgrade_metric_keys

TRAIN_METRICS = ("final_loss", "steps_per_s", "wall_s")
EVAL_ORDER = ("fg_ari", "mbo_i", "mbo_c", "miou", "mask_corloc", "mean_kept_slots", "mean_objects",
              "kept_vs_objects_r", "split_rate", "merge_rate", "background_slots")
LOWER_IS_BETTER = {"final_loss", "wall_s", "split_rate", "merge_rate", "background_slots"}
HIDDEN_EVAL = {"num_images", "num_skipped"}


@dataclass
class RunRecord:
    """One run folder as the results see it: `settings` is its RunSpec's `flat()`."""

    name: str
    dir: str
    settings: dict[str, Any]
    num_iters: int
    checkpoint_step: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    score: dict[str, Any] | None = None

    @property
    def seed(self) -> int:
        return int(self.settings.get("seed", 0))

    @property
    def trained(self) -> bool:
        return self.checkpoint_step >= self.num_iters

    @property
    def status(self) -> str:
        if not self.trained:
            return "unfinished"
        return "done" if self.score and self.score.get("step") == self.checkpoint_step else "unscored"

    def values(self) -> dict[str, float]:
        """final_loss, steps_per_s (own compute), wall_s (elapsed), then every scalar of the final score."""
        steps, wall, busy, prev, loss = 0, 0.0, 0.0, 0, math.nan
        for r in self.metrics:
            if "loss" not in r:
                continue
            n, prev = r["step"] - prev, r["step"]
            steps, loss = steps + n, r["loss"]
            elapsed = n / r["steps_per_s"] if r.get("steps_per_s") else 0.0
            wall += elapsed
            busy += n * r["step_s"] if "step_s" in r else elapsed  # runs from before step_s was logged
        out = {"final_loss": loss, "steps_per_s": steps / busy if busy else math.nan,
               "wall_s": wall if wall else math.nan}
        if self.score:
            scores = upgrade_metric_keys(self.score.get("eval", {}))  # score.json of older versions: corloc
            out |= {k: v if v is not None else math.nan for k, v in scores.items()}
        return out


def checkpoint_step(run_dir: str | Path) -> int:
    """Step of the newest checkpoint of a run folder (0: none yet)."""
    from adaslot.checkpoint import latest_checkpoint, step_of

    path = latest_checkpoint(Path(run_dir) / "checkpoints")
    return step_of(path) if path else 0


def read_score(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "score.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """Every run folder under SWEEP/runs/ with a config.json, by name."""
    from adaslot.train import read_metrics

    runs = []
    for cfg_file in sorted(Path(sweep_dir, "runs").glob("*/config.json")):
        d = cfg_file.parent
        spec = RunSpec.load(d)
        runs.append(RunRecord(d.name, str(d), spec.flat(), spec.train.total_steps(), checkpoint_step(d),
                              read_metrics(d), read_score(d)))
    return runs


def find_axes(runs: list[RunRecord], order: list[str] | None = None) -> list[str]:
    """The settings the runs differ in (seed and bookkeeping apart; model.X dropped when X is an axis), the
    keys of `order` (a sweep's grid) first in that order, then in config order."""
    keys: list[str] = list(order or [])
    for r in runs:
        keys += [k for k in r.settings if k not in keys]
    hidden = hidden_axes()  # bookkeeping and what is derived per run: never an axis
    axes = [k for k in keys if k not in hidden and len({repr(r.settings.get(k)) for r in runs}) > 1]
    return [a for a in axes if not (a.startswith("model.") and a[len("model."):] in axes)]


def variant_label(run: RunRecord, axes: list[str]) -> str:
    return " ".join(f"{a.removeprefix('model.')}={value_text(run.settings.get(a))}" for a in axes) or "base"


def metric_columns(runs: list[RunRecord]) -> list[str]:
    """Eval scalars present (known ones first, in EVAL_ORDER), then the training metrics."""
    present: list[str] = []
    for r in runs:
        present += [k for k in r.values() if k not in present and k not in TRAIN_METRICS]
    evals = [k for k in EVAL_ORDER if k in present] + sorted(k for k in present if k not in EVAL_ORDER)
    return evals + list(TRAIN_METRICS)


def write_csv(runs: list[RunRecord], axes: list[str], path: Path) -> Path:
    """sweep.csv: one row per run (variant x seed)."""
    cols = metric_columns(runs)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "variant", "seed", "status", *axes, "step", *cols, "warmstart"])
        for r in runs:
            vals = r.values()
            w.writerow([r.name, variant_label(r, axes), r.seed, r.status,
                        *(value_text(r.settings.get(a)) for a in axes), r.checkpoint_step,
                        *(_csv_number(vals.get(c)) for c in cols), r.settings.get("warmstart") or ""])
    return path


def _csv_number(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else repr(float(v))


@dataclass
class Group:
    """The runs of one variant (all seeds): mean and std over seeds of each metric."""

    label: str
    runs: list[RunRecord]
    mean: dict[str, float]
    std: dict[str, float]
    n: dict[str, int]


def summarise(runs: list[RunRecord], axes: list[str], rank_by: str) -> list[Group]:
    """Finished runs grouped by variant, best first by `rank_by` (NaN last); std is the sample std over
    seeds (NaN for one seed)."""
    done = [r for r in runs if r.status == "done"]
    cols = metric_columns(done)
    if done and rank_by not in cols:
        raise AdaslotError(f"--rank-by {rank_by}: not a metric of these runs; choose one of "
                           f"{', '.join(cols)}")
    by_label: dict[str, list[RunRecord]] = {}
    for r in done:
        by_label.setdefault(variant_label(r, axes), []).append(r)
    groups = []
    for label, members in by_label.items():
        mean, std, n = {}, {}, {}
        for c in cols:
            xs = [v for r in members if math.isfinite(v := r.values().get(c, math.nan))]
            n[c] = len(xs)
            mean[c] = statistics.fmean(xs) if xs else math.nan
            std[c] = statistics.stdev(xs) if len(xs) > 1 else math.nan
        groups.append(Group(label, sorted(members, key=lambda r: r.seed), mean, std, n))
    sign = 1 if rank_by in LOWER_IS_BETTER else -1
    return sorted(groups, key=lambda g: (math.isnan(g.mean.get(rank_by, math.nan)),
                                         sign * g.mean.get(rank_by, 0.0) if g.n.get(rank_by) else 0.0))


def versus_best(group: Group, best: Group, rank_by: str) -> str:
    """"noise" when `group`'s distance to the best variant is no larger than the larger of their seed stds,
    "behind" when it is; "1 seed" when there is no spread to compare with."""
    if group is best:
        return "best"
    d = abs(group.mean[rank_by] - best.mean[rank_by])
    spread = max(group.std[rank_by], best.std[rank_by])
    if math.isnan(d):
        return "-"
    if math.isnan(spread):
        return "1 seed"
    return "noise" if d <= spread else "behind"


def cell(key: str, g: Group) -> str:
    if not g.n.get(key):
        return "-"
    mean = format_value(key, g.mean[key])
    return mean if math.isnan(g.std[key]) else f"{mean} ± {format_value(key, g.std[key])}"


def table_rows(groups: list[Group], rank_by: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (shared by summary.md and the terminal)."""
    cols = [c for c in metric_columns([r for g in groups for r in g.runs]) if c not in HIDDEN_EVAL]
    cols = [rank_by] + [c for c in cols if c != rank_by and any(g.n.get(c) for g in groups)]
    header = ["rank", "variant", "seeds", *cols, "vs best"]
    rows = []
    for i, g in enumerate(groups):
        rank = f"{i + 1} ★" if i == 0 else str(i + 1)
        rows.append([rank, g.label, str(len(g.runs)), *(cell(c, g) for c in cols),
                     versus_best(g, groups[0], rank_by)])
    return header, rows


def write_summary(runs: list[RunRecord], groups: list[Group], axes: list[str], rank_by: str,
                  path: Path) -> Path:
    direction = "lowest first" if rank_by in LOWER_IS_BETTER else "highest first"
    seeds = sorted({r.seed for r in runs})
    lines = [
        f"# Sweep {path.parent.name}", "",
        f"{len(runs)} runs: {len(groups)} finished variants x seeds {', '.join(map(str, seeds))}; grid axes: "
        f"{', '.join(axes) or 'none'}. Ranked by {rank_by} ({direction}); mean ± std over seeds.",
        "Scores and rates in percent, as `adaslot eval` prints them; steps_per_s is each run's own compute, "
        "wall_s its elapsed time. vs best: 'noise' when the distance to the best is no larger than the "
        "larger std of the two (sample std over seeds), 'behind' when it is larger.", ""]
    methods = list(dict.fromkeys(json.dumps(r.score.get("method") or {}) for r in runs if r.score))
    if methods:  # the inference method each checkpoint ran (its own, or --score-method's)
        lines[-1:-1] = ["Scored with the inference method " + "; ".join(
            ", ".join(f"{k}={v}" for k, v in json.loads(m).items()) for m in methods)
            + " (merged slots count as one; docs/adaptive.md)."]
    if groups:
        header, rows = table_rows(groups, rank_by)
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    pending = [r for r in runs if r.status != "done"]
    if pending:
        lines += ["", "Not in the table: " + ", ".join(f"{r.name} ({r.status}, step {r.checkpoint_step}"
                                                       f"/{r.num_iters})" for r in pending)]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


# Metric columns of the terminal table besides --rank-by (summary.md has them all).
TERMINAL = ("fg_ari", "mbo_i", "mbo_c", "mean_kept_slots", "kept_vs_objects_r", "final_loss", "steps_per_s")


def print_summary(groups: list[Group], rank_by: str, title: str) -> None:
    """The summary table in the terminal: rank_by and the TERMINAL metrics present (all in summary.md)."""
    from rich.console import Console
    from rich.table import Table

    if not groups:
        Console().print(f"{title}: no finished runs")
        return
    header, rows = table_rows(groups, rank_by)
    keep = [i for i, h in enumerate(header) if i < 4 or h in TERMINAL or h == "vs best"]
    table = Table(title=title)
    for i in keep:
        table.add_column(header[i], justify="left" if header[i] in ("variant", "vs best") else "right")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    Console().print(table)
