"""Start-up of every command, before and after a change: command start to its first unit of work.

Runs each command on tiny inputs (the data, stores and checkpoint a `coco_scale.py --quick` run left in
--work) with two code trees in turns, so both see the same machine load: BEFORE (a git revision, extracted
with `git archive`) and this tree. Start-up is seen on disk as in coco_scale.py: the first image of
make-synthetic, the first metrics line of train and sweep, the first mask of eval, the first done.jsonl line
of segment; for cache-features (whose first file is its first finished shard) the wall time of a 60-image
run. Each row also has the CPU seconds of the whole tiny run (user + system, children included), which load
changes far less than wall time. The import floor (`import torch, adaslot.cli`) is the first row. Writes
--json (docs/results/coco_scale_startup.json) with the load average before and after.

    python benchmarks/coco_scale.py --quick --work cache/coco_scale_quick
    python benchmarks/coco_scale_startup.py --work cache/coco_scale_quick --before ebb2958
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from rehearsal.measure import ROOT, cli, lines, run
from rehearsal.steps import eval_args, train_flags

Probe = tuple[str, Callable[[Path, Path], list[str]], Path, Callable[[Path], bool] | None]


def probes(work: Path, out: Path) -> list[Probe]:
    """(name, code -> command, output folder, output folder -> first unit seen) for every command."""
    ckpt, data = work / "stage1" / "checkpoints" / "last.pt", work / "data"
    store, val_store = work / "train.zarr", work / "val.zarr"
    common = ["--workers", "0", "--device", "cpu", "--no-progress"]
    metrics = lambda o: lines(o / "metrics.jsonl") > 0  # noqa: E731
    return [
        (
            "import (floor)",
            lambda c, o: [sys.executable, "-c", "import torch, adaslot.cli"],
            out / "none",
            None,
        ),
        (
            "make-synthetic",
            lambda c, o: cli(
                "make-synthetic",
                str(o),
                "--num-train",
                "50",
                "--num-val",
                "0",
                "--image-size",
                "64",
                "--no-progress",
                code=c,
            ),
            out / "syn",
            lambda o: (
                bool(glob.glob(str(o.parent / f".{o.name}.tmp-*" / "train2017" / "*.jpg"))) or o.is_dir()
            ),
        ),
        (
            "cache-features (60 images, wall)",
            lambda c, o: cli(
                "cache-features",
                "--out",
                str(o),
                "--root",
                str(data),
                "--split",
                "val",
                "--encoder",
                "demo-colour-pos",
                "--image-size",
                "64",
                "--views",
                "1",
                "--batch-size",
                "64",
                "--no-progress",
                code=c,
            ),
            out / "cf.zarr",
            None,
        ),
        (
            "train",
            lambda c, o: cli("train", "--out", str(o), "--num-iters", "2", *train_flags(store), code=c),
            out / "train",
            metrics,
        ),
        (
            "eval",
            lambda c, o: cli(*eval_args(ckpt, data, o, 6), *common, code=c),
            out / "eval",
            lambda o: (o / "masks").is_dir() and any((o / "masks").iterdir()),
        ),
        (
            "segment",
            lambda c, o: cli(
                "segment",
                str(ckpt),
                str(work / "seg-inputs-12"),
                "--out",
                str(o),
                "--save-slots",
                "--batch-size",
                "4",
                "--workers",
                "1",
                "--device",
                "cpu",
                "--no-progress",
                code=c,
            ),
            out / "segment",
            lambda o: lines(o / "done.jsonl") > 0,
        ),
        (
            "sweep",
            lambda c, o: cli(
                "sweep",
                "--out",
                str(o),
                "--from-cache",
                str(store),
                "--preset",
                "demo",
                "--num-iters",
                "2",
                "--batch-size",
                "64",
                "--log-every",
                "1",
                "--grid",
                "num_slots=3,4",
                "--val-from-cache",
                str(val_store),
                "--score-images",
                "20",
                "--workers",
                "0",
                "--devices",
                "cpu",
                "--no-progress",
                code=c,
            ),
            out / "sweep",
            lambda o: bool(glob.glob(str(o / "runs" / "*" / "metrics.jsonl"))),
        ),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--work", required=True, help="the --work folder of a finished coco_scale.py --quick run")
    p.add_argument("--before", required=True, help="git revision to compare with (e.g. the branch point)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "docs" / "results" / "coco_scale_startup.json"))
    args = p.parse_args()
    work = Path(args.work).resolve()
    before = work / "before-code"
    shutil.rmtree(before, ignore_errors=True)
    before.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", args.before], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
    trees = {"before": before, "after": ROOT}
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for name, command, out, first in probes(work, work / "startup-out"):
        seen: dict[str, list[float]] = {"before": [], "after": []}
        cpu: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.repeats):
            for label, code in trees.items():  # in turns: both see the same load
                shutil.rmtree(out.parent, ignore_errors=True)
                out.parent.mkdir(parents=True)
                r = run(
                    f"{name} [{label}]",
                    command(code, out),
                    out,
                    first=(lambda o=out, f=first: f(o)) if first else None,
                    code=code,
                )
                if r["exit_code"] != 0:
                    sys.exit(f"coco_scale_startup: {name} [{label}] failed")
                seen[label].append(r["startup_s"] if r["startup_s"] is not None else r["wall_s"])
                cpu[label].append(r["cpu_s"])
        row = {
            "command": name,
            **{f"{k}_s": round(median(v), 2) for k, v in seen.items()},
            **{f"{k}_runs_s": v for k, v in seen.items()},
            # CPU seconds of the whole (tiny) run: its start-up, mostly, and far less noisy under load
            **{f"{k}_cpu_s": round(median(v), 2) for k, v in cpu.items()},
        }
        row["saved_s"] = round(row["before_s"] - row["after_s"], 2)
        row["saved_cpu_s"] = round(row["before_cpu_s"] - row["after_cpu_s"], 2)
        rows.append(row)
        print(
            f"{name}: before {row['before_s']} s ({row['before_cpu_s']} CPU s), "
            f"after {row['after_s']} s ({row['after_cpu_s']} CPU s)",
            flush=True,
        )
    result = {
        "before": args.before,
        "after": "this tree",
        "repeats": args.repeats,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{os.cpu_count()} cores",
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
