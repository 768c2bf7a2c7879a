"""COCO-cardinality rehearsal: every command at COCO's N (118 287 train / 5 000 val images) on small images.

Same N, same shard count (232 shards of 512), same steps per epoch as COCO, with 64-px synthetic images
(`make-synthetic`) and the demo's encoder (demo-colour-pos, 64 tokens x 128) so it runs on a CPU. Each step
is the real command (`cli.py ...` in its own process) and is measured from outside (rehearsal/measure.py):
  wall_s      command start to exit
  startup_s   command start to its first unit of work, seen on disk: the first shard file (cache-features),
              the first metrics line (train, log every step), the first mask PNG (eval --save-masks), the
              first done.jsonl line (segment), the first run folder with metrics (sweep); the loader reports
              its own time to the first batch. Resolution ~0.05 s.
  peak_rss_mb the process's peak resident memory, its waited-for children included (os.wait4)
  files       files the command left in its output folder
Steps (rehearsal/steps.py): make-synthetic; cache-features (train, 2 views; val, 1 view); the loader over a
full epoch; stage 1 for --steps steps; the same run SIGKILLed mid-epoch and resumed; eval on all val images
and on 1/10 of them (memory ratio); `segment --save-slots` on --segment images and on 1/10 of them, then a
segment run killed halfway and resumed (it must not redo finished images); a sweep of 8 variants; DDP with 4
gloo ranks from the store. Results: --json (docs/results/coco_scale_steps.json) and a markdown table (--md),
both rewritten after every step, so a run stopped early keeps what it measured ("finished": false).

    python benchmarks/coco_scale.py [--quick] [--scale 1.0] [--work cache/coco_scale] [--keep-data]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rehearsal import steps
from rehearsal.measure import ROOT, lines, run
from rehearsal.report import Results, memory_ratios, refresh, table
from rehearsal.steps import COCO_TRAIN, COCO_VAL, SHARD

__all__ = ["lines", "memory_ratios", "run", "table"]  # what tests/test_coco_scale.py uses


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
    p.add_argument("--synthetic-workers", type=int, default=2, help="make-synthetic --workers")
    p.add_argument("--work", default=str(ROOT / "cache" / "coco_scale"))
    p.add_argument("--keep-data", action="store_true", help="reuse WORK/data if it has the right size")
    p.add_argument(
        "--memory",
        default=None,
        metavar="CKPT",
        help="only the eval / segment memory runs at --val / --segment images, with this checkpoint "
        "(writes WORK/memory-data and docs/results/coco_scale_memory.json)",
    )
    p.add_argument(
        "--early-checkpoint",
        default=None,
        metavar="CKPT",
        help="run eval and segment (and segment's kill / resume) right after make-synthetic with this "
        "checkpoint (a demo-preset model on the same encoder, e.g. from a --quick run), so they are measured "
        "even when the cache pass does not finish in the time there is",
    )
    p.add_argument("--refresh", default=None, metavar="JSON", help="only add notes to an older results file")
    p.add_argument("--json", default=None, help="default docs/results/coco_scale_steps.json (quick: WORK/)")
    p.add_argument("--md", default=None, help="markdown table (default: beside --json)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.refresh:
        print(table(refresh(Path(args.refresh))))
        return
    if args.quick:
        n_train, n_val, n_steps, n_seg, ranks, variants_steps = 700, 60, 12, 120, 2, 3
    else:
        small = min(1.0, args.scale * 10)
        n_train = round(COCO_TRAIN * args.scale)
        n_val = args.val or round(COCO_VAL * small)
        n_seg = args.segment or round(20_000 * small)
        n_steps, ranks, variants_steps = args.steps, args.ranks, 20
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.memory:
        memory_only(args, work, n_val, n_seg)
        return
    json_path = Path(
        args.json
        or (work / "coco_scale.json" if args.quick else ROOT / "docs" / "results" / "coco_scale_steps.json")
    )
    meta = {
        "train_images": n_train,
        "val_images": n_val,
        "segment_images": n_seg,
        "shards": -(-n_train // SHARD),
        "scale": args.scale if not args.quick else "quick",
        "steps": n_steps,
        "early_checkpoint": args.early_checkpoint,
    }
    res = Results(json_path, Path(args.md or json_path.with_suffix(".md")), meta)
    print(
        f"coco_scale: {n_train} train / {n_val} val images, {meta['shards']} shards, work {work}", flush=True
    )
    data, store, val_store = work / "data", work / "train.zarr", work / "val.zarr"

    steps.import_floor(res)
    steps.store_index(work, res)
    marker = work / "data.json"
    want = {"train": n_train, "val": n_val, "side": 64}
    if not (args.keep_data and marker.is_file() and json.loads(marker.read_text()) == want):
        steps.make_synthetic(data, n_train, n_val, args.synthetic_workers, res)
        marker.write_text(json.dumps(want))
    steps.dataset_index(data, res)
    if args.early_checkpoint:
        eval_and_segment(work, data, Path(args.early_checkpoint), n_val, n_seg, res)
    steps.cache_features(data, "train", store, 2, n_train, res)
    steps.cache_features(data, "val", val_store, 1, n_val, res)
    steps.loader_epoch(store, res)
    ckpt = steps.train(work, store, n_steps, res)
    if not args.early_checkpoint:
        eval_and_segment(work, data, ckpt, n_val, n_seg, res)
    steps.sweep(work, store, val_store, variants_steps, res)
    steps.ddp(work, store, max(4, n_steps // 10), ranks, res)

    result = res.save(finished=True)
    print(table(result))
    for k, v in memory_ratios(res.steps).items():
        print(f"ratio {k} = {v}")
    print(f"wrote {json_path} and {res.md_path} ({result['total_s']:.0f} s in all)")
    if res.failed():
        sys.exit("coco_scale: a step failed (see the errors above)")


def eval_and_segment(work: Path, data: Path, ckpt: Path, n_val: int, n_seg: int, res: Results) -> None:
    """eval and segment at two sizes (memory ratios), then segment killed halfway and resumed."""
    image_folder = steps.memory_steps(work, data, ckpt, n_val, n_seg, res)
    steps.segment_kill_resume(work, ckpt, image_folder(n_seg), n_seg, res)


def memory_only(args: argparse.Namespace, work: Path, n_val: int, n_seg: int) -> None:
    """--memory CKPT: make n_seg train / n_val val images, then only the memory steps."""
    out = Path(args.json or ROOT / "docs" / "results" / "coco_scale_memory.json")
    res = Results(out, None, {"val_images": n_val, "segment_images": n_seg})
    data = work / "memory-data"
    steps.make_synthetic(data, n_seg, n_val, args.synthetic_workers, res)
    steps.memory_steps(work, data, Path(args.memory), n_val, n_seg, res)
    result = res.save(finished=True)
    print(table(result))
    for k, v in memory_ratios(res.steps).items():
        print(f"ratio {k} = {v}")


if __name__ == "__main__":
    main()
