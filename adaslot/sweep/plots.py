"""The sweep's pictures (matplotlib, headless Agg): curves.png (training loss and a periodic val metric
against the step, one colour per variant, one line per seed) and effects.png (each metric against each grid
axis, every run a point in its variant's colour, the mean over the runs at each value joined by a line)."""

from __future__ import annotations

import math
from pathlib import Path

from adaslot.config.base import value_text
from adaslot.files import atomic_path
from adaslot.sweep.results import EVAL_ORDER, RunRecord, variant_label

PLOT_METRICS = ("fg_ari", "mbo_i", "mbo_c", "mean_kept_slots", "kept_vs_objects_r", "split_rate",
                "merge_rate", "final_loss")


def _pyplot():  # noqa: ANN202  (matplotlib.pyplot, imported lazily with the file backend)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colours(labels: list[str]) -> dict[str, tuple[float, ...]]:
    """One colour per variant label (tab10, then tab20 for more)."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def plot_curves(runs: list[RunRecord], axes: list[str], rank_by: str, path: Path) -> Path:
    plt = _pyplot()
    labels = list(dict.fromkeys(variant_label(r, axes) for r in runs))
    colour = colours(labels)
    val_key = f"val/{rank_by}"
    if not any(val_key in m for r in runs for m in r.metrics):
        val_key = "val/fg_ari"
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    seeds = sorted({r.seed for r in runs})
    styles = ["-", "--", ":", "-."]
    for r in runs:
        label = variant_label(r, axes)
        style = styles[seeds.index(r.seed) % len(styles)]
        pts = [(m["step"], m["loss"]) for m in r.metrics if "loss" in m]
        if pts:
            ax_loss.plot(*zip(*pts, strict=True), style, color=colour[label], lw=1.2, alpha=0.85)
        val = [(m["step"], m[val_key]) for m in r.metrics if m.get(val_key) is not None]
        if val:
            ax_val.plot(*zip(*val, strict=True), style, marker="o", ms=3, color=colour[label], lw=1.2)
    ax_loss.set(xlabel="step", ylabel="training loss", title="training loss")
    ax_loss.set_yscale("log")
    ax_val.set(xlabel="step", ylabel=val_key, title=f"periodic validation: {val_key.removeprefix('val/')}")
    if not any(line for line in ax_val.get_lines()):
        ax_val.text(0.5, 0.5, "no periodic validation in these runs\n(--val-every N)", ha="center",
                    va="center", transform=ax_val.transAxes, color="0.4")
    handles = [plt.Line2D([], [], color=colour[lb], lw=2) for lb in labels]
    handles += [plt.Line2D([], [], color="0.3", ls=styles[i % len(styles)]) for i in range(len(seeds))]
    if handles:  # none when no run has started (every variant failed before its first step)
        fig.legend(handles, labels + [f"seed {s}" for s in seeds], loc="lower center", fontsize=8,
                   ncol=min(4, len(handles)), frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * math.ceil(len(handles) / 4), 1, 1))
    return _save(fig, path)


def plot_effects(runs: list[RunRecord], axes: list[str], rank_by: str, path: Path) -> Path:
    plt = _pyplot()
    done = [r for r in runs if r.status == "done"]
    present = {k for r in done for k, v in r.values().items() if math.isfinite(v)}
    metrics = [m for m in dict.fromkeys((rank_by, *PLOT_METRICS, *EVAL_ORDER)) if m in present][:6]
    metrics = metrics or ["final_loss"]
    columns = axes or ["variant"]
    labels = list(dict.fromkeys(variant_label(r, axes) for r in done))
    colour = colours(labels)
    fig, grid = plt.subplots(len(metrics), len(columns), figsize=(3.6 * len(columns) + 1, 2.4 * len(metrics)),
                             squeeze=False)
    for j, axis in enumerate(columns):
        xs = sorted({_key(r, axis, axes) for r in done}, key=_sort_key)
        for i, metric in enumerate(metrics):
            ax = grid[i][j]
            means = []
            for k, x in enumerate(xs):
                at = [r for r in done if _key(r, axis, axes) == x]
                ys = [r.values().get(metric, math.nan) for r in at]
                for n, (r, y) in enumerate(zip(at, ys, strict=True)):
                    offset = (n - (len(at) - 1) / 2) * 0.25 / max(len(at), 1)  # spread seeds sideways
                    ax.plot(k + offset, y, "o", color=colour[variant_label(r, axes)], ms=5, alpha=0.85)
                finite = [y for y in ys if math.isfinite(y)]
                means.append(sum(finite) / len(finite) if finite else math.nan)
            ax.plot(range(len(xs)), means, "-", color="0.2", lw=1.5, zorder=0)
            ax.set_xticks(range(len(xs)), [value_text(x) for x in xs], fontsize=8)
            ax.set_xlim(-0.5, max(len(xs), 1) - 0.5)
            if j == 0:
                ax.set_ylabel(metric)
            if i == len(metrics) - 1:
                ax.set_xlabel(axis)
            ax.grid(alpha=0.3)
    fig.suptitle("each run a point (colour: variant, as in curves.png); line: mean over runs at each value",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _key(run: RunRecord, axis: str, axes: list[str]):  # noqa: ANN202
    return variant_label(run, axes) if axis == "variant" else run.settings.get(axis)


def _sort_key(x: object) -> tuple:
    """Numbers by value, tuples of numbers (decoder sizes) by value, anything else by its text."""
    if isinstance(x, int | float) and not isinstance(x, bool):
        return (0, (x,), "")
    if isinstance(x, tuple) and all(isinstance(v, int | float) for v in x):
        return (1, x, "")
    return (2, (), repr(x))


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
