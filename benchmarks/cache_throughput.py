"""`cache-features` images/s divided by a bare encoder loop on preloaded batches.

The bare loop is the cost floor: the same encoder on the same images, already decoded, resized and batched in
RAM, with nothing else (no decode, no store, no writer). cache-features does the whole job (dataset index,
DataLoader decode/resize workers, encoder, fp16 conversion, writer thread, zarr shards, completion flags),
timed end to end inside the process (library call; Python/torch import time excluded). Runs alternate
(bare, cache, bare, cache, ...) and the ratio uses the medians, to damp noise from other load on the machine.
Goal >= 0.9. On a shared machine the wall-clock rates swing with other load, so the CPU seconds per image
(this process + its decode workers) are printed too: a load-independent view of the pipeline's own overhead.

The chunk checksums' cost (goal < 5 %): cache-features with / without them (end to end, alternating), and
the shard writer alone with / without them on ViT-B-sized shards, which is what bounds cache-features when
the encoder is much faster than here (a GPU).

    .venv/bin/python benchmarks/cache_throughput.py [--images 96] [--batch-size 16] [--repeats 3]
        [--encoder random-vit-tiny] [--side 224] [--workers 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from _timing import alternate

from adaslot.config import CacheConfig, DataSpec
from adaslot.data.coco import CocoDataset
from adaslot.data.make_synthetic import run_make_synthetic
from adaslot.data.synthetic import SyntheticConfig
from adaslot.encoders import build_encoder
from adaslot.store import layout
from adaslot.store.shardfile import direct_features, write_shard
from adaslot.store.writer import run_cache_features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--encoder", default="random-vit-tiny")
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        run_make_synthetic(SyntheticConfig(out=f"{tmp}/coco", num_train=1, num_val=args.images,
                                           image_size=256, seed=0, progress=False))
        enc = build_encoder(args.encoder, device=device)
        ds = CocoDataset.from_root(f"{tmp}/coco", "val", size=args.side, views=1)
        images = torch.stack([ds[i]["image"] for i in range(len(ds))]).to(device)
        batches = list(images.split(args.batch_size))
        enc(batches[0])  # warm-up (first call allocates)

        def cpu_seconds() -> float:
            me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

        cpu: dict[str, list[float]] = {"bare": [], "cache": [], "cache without checksums": [],
                                       "writer True": [], "writer False": []}

        def bare() -> float:
            c0 = cpu_seconds()
            t = time.perf_counter()
            for b in batches:
                f = enc(b).to(torch.float16).cpu()  # the same fp16 result the cache keeps
            del f
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            cpu["bare"].append((cpu_seconds() - c0) / len(images))
            return len(images) / dt

        def cache(checksums: bool = True) -> float:
            layout.CHECKSUMS = checksums
            out = f"{tmp}/store.zarr"
            shutil.rmtree(out, ignore_errors=True)
            cfg = CacheConfig(out=out, data=DataSpec(root=f"{tmp}/coco", split="val"), encoder=args.encoder,
                              image_size=args.side, batch_size=args.batch_size, workers=args.workers,
                              device=args.device, chunk_samples=8, shard_samples=16, progress=False)
            c0 = cpu_seconds()
            t = time.perf_counter()
            s = run_cache_features(cfg)
            dt = time.perf_counter() - t
            key = "cache" if checksums else "cache without checksums"
            cpu[key].append((cpu_seconds() - c0) / len(images))
            assert s["images_written"] == len(images)
            return len(images) / dt

        def writer(checksums: bool) -> Callable[[], float]:
            """The shard writer alone (what bounds cache-features when the encoder is fast, e.g. on a GPU):
            ViT-B-sized shards (512 samples x 2 views x 196 x 768 fp16) written by the direct shard writer
            (adaslot/store/shardfile.py) -> samples/s."""
            data = np.random.default_rng(0).standard_normal((512, 2, 196, 768), np.float32).astype(np.float16)

            def run() -> float:
                import zarr

                layout.CHECKSUMS = checksums
                shutil.rmtree(f"{tmp}/w.zarr", ignore_errors=True)
                root = zarr.open_group(f"{tmp}/w.zarr", mode="w")
                layout.create_arrays(root, np.arange(1024), 2, 196, 768, 512)
                direct = direct_features(root, f"{tmp}/w.zarr")  # what cache-features writes shards with
                c0, t = cpu_seconds(), time.perf_counter()
                write_shard(direct, 0, data)
                write_shard(direct, 1, data)
                dt = time.perf_counter() - t
                cpu[f"writer {checksums}"].append((cpu_seconds() - c0) / 1024)
                return 1024 / dt

            return run

        bare_rates, cache_rates = alternate(bare, cache, args.repeats, warmup=False)
        b, c = statistics.median(bare_rates), statistics.median(cache_rates)
        cb, cc = statistics.median(cpu["bare"]), statistics.median(cpu["cache"])
        crc_rates, plain_rates = alternate(cache, lambda: cache(False), args.repeats, warmup=False)
        with_crc, without = writer(True), writer(False)
        with_crc(), without()  # warm-up (imports, first allocations), not counted
        cpu["writer True"].clear(), cpu["writer False"].clear()
        w_crc, w_plain = alternate(with_crc, without, args.repeats, warmup=False)
        layout.CHECKSUMS = True
        print(f"encoder {args.encoder} at {args.side}px on {device}, {len(images)} images, batch "
              f"{args.batch_size}, {args.workers} decode worker(s), torch threads {torch.get_num_threads()}")
        print(f"bare encoder loop (preloaded batches): {b:8.2f} images/s  (runs: "
              f"{', '.join(f'{x:.2f}' for x in bare_rates)})")
        print(f"cache-features (end to end):           {c:8.2f} images/s  (runs: "
              f"{', '.join(f'{x:.2f}' for x in cache_rates)})")
        print(f"CPU seconds per image (process + decode workers): bare {cb:.3f}, cache-features {cc:.3f} "
              f"-> CPU-cost ratio bare / cache-features = {cb / cc:.3f}")
        print(f"ratio cache-features / bare encoder = {c / b:.3f}")
        x, y = statistics.median(crc_rates), statistics.median(plain_rates)
        print(f"cache-features with / without chunk checksums: {x:.2f} / {y:.2f} images/s (runs: "
              f"{', '.join(f'{u:.2f}' for u in crc_rates)} / {', '.join(f'{u:.2f}' for u in plain_rates)})")
        print(f"ratio cache-features with / without checksums = {x / y:.3f} (cost {100 * (1 - x / y):.1f} %, "
              f"wall clock)")
        u = statistics.median(cpu["cache"][-args.repeats:])  # the runs alternating with the ones without
        w = statistics.median(cpu["cache without checksums"])
        print(f"ratio CPU seconds per image without / with checksums (load-independent) = {w / u:.3f} "
              f"({w:.3f} vs {u:.3f} s)")
        x, y = statistics.median(w_crc), statistics.median(w_plain)
        print(f"ratio shard writer alone with / without checksums (ViT-B-sized shards) = {x / y:.3f} "
              f"({x:.0f} vs {y:.0f} samples/s; cost {100 * (1 - x / y):.1f} %)")
        u, w = statistics.median(cpu["writer True"]), statistics.median(cpu["writer False"])
        print(f"ratio shard writer CPU seconds per sample without / with checksums = {w / u:.3f} "
              f"({1e3 * w:.2f} vs {1e3 * u:.2f} ms)")


if __name__ == "__main__":
    main()
