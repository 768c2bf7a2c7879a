"""Which training option makes the slot count follow the object count (docs/adaptive.md#measurements).

On the demo's shapes (1-6 objects, 64 px, the demo's data generation and encoder): a stage-1 sweep (K = 8,
--seeds) as the demo trains stage 1, then stage-2 sweeps warm-started from the stage-1 run of the same seed
(`--warmstart auto`), one per method below, each recording the demo's merge threshold (0.12) as its
inference method; then every run is scored with its own method and again with merging off
(`--score-method merge_slots=0`). Writes OUT/adaptive.json and, with --json, that file too: per method the
mean and sample std over seeds of FG-ARI, mBO^i, segments (kept slots after merging), r(segments, objects),
split and merge rates, with and without merging.

    python benchmarks/adaptive_count.py [--out cache/adaptive] [--stage1-steps 2200] [--stage2-steps 500] \
        [--seeds 1,2] [--jobs 2] [--json docs/results/adaptive.json] [--from-shipped] [--methods 0,1]

--from-shipped skips stage 1: stage 2 starts from the shipped demo checkpoint without its score network (one
starting point for every seed; for a machine too busy for a stage-1 sweep).

A rerun resumes: finished runs are not trained again (the sweeps resume), scores are recomputed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MERGE = "0.12"  # SOLV's threshold, the demo's (docs/method.md#slot-merging)
# method name -> the stage-2 sweep flags that make it (all record --merge-slots MERGE)
METHODS = {
    "reference (AdaSlot 0.1)": ["--grid", "sparsity_weight=0.1"],
    "merging in training": ["--grid", "model.merge_in_training=true"],
    "re-assignment of kept slots": ["--grid", "model.reassign_kept=true"],
    "quadratic term (1.0, bias 0.5)": ["--grid", "quadratic_weight=1.0"],
    "sparsity 1.0 ramped over half of stage 2": ["--grid", "sparsity_weight=1.0", "--grid",
                                                 "sparsity_ramp=HALF"],
    "sparsity 0.5": ["--grid", "sparsity_weight=0.5"],
    "score net with context, sparsity 0.5": ["--grid", "sparsity_weight=0.5", "--grid",
                                             "model.selector_context=true"],
}
KEYS = ("fg_ari", "mbo_i", "mean_kept_slots", "kept_vs_objects_r", "split_rate", "merge_rate", "mean_objects")


def cli(*args: str) -> None:
    cmd = [sys.executable, str(REPO / "cli.py"), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


def prepare(out: Path) -> tuple[Path, Path]:
    """The demo's data (seed 0) and its train (image + flip) and val feature stores, made once."""
    from adaslot.config import CacheConfig, DataSpec, get_preset
    from adaslot.config.demo import demo_data
    from adaslot.data.make_synthetic import run_make_synthetic
    from adaslot.store.writer import run_cache_features

    data, train, val = out / "data", out / "features" / "train.zarr", out / "features" / "val.zarr"
    if not (data / "annotations" / "instances_val2017.json").is_file():
        run_make_synthetic(demo_data().replace(out=str(data), seed=0, overwrite=True, progress=False))
    encoder = get_preset("demo").encoder
    for store, split, views in ((train, "train", 2), (val, "val", 1)):
        if not (store / "zarr.json").is_file():
            run_cache_features(CacheConfig(out=str(store), data=DataSpec(root=str(data), split=split),
                                       encoder=encoder, image_size=64, views=views, batch_size=256, workers=0,
                                       device="cpu", chunk_samples=64, shard_samples=512, overwrite=True,
                                       progress=False))
    return train, val


def summarise(runs_dir: Path, prefix: str) -> dict[str, dict[str, float]]:
    """score.json of the runs whose folder name starts with `prefix` -> {metric: mean, metric_std: std}"""
    scores = [json.loads((d / "score.json").read_text())["eval"]
              for d in sorted(runs_dir.iterdir())
              if d.name.startswith(prefix) and (d / "score.json").is_file()]
    out: dict[str, float] = {"seeds": len(scores)}
    for k in KEYS:
        values = [s[k] for s in scores if isinstance(s.get(k), int | float) and s[k] == s[k]]
        if values:
            out[k] = statistics.fmean(values)
            out[f"{k}_std"] = statistics.stdev(values) if len(values) > 1 else float("nan")
    return out


def shipped_as_stage1(out: Path) -> Path:
    """The shipped demo checkpoint without its score network, as a stage-1 checkpoint (a stand-in for a
    stage-1 run when the machine cannot afford one: its slot attention and decoder are trained)."""
    from adaslot import DEMO_CHECKPOINT
    from adaslot.checkpoint import load_checkpoint, save_checkpoint

    path = out / "start-stage1.pt"
    if not path.is_file():
        payload = load_checkpoint(DEMO_CHECKPOINT)
        payload["stage"] = 1
        payload["model_config"] = {**payload["model_config"], "adaptive": False, "merge_slots": 0.0}
        payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith("selector.")}
        save_checkpoint(path, payload)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="cache/adaptive")
    ap.add_argument("--stage1-steps", type=int, default=2200)
    ap.add_argument("--stage2-steps", type=int, default=500)
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here (docs/results/adaptive.json)")
    ap.add_argument("--methods", default=None, help="comma list of method indices to run (default: all)")
    ap.add_argument("--from-shipped", action="store_true",
                    help="warm-start stage 2 from the shipped checkpoint made stage-1 (no stage-1 sweep)")
    a = ap.parse_args()
    out = Path(a.out)
    t0 = time.perf_counter()
    train, val = prepare(out)
    # the demo's stage-1 training (docs/method.md#demo): batch 32, lr 2e-3, 200 warm-up steps
    base = ["--preset", "demo", "--from-cache", str(train), "--val-from-cache", str(val), "--batch-size",
            "32", "--lr", "2e-3", "--warmup-steps", "200", "--cache-in-memory", "--num-slots", "8", "--seeds",
            a.seeds, "--jobs", str(a.jobs), "--threads", "1", "--no-progress"]
    results: dict[str, dict[str, dict[str, float]]] = {}
    if a.from_shipped:
        start = ["--warmstart", str(shipped_as_stage1(out))]
        what = "stage 2 warm-started from the shipped demo checkpoint without its score network"
    else:
        s1 = out / "s1"
        cli("sweep", "--out", str(s1), *base, "--num-iters", str(a.stage1_steps))
        start = ["--warmstart", "auto", "--stage1-sweep", str(s1)]
        what = f"stage 1 K = 8 {a.stage1_steps} steps, stage 2 warm-started from the run of the same seed"
        for scoring, extra in (("merged at 0.12", ["--score-method", f"merge_slots={MERGE}"]),
                               ("no merging", [])):
            cli("sweep", "--collect", str(s1), "--no-progress", *extra)
            results.setdefault("stage 1, K = 8", {})[scoring] = summarise(s1 / "runs", "seed=")
    chosen = list(METHODS) if a.methods is None else [list(METHODS)[int(i)] for i in a.methods.split(",")]
    for method in chosen:
        flags = [f.replace("HALF", str(a.stage2_steps // 2)) for f in METHODS[method]]
        s2 = out / "s2" / str(list(METHODS).index(method))  # one sweep folder per method
        cli("sweep", "--out", str(s2), *base, "--stage", "2", *start, "--num-iters", str(a.stage2_steps),
            "--merge-slots", MERGE, *flags)  # trains, then scores with the recorded method
        results.setdefault(method, {})["merged at 0.12"] = summarise(s2 / "runs", "")
        cli("sweep", "--collect", str(s2), "--no-progress", "--score-method", "merge_slots=0")
        results[method]["no merging"] = summarise(s2 / "runs", "")
        report = {"what": f"demo data (1-6 objects, 2000 train / 200 val images, seed 0); {what}; stage 2 "
                          f"{a.stage2_steps} steps; seeds {a.seeds}; adaslot protocol on all 200 val images; "
                          "mean and sample std over seeds; scores and rates as fractions; mean_kept_slots = "
                          "segments (kept slots after merging)",
                  "command": "python benchmarks/adaptive_count.py " + " ".join(sys.argv[1:]),
                  "seconds": round(time.perf_counter() - t0), "methods": results}
        text = json.dumps(report, indent=2) + "\n"
        (out / "adaptive.json").write_text(text)  # after every method: a stopped run keeps what it measured
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
