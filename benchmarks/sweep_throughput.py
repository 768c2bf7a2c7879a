"""`adaslot sweep --jobs 2` against the same runs as separate `adaslot train` commands, one after another.

Four demo-size variants (preset demo, grid num_slots=4,6 x model.decoder_hidden=64x64,128x128, one seed,
batch 32, streaming from a store of the demo's shapes, --steps steps each). The plain way runs the four
commands `adaslot sweep --print-commands` prints, one after another, each with torch's default threads; the
sweep runs them in --jobs worker processes of 1 thread each, the variants of a worker stepping in lockstep on
one loader, and then also scores every variant on --score-images val images and draws its plots (the plain
way does neither, so the ratio is conservative). Both are timed end to end as processes (start-up included);
the sweep runs before and after the plain commands and its mean time counts.
The plain commands run twice: with torch's default threads (the plain way: their `--threads 1`, which the
sweep prints so that a command repeats its variant bit for bit, is dropped) and as printed, at 1 thread (the
sweep workers' count; then equal losses show they are the same runs).

Store bytes read per variant-step: /proc/self/io read bytes (rchar) of this process over --io-steps steps,
for one `run_train()` run and for one lockstep group of the sweep's worker (train_group) of the size a worker
gets here, divided by steps x runs.

    python benchmarks/sweep_throughput.py [--steps 300] [--train-images 512] [--jobs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adaslot.config import SweepConfig, from_flags
from adaslot.config.sweep import parse_grid

REPO = Path(__file__).resolve().parents[1]


def build_store(root: Path, images: int) -> Path:
    """The demo's shapes (64 px) with `images` train and 64 val images, cached as the demo caches them."""
    from adaslot.config import CacheConfig, DataSpec, demo_config, get_preset
    from adaslot.data.make_synthetic import run_make_synthetic
    from adaslot.store.writer import run_cache_features

    data = demo_config().data.replace(out=str(root / "data"), num_train=images, num_val=64, progress=False)
    run_make_synthetic(data)
    store = root / "train.zarr"
    run_cache_features(CacheConfig(out=str(store), data=DataSpec(root=str(root / "data")), views=2,
                               encoder=get_preset("demo").encoder, image_size=64, batch_size=256, workers=0,
                               device="cpu", chunk_samples=64, shard_samples=512, progress=False))
    return store


def adaslot(*args: str, threads: int | None = None) -> float:
    """Run `adaslot ARGS` as a process; returns its wall time in seconds."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        sys.exit(f"adaslot {' '.join(args[:2])} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def bytes_per_variant_step(cfg, out: Path, steps: int, group: int) -> tuple[float, float]:  # noqa: ANN001
    """(plain train, sweep lockstep group of `group` runs): store bytes read per variant-step, measured."""
    import torch

    from adaslot.sweep.worker import train_group
    from adaslot.train import run_train

    torch.set_num_threads(1)
    runs = [v.cfg.replace(num_iters=steps, out=str(out / f"io-{i}")) for i, v in enumerate(cfg.variants())]
    # warm-up: the imports and the first opening of the store are not the training's reads
    run_train(runs[0].replace(out=str(out / "io-warm"), num_iters=1))
    before = rchar()
    run_train(runs[0].replace(out=str(out / "io-plain")))
    plain = (rchar() - before) / steps
    before = rchar()
    train_group(runs[:group], "cpu")
    shared = (rchar() - before) / (steps * group)
    return plain, shared


def sweep_command(settings: dict) -> list[str]:
    """`adaslot sweep` arguments for flat settings (the sweep's, the base run's train and data settings)."""
    from adaslot.config import DataSpec, SweepConfig, TrainConfig
    from adaslot.config.base import to_flags
    from adaslot.config.sweep import PER_VARIANT

    names = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (SweepConfig, TrainConfig, DataSpec)}
    part = {cls: {k: v for k, v in settings.items() if k in names[cls]} for cls in names}
    base = TrainConfig(out=PER_VARIANT, data=DataSpec(**part[DataSpec]),
                       **{k: v for k, v in part[TrainConfig].items() if k not in names[SweepConfig]})
    return ["sweep", *to_flags(SweepConfig(base=base, **part[SweepConfig]))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per variant")
    ap.add_argument("--train-images", type=int, default=512, help="train images of the demo-shapes store")
    ap.add_argument("--jobs", type=int, default=2, help="sweep worker processes")
    ap.add_argument("--score-images", type=int, default=64, help="val images each sweep variant is scored on")
    ap.add_argument("--io-steps", type=int, default=60, help="steps of the bytes-read measurement")
    args = ap.parse_args()
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[0]} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        store = build_store(tmp_path, args.train_images)
        settings = {"out": str(tmp_path / "sweep"), "from_cache": str(store), "preset": "demo",
                    "num_iters": args.steps, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "workers": 0,
                    "val_root": str(tmp_path / "data"), "score_images": args.score_images,
                    "ckpt_every": args.steps, "grid": parse_grid(["num_slots=4,6",
                                                                  "model.decoder_hidden=64x64,128x128"]),
                    "seeds": (0,), "progress": False}
        sweep_args = sweep_command(settings)
        printed = subprocess.run([sys.executable, str(REPO / "cli.py"), *sweep_args, "--print-commands"],
                                 env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()
        assert len(printed) == 4, printed

        # the sweep before and after the plain commands (mean), so a change of machine load between the two
        # hits both sides alike; a rerun of a finished sweep would skip everything, so each one is fresh
        sweep_runs = [adaslot(*sweep_command({**settings, "out": str(tmp_path / "sweep-before")}),
                              "--jobs", str(args.jobs), "--threads", "1")]
        plain_s = {}
        for threads in (None, 1):  # torch's default (one per core), and 1 thread like a sweep worker
            plain_s[threads] = 0.0
            for i, line in enumerate(printed):
                argv = shlex.split(line)[1:]
                argv[argv.index("--out") + 1] = str(tmp_path / f"plain-{threads}" / str(i))
                if threads is None:  # the plain way: torch's default threads
                    del argv[argv.index("--threads"):argv.index("--threads") + 2]
                plain_s[threads] += adaslot(*argv, threads=threads)
            print(f"plain: 4 x `adaslot train` ({args.steps} steps each, "
                  f"{'torch default threads' if threads is None else '--threads 1'}), one after "
                  f"another: {plain_s[threads]:.1f} s")
        sweep_runs.append(adaslot(*sweep_args, "--jobs", str(args.jobs), "--threads", "1"))
        sweep_s = sum(sweep_runs) / len(sweep_runs)
        print(f"sweep: `adaslot sweep --jobs {args.jobs} --threads 1` (the same 4 runs, plus scoring on "
              f"{args.score_images} val images and the plots): {sweep_s:.1f} s (mean of "
              f"{', '.join(f'{t:.1f}' for t in sweep_runs)} s, before and after the plain commands)")

        from adaslot.train import read_metrics

        diffs = []
        for i, line in enumerate(printed):
            out = shlex.split(line)[shlex.split(line).index("--out") + 1]
            a = [r["loss"] for r in read_metrics(out) if "loss" in r]
            b = [r["loss"] for r in read_metrics(tmp_path / "plain-1" / str(i)) if "loss" in r]
            diffs.append(max(abs(x - y) for x, y in zip(a, b, strict=True)))
        print(f"same runs: max |loss difference| sweep vs plain (1 thread) over all logged steps: "
              f"{max(diffs):.2g}")

        group = 4 // min(args.jobs, 4)
        cfg = from_flags(SweepConfig, settings, SweepConfig()).validate()
        plain_b, shared_b = bytes_per_variant_step(cfg, tmp_path / "io", args.io_steps, group)
        print(f"store bytes read per variant-step (streaming, batch 32): plain train {plain_b / 1e3:.0f} kB, "
              f"sweep lockstep group of {group}: {shared_b / 1e3:.0f} kB")
        with open("/proc/loadavg") as f:
            print(f"load average after: {f.read().split()[0]}")
        print(f"ratio wall time, 4 plain train commands (default threads) / adaslot sweep --jobs "
              f"{args.jobs}: {plain_s[None] / sweep_s:.2f}x (goal >= 1.6x on 2 cores)")
        print(f"ratio wall time, 4 plain train commands (1 thread) / adaslot sweep --jobs {args.jobs}: "
              f"{plain_s[1] / sweep_s:.2f}x")
        print(f"ratio store bytes read per variant-step, plain / sweep: {plain_b / shared_b:.2f}x")


if __name__ == "__main__":
    main()
