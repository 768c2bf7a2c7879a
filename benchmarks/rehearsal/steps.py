"""The commands of the COCO-cardinality rehearsal, each run in its own process and measured by measure.run:
make-synthetic, cache-features, the loader, train (and killed / resumed), eval, segment (and killed /
resumed), sweep, DDP. Each function appends its measured steps to `res`."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .measure import ROOT, Sink, cli, count_files, lines, run
from .snippets import DATASET_SNIPPET, INDEX_SNIPPET, LOADER_SNIPPET

COCO_TRAIN, COCO_VAL, SHARD = 118_287, 5_000, 512
SEG_FLAGS = ["--save-slots", "--batch-size", "64", "--workers", "1", "--device", "cpu", "--no-progress"]


def _parse_last_line(r: dict[str, Any]) -> dict[str, Any]:
    """The JSON a snippet printed as its last line ({} if it printed none)."""
    try:
        return dict(json.loads(r["output_tail"].strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {}


def import_floor(res: Sink) -> None:
    """The floor every command pays before it can do anything: Python + torch + adaslot's CLI imported."""
    run("import (floor)", [sys.executable, "-c", "import torch, adaslot.cli"], None, results=res)


def store_index(work: Path, res: Sink) -> None:
    """Opening a store of COCO's N rows (metadata, status, ids; no features) and planning its loader."""
    r = run(
        "store + loader index at COCO N",
        [sys.executable, "-c", INDEX_SNIPPET, str(work / "index.zarr"), str(COCO_TRAIN)],
        None,
    )
    r.update(_parse_last_line(r))
    res.append(r)
    shutil.rmtree(work / "index.zarr", ignore_errors=True)


def make_synthetic(data: Path, n_train: int, n_val: int, workers: int, res: Sink) -> None:
    shutil.rmtree(data, ignore_errors=True)
    run(
        "make-synthetic",
        cli(
            "make-synthetic",
            str(data),
            "--num-train",
            str(n_train),
            "--num-val",
            str(n_val),
            "--image-size",
            "64",
            "--workers",
            str(workers),
            "--overwrite",
            "--no-progress",
        ),
        data,
        results=res,
        images=n_train + n_val,
        workers=workers,
    )


def dataset_index(data: Path, res: Sink) -> None:
    """Opening the train split as a dataset (pycocotools' index of its annotation file, the listing of its
    images): what cache-features and online training pay before their first image."""
    r = run("dataset index (train)", [sys.executable, "-c", DATASET_SNIPPET, str(data), "train"], None)
    r.update(_parse_last_line(r))
    res.append(r)


def cache_features(data: Path, split: str, out: Path, views: int, images: int, res: Sink) -> None:
    """cache-features of one split; start-up = its first shard file on disk."""
    shutil.rmtree(out, ignore_errors=True)
    run(
        f"cache-features {split}",
        cli(
            "cache-features",
            "--out",
            str(out),
            "--root",
            str(data),
            "--split",
            split,
            "--encoder",
            "demo-colour-pos",
            "--image-size",
            "64",
            "--views",
            str(views),
            "--batch-size",
            "64",
            "--no-progress",
        ),
        out,
        first=lambda: bool(glob.glob(str(out / "features" / "c" / "*" / "0" / "0" / "0"))),
        results=res,
        images=images,
    )


def loader_epoch(store: Path, res: Sink) -> None:
    r = run("loader epoch", [sys.executable, "-c", LOADER_SNIPPET, str(store), "64"], None)
    info = _parse_last_line(r)
    r.update(info)
    if "first_batch_s" in info:
        r["startup_s"] = round(info["first_batch_s"], 2)
    res.append(r)


def train_flags(store: Path) -> list[str]:
    return [
        "--from-cache",
        str(store),
        "--preset",
        "demo",
        "--batch-size",
        "64",
        "--log-every",
        "1",
        "--warmup-steps",
        "10",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]


def metrics(run_dir: Path) -> Path:
    return run_dir / "metrics.jsonl"


def train(work: Path, store: Path, steps: int, res: Sink) -> Path:
    """Stage 1 for `steps` steps, then the same run SIGKILLed mid-way and resumed -> its checkpoint."""
    run1 = work / "stage1"
    shutil.rmtree(run1, ignore_errors=True)
    run(
        "train stage 1",
        cli(
            "train",
            "--out",
            str(run1),
            "--num-iters",
            str(steps),
            "--ckpt-every",
            str(max(1, steps // 2)),
            *train_flags(store),
        ),
        run1,
        first=lambda: lines(metrics(run1)) > 0,
        results=res,
        steps=steps,
    )
    run2 = work / "stage1-killed"
    shutil.rmtree(run2, ignore_errors=True)
    half = max(2, steps // 2)
    kill_cmd = cli(
        "train",
        "--out",
        str(run2),
        "--num-iters",
        str(steps),
        "--ckpt-every",
        str(half // 2 or 1),
        *train_flags(store),
    )
    run(
        "train killed (SIGKILL)",
        kill_cmd,
        run2,
        first=lambda: lines(metrics(run2)) > 0,
        kill_when=lambda: lines(metrics(run2)) >= half,
        results=res,
    )
    before = lines(metrics(run2))
    stamp = metrics(run2).stat().st_mtime_ns if metrics(run2).is_file() else 0
    # start-up = the first write to metrics.jsonl: the run resumes from its last checkpoint, so lines may be
    # rewritten before the count passes the killed run's
    run(
        "train resumed",
        kill_cmd,
        run2,
        first=lambda: metrics(run2).is_file() and metrics(run2).stat().st_mtime_ns != stamp,
        results=res,
        metrics_lines_before=before,
    )
    return run1 / "checkpoints" / "last.pt"


def eval_args(ckpt: Path, data: Path, out: Path, n: int) -> list[str]:
    """`adaslot eval` of the first n val images, a mask PNG per image (the first written = start-up)."""
    return ["eval", str(ckpt), "--root", str(data), "--split", "val", "--out", str(out), "--save-masks",
            "--num-vis", "0", "--max-images", str(n)]


def memory_steps(
    work: Path, data: Path, ckpt: Path, n_val: int, n_seg: int, res: Sink
) -> Callable[[int], Path]:
    """eval on n_val and n_val / 10 val images, segment --save-slots on n_seg and n_seg / 10 train images
    (the memory ratios) -> the function giving the folder of the first n train images (symlinks)."""
    for n in (n_val, max(1, n_val // 10)):
        ev = work / f"eval-{n}"
        shutil.rmtree(ev, ignore_errors=True)
        run(
            f"eval {n} images",
            cli(*eval_args(ckpt, data, ev, n), "--workers", "0", "--device", "cpu", "--no-progress"),
            ev,
            first=lambda ev=ev: (ev / "masks").is_dir() and any((ev / "masks").iterdir()),
            results=res,
            images=n,
        )

    def image_folder(n: int) -> Path:
        folder = work / f"seg-inputs-{n}"
        if not folder.is_dir() or count_files(folder) != n:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for f in sorted(os.listdir(data / "train2017"))[:n]:
                os.symlink(data / "train2017" / f, folder / f)
        return folder

    for n in (n_seg, max(1, n_seg // 10)):
        so = work / f"segment-{n}"
        shutil.rmtree(so, ignore_errors=True)
        run(
            f"segment {n} images",
            cli("segment", str(ckpt), str(image_folder(n)), "--out", str(so), *SEG_FLAGS),
            so,
            first=lambda so=so: lines(so / "done.jsonl") > 0,
            results=res,
            images=n,
        )
    return image_folder


def segment_kill_resume(work: Path, ckpt: Path, inputs: Path, n_seg: int, res: Sink) -> None:
    """segment SIGKILLed halfway, then resumed: it must not redo finished images ("redone" 0)."""
    sk = work / "segment-killed"
    shutil.rmtree(sk, ignore_errors=True)
    seg_cmd = cli("segment", str(ckpt), str(inputs), "--out", str(sk), *SEG_FLAGS)
    run(
        "segment killed (SIGKILL)",
        seg_cmd,
        sk,
        first=lambda: lines(sk / "done.jsonl") > 0,
        kill_when=lambda: lines(sk / "done.jsonl") >= n_seg // 2,
        results=res,
    )
    done_before = lines(sk / "done.jsonl")
    r = run(
        "segment resumed",
        seg_cmd,
        sk,
        first=lambda: lines(sk / "done.jsonl") > done_before,
        done_before=done_before,
    )
    manifest = json.loads((sk / "manifest.json").read_text()) if (sk / "manifest.json").is_file() else {}
    r["images_total"] = manifest.get("num_images")
    r["done_lines_after"] = lines(sk / "done.jsonl")
    r["redone"] = r["done_lines_after"] - n_seg  # lines beyond one per image: images segmented twice
    res.append(r)


def sweep(work: Path, store: Path, val_store: Path, steps: int, res: Sink) -> None:
    sw = work / "sweep"
    shutil.rmtree(sw, ignore_errors=True)
    run(
        "sweep 8 variants",
        cli(
            "sweep",
            "--out",
            str(sw),
            "--from-cache",
            str(store),
            "--preset",
            "demo",
            "--num-iters",
            str(steps),
            "--batch-size",
            "64",
            "--log-every",
            "1",
            "--grid",
            "num_slots=3,4,5,6,7,8,9,10",
            "--val-from-cache",
            str(val_store),
            "--score-images",
            "200",
            "--workers",
            "0",
            "--devices",
            "cpu",
            "--no-progress",
        ),
        sw,
        first=lambda: bool(glob.glob(str(sw / "runs" / "*" / "metrics.jsonl"))),
        results=res,
        variants=8,
    )


def ddp(work: Path, store: Path, steps: int, ranks: int, res: Sink) -> None:
    dd = work / "ddp"
    shutil.rmtree(dd, ignore_errors=True)
    run(
        f"DDP {ranks} gloo ranks",
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(ranks),
            str(ROOT / "cli.py"),
            "train",
            "--out",
            str(dd),
            "--num-iters",
            str(steps),
            *train_flags(store),
        ],
        dd,
        first=lambda: lines(metrics(dd)) > 0,
        results=res,
        ranks=ranks,
    )
