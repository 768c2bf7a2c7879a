"""COCO-cardinality rehearsal: every command at COCO's N (118 287 train / 5 000 val images) on small images.

Same N, same shard count (232 shards of 512), same steps per epoch as COCO, with 64-px synthetic images
(`make-synthetic`) and the demo's encoder (demo-colour-pos, 64 tokens x 128) so it runs on a CPU. Each step
is the real command (`cli.py ...` in its own process) and is measured from outside:
  wall_s      command start to exit
  startup_s   command start to its first unit of work, seen on disk: the first shard file (cache-features),
              the first metrics line (train, log every step), the first mask PNG (eval --save-masks), the
              first done.jsonl line (segment), the first run folder with metrics (sweep); the loader reports
              its own time to the first batch. Resolution ~0.05 s.
  peak_rss_mb the process's peak resident memory, its waited-for children included (os.wait4)
  files       files the command left in its output folder
Steps: make-synthetic; cache-features (train, 2 views; val, 1 view); the loader over a full epoch; stage 1
for --steps steps; the same run SIGKILLed mid-epoch and resumed; eval on all val images and on 1/10 of them
(memory ratio); `segment --save-slots` on --segment images and on 1/10 of them, then a segment run killed
halfway and resumed (it must not redo finished images); a sweep of 8 variants; DDP with 4 gloo ranks from
the store. Results: --json (docs/results/coco_scale_steps.json) and a markdown table (--md).

    python benchmarks/coco_scale.py [--quick] [--scale 1.0] [--work cache/coco_scale] [--keep-data]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COCO_TRAIN, COCO_VAL, SHARD = 118_287, 5_000, 512


def cli(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), *args]


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder)) if folder.exists() else 0


def run(
    name: str,
    cmd: list[str],
    out: Path | None,
    first: Callable[[], bool] | None = None,
    kill_when: Callable[[], bool] | None = None,
    results: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Run `cmd`, watching `first()` (start-up) and `kill_when()` (SIGKILL it then) -> its measurements."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True
    )
    seen: dict[str, float] = {}
    stop = threading.Event()
    output: list[str] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)

    def watch() -> None:
        while not stop.is_set():
            if first is not None and "startup" not in seen and first():
                seen["startup"] = time.perf_counter() - t0
            if kill_when is not None and "killed" not in seen and kill_when():
                seen["killed"] = time.perf_counter() - t0
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.05)

    threads = [threading.Thread(target=drain, daemon=True), threading.Thread(target=watch, daemon=True)]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(timeout=5)
    code = os.waitstatus_to_exitcode(status)
    r = {
        "step": name,
        "wall_s": round(wall, 2),
        "startup_s": round(seen["startup"], 2) if "startup" in seen else None,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit_code": code,
        "files": count_files(out) if out is not None else None,
        **extra,
    }
    if "killed" in seen:
        r["killed_at_s"] = round(seen["killed"], 2)
    text = "".join(output)
    if code != 0 and "killed" not in seen:
        r["error"] = text[-1500:]
        print(text[-3000:], file=sys.stderr)
    r["output_tail"] = text[-400:]
    print(
        f"  {name}: {wall:.1f} s, start-up {r['startup_s']} s, peak RSS {r['peak_rss_mb']} MB, "
        f"files {r['files']}, exit {code}",
        flush=True,
    )
    if results is not None:
        results.append(r)
    return r


def lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


LOADER_SNIPPET = """
import sys, time, json, resource
t0 = time.perf_counter()
from adaslot.store.loader import FeatureLoader
loader = FeatureLoader(sys.argv[1], int(sys.argv[2]), seed=0)
n = loader.samples_per_epoch
steps, first, seen = 0, None, 0
for feats, rows in loader:
    if first is None:
        first = time.perf_counter() - t0
    seen += rows.numel()
    steps += 1
    if seen >= n:
        break
dt = time.perf_counter() - t0
print(json.dumps({"samples": seen, "steps": steps, "first_batch_s": first, "seconds": dt,
                  "samples_per_s": seen / (dt - first)}))
"""


INDEX_SNIPPET = """
import sys, time, json
t0 = time.perf_counter()
import numpy as np, zarr
from adaslot.store import STORE_FORMAT, STORE_VERSION, FeatureStore, open_store, shard_done_mask
from adaslot.store.layout import create_arrays, for_writing
from adaslot.store.loader import FeatureLoader
t_import = time.perf_counter() - t0
out, n = sys.argv[1], int(sys.argv[2])
root = zarr.open_group(out, mode="w")
create_arrays(root, np.arange(1, n + 1), 2, 196, 768, 512)
for_writing(root, "status")[:] = 1
root.attrs.update({"format": STORE_FORMAT, "format_version": STORE_VERSION, "complete": True,
                   "layout": {"chunk_samples": 64, "shard_samples": 512}})
r = {"import_s": t_import}


def timed(key, fn):
    t = time.perf_counter()
    value = fn()
    r[key] = time.perf_counter() - t
    return value


store = timed("open_store_s", lambda: open_store(out))
timed("shard_done_mask_s", lambda: shard_done_mask(store.status, 512))
loader = timed("loader_init_s", lambda: FeatureLoader(store, 64, seed=0))
timed("epoch_plan_s", lambda: loader.epoch_plan(0))
pos = timed("resume_position_200k_steps_s", lambda: loader.position(200_000 * 64))
r["resume_position"] = pos
print(json.dumps(r))
"""


SEG_FLAGS = ["--save-slots", "--batch-size", "64", "--workers", "1", "--device", "cpu", "--no-progress"]


def memory_steps(
    work: Path, data: Path, ckpt: Path, n_val: int, n_seg: int, res: list[dict[str, Any]]
) -> Callable[[int], Path]:
    """eval on n_val and n_val / 10 val images, segment --save-slots on n_seg and n_seg / 10 train images
    (the memory ratios) -> the function giving the folder of the first n train images (symlinks)."""
    # eval on every val image, and on a tenth of them (memory ratio)
    for n in (n_val, max(1, n_val // 10)):
        ev = work / f"eval-{n}"
        shutil.rmtree(ev, ignore_errors=True)
        run(
            f"eval {n} images",
            cli(
                "eval",
                str(ckpt),
                "--root",
                str(data),
                "--split",
                "val",
                "--out",
                str(ev),
                "--save-masks",
                "--num-vis",
                "0",
                "--max-images",
                str(n),
                "--workers",
                "0",
                "--device",
                "cpu",
                "--no-progress",
            ),
            ev,
            first=lambda ev=ev: (ev / "masks").is_dir() and any((ev / "masks").iterdir()),
            results=res,
            images=n,
        )

    # segment --save-slots on n_seg images and on a tenth of them
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few hundred images, a few steps (the test)")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of COCO's N (documented if < 1)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument(
        "--val", type=int, default=None, help="val images (default: COCO's 5000 x min(1, 10 scale))"
    )
    p.add_argument(
        "--segment",
        type=int,
        default=None,
        help="images for segment --save-slots (default: 20000 x min(1, 10 scale))",
    )
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--work", default=str(ROOT / "cache" / "coco_scale"))
    p.add_argument("--keep-data", action="store_true", help="reuse WORK/data if it has the right size")
    p.add_argument(
        "--memory",
        default=None,
        metavar="CKPT",
        help="only the eval / segment memory runs at --val / --segment images, with this checkpoint "
        "(writes WORK/memory-data and docs/results/coco_scale_memory.json)",
    )
    p.add_argument("--json", default=None, help="default docs/results/coco_scale_steps.json (quick: WORK/)")
    p.add_argument("--md", default=None, help="markdown table (default: beside --json)")
    args = p.parse_args()
    if args.quick:
        n_train, n_val, steps, n_seg, ranks, variants_steps = 700, 60, 12, 120, 2, 3
    else:
        small = min(1.0, args.scale * 10)
        n_train = round(COCO_TRAIN * args.scale)
        n_val = args.val or round(COCO_VAL * small)
        n_seg = args.segment or round(20_000 * small)
        steps, ranks, variants_steps = args.steps, args.ranks, 20
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.memory:
        memory_only(args, work, n_val, n_seg)
        return
    json_path = Path(
        args.json
        or (work / "coco_scale.json" if args.quick else ROOT / "docs" / "results" / "coco_scale_steps.json")
    )
    md_path = Path(args.md or json_path.with_suffix(".md"))
    res: list[dict[str, Any]] = []
    data, store, val_store = work / "data", work / "train.zarr", work / "val.zarr"
    t_all = time.perf_counter()
    print(
        f"coco_scale: {n_train} train / {n_val} val images, {-(-n_train // SHARD)} shards, work {work}",
        flush=True,
    )

    # 0. the floor every command pays before it can do anything: Python + torch + adaslot imports
    run("import (floor)", [sys.executable, "-c", "import torch, adaslot.cli"], None, results=res)

    # 0b. what opening a store and planning its loader cost at COCO's N (a store of 118 287 rows whose
    # features are never written: metadata, status and image ids only), and the resume position at step 200k
    r = run(
        "store + loader index at COCO N",
        [sys.executable, "-c", INDEX_SNIPPET, str(work / "index.zarr"), str(COCO_TRAIN)],
        None,
        results=res,
    )
    try:
        r.update(json.loads(r["output_tail"].strip().splitlines()[-1]))
    except (ValueError, IndexError):
        pass
    shutil.rmtree(work / "index.zarr", ignore_errors=True)

    # 1. data
    meta = work / "data.json"
    want = {"train": n_train, "val": n_val, "side": 64}
    if not (args.keep_data and meta.is_file() and json.loads(meta.read_text()) == want):
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
                "--overwrite",
                "--no-progress",
            ),
            data,
            results=res,
        )
        meta.write_text(json.dumps(want))

    # 2. cache-features (the store is what everything else reads)
    shard_file = lambda s: lambda: bool(glob.glob(str(s / "features" / "c" / "*" / "0" / "0" / "0")))  # noqa: E731
    for split, out, views in (("train", store, 2), ("val", val_store, 1)):
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
            first=shard_file(out),
            results=res,
            images=n_train if split == "train" else n_val,
        )

    # 3. loader over one epoch
    r = run("loader epoch", [sys.executable, "-c", LOADER_SNIPPET, str(store), "64"], None, results=res)
    try:
        info = json.loads(r["output_tail"].strip().splitlines()[-1])
        r.update(info, startup_s=round(info["first_batch_s"], 2))
    except (ValueError, IndexError):
        pass

    # 4. stage 1, then the same run killed mid-epoch and resumed
    train_flags = [
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
    run1 = work / "stage1"
    shutil.rmtree(run1, ignore_errors=True)
    metrics = lambda d: d / "metrics.jsonl"  # noqa: E731
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
            *train_flags,
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
        *train_flags,
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
    run(
        "train resumed",
        kill_cmd,
        run2,
        # the first write to metrics.jsonl: the run resumes from its last checkpoint, so lines may be
        # rewritten before the count passes the killed run's
        first=lambda: metrics(run2).is_file() and metrics(run2).stat().st_mtime_ns != stamp,
        results=res,
        metrics_lines_before=before,
    )
    ckpt = run1 / "checkpoints" / "last.pt"

    # 5-6. eval and segment at two sizes (memory ratios), then segment killed halfway and resumed
    image_folder = memory_steps(work, data, ckpt, n_val, n_seg, res)
    seg_flags = SEG_FLAGS
    sk = work / "segment-killed"
    shutil.rmtree(sk, ignore_errors=True)
    seg_cmd = cli("segment", str(ckpt), str(image_folder(n_seg)), "--out", str(sk), *seg_flags)
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
        results=res,
        done_before=done_before,
    )
    manifest = json.loads((sk / "manifest.json").read_text()) if (sk / "manifest.json").is_file() else {}
    r["images_total"] = manifest.get("num_images")
    r["done_lines_after"] = lines(sk / "done.jsonl")
    r["redone"] = r["done_lines_after"] - n_seg  # lines beyond one per image: images segmented twice

    # 7. a sweep of 8 variants
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
            str(variants_steps),
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

    # 8. DDP, gloo ranks from the store
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
            str(max(4, steps // 10)),
            *train_flags,
        ],
        dd,
        first=lambda: lines(metrics(dd)) > 0,
        results=res,
        ranks=ranks,
    )

    total = time.perf_counter() - t_all
    summary = memory_ratios(res)
    result = {
        "train_images": n_train,
        "val_images": n_val,
        "segment_images": n_seg,
        "shards": -(-n_train // SHARD),
        "scale": args.scale if not args.quick else "quick",
        "steps": steps,
        "total_s": round(total, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        **summary,
        "results": [{k: v for k, v in r.items() if k != "output_tail"} for r in res],
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(table(result))
    print(table(result))
    for k, v in summary.items():
        print(f"ratio {k} = {v}")
    print(f"wrote {json_path} and {md_path} ({total:.0f} s in all)")
    if any(r["exit_code"] != 0 and "killed_at_s" not in r for r in res):
        sys.exit("coco_scale: a step failed (see the errors above)")


def memory_only(args: argparse.Namespace, work: Path, n_val: int, n_seg: int) -> None:
    """--memory CKPT: make n_seg train / n_val val images, then only the memory steps."""
    res: list[dict[str, Any]] = []
    data = work / "memory-data"
    shutil.rmtree(data, ignore_errors=True)
    run(
        "make-synthetic",
        cli(
            "make-synthetic",
            str(data),
            "--num-train",
            str(n_seg),
            "--num-val",
            str(n_val),
            "--image-size",
            "64",
            "--overwrite",
            "--no-progress",
        ),
        data,
        results=res,
    )
    memory_steps(work, data, Path(args.memory), n_val, n_seg, res)
    result = {
        "val_images": n_val,
        "segment_images": n_seg,
        **memory_ratios(res),
        "results": [{k: v for k, v in r.items() if k != "output_tail"} for r in res],
    }
    out = Path(args.json or ROOT / "docs" / "results" / "coco_scale_memory.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    for k, v in memory_ratios(res).items():
        print(f"ratio {k} = {v}")


def memory_ratios(res: list[dict[str, Any]]) -> dict[str, float]:
    """Peak RSS of the big run / the run on a tenth of the images (goal <= 1.5)."""
    out = {}
    for kind in ("eval", "segment"):
        runs = [r for r in res if r["step"].startswith(f"{kind} ") and r["step"].endswith(" images")]
        if len(runs) == 2 and runs[1]["peak_rss_mb"]:
            out[f"peak RSS {runs[0]['step']} / {runs[1]['step']}"] = round(
                runs[0]["peak_rss_mb"] / runs[1]["peak_rss_mb"], 3
            )
    return out


def table(result: dict[str, Any]) -> str:
    rows = ["| step | wall s | start-up s | peak RSS MB | files | notes |", "|---|---:|---:|---:|---:|---|"]
    for r in result["results"]:
        notes = []
        for key in (
            "open_store_s",
            "loader_init_s",
            "epoch_plan_s",
            "resume_position_200k_steps_s",
            "images",
            "steps",
            "samples_per_s",
            "variants",
            "ranks",
            "killed_at_s",
            "done_before",
            "redone",
            "metrics_lines_before",
        ):
            if r.get(key) is not None:
                v = r[key]
                notes.append(f"{key} {v:.0f}" if isinstance(v, float) else f"{key} {v}")
        if r["exit_code"] != 0 and "killed_at_s" not in r:
            notes.append(f"FAILED (exit {r['exit_code']})")
        rows.append(
            f"| {r['step']} | {r['wall_s']} | {r['startup_s'] if r['startup_s'] is not None else '-'} | "
            f"{r['peak_rss_mb']} | {r['files'] if r['files'] is not None else '-'} | {', '.join(notes)} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
