"""Issue 5 / loader benchmark: samples/s of the store loader (streaming and in-memory) against random
per-sample gathers, on a COCO-shaped store (T=196, D=768, fp16, V views) written with the writer's layout.

Compared, all yielding batches of one view per sample as float16 [B, T, D]:
  streaming  FeatureLoader: chunk-order shuffle + shuffle buffer, whole-chunk reads in background threads
  in-memory  FeatureLoader(in_memory=True): uniform permutation over rows held in RAM (load time reported)
  oindex     random batch gathers `features.oindex[sorted random rows, view]` on the sharded zarr array
  per-sample one `features[row, view]` read per sample (what a map-style Dataset would do)
The store is freshly written, so reads mostly hit the OS page cache: this measures the CPU cost of each
access pattern, the part a faster disk does not remove.

    .venv/bin/python benchmarks/loader_throughput.py [--samples 1024] [--views 2] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import zarr

from adaslot.config import CacheConfig
from adaslot.store import STATUS_OK, open_store
from adaslot.store.loader import FeatureLoader
from adaslot.store.writer import _prepare_store


def write_store(path: str, n: int, views: int, chunk: int, shard: int) -> None:
    t, d = 196, 768
    settings = {"feature_contract": {"encoder": "bench", "feature_dim": d, "num_tokens": t},
                "dataset": {"split": "train"}, "transform": {}, "views": ["image", "hflip"][:views],
                "layout": {"chunk_samples": chunk, "shard_samples": shard}}
    _prepare_store(CacheConfig(out=path, chunk_size=chunk, shard_size=shard), settings, np.arange(n),
                   views, t, d, source={})
    root = zarr.open_group(path, mode="r+")
    rng = np.random.default_rng(0)
    for a in range(0, n, shard):
        b = min(a + shard, n)
        root["features"][a:b] = rng.standard_normal((b - a, views, t, d), dtype=np.float32).astype(np.float16)
    root["status"][:] = STATUS_OK
    root.attrs["complete"] = True


def rate(make_batches, n_batches: int, batch: int) -> float:
    it = make_batches()
    next(it)  # start-up (thread spin-up, first chunk) is not steady-state throughput
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--shard", type=int, default=512)
    p.add_argument("--buffer", type=int, default=1024)
    p.add_argument("--gather-batches", type=int, default=4)
    args = p.parse_args()
    bs = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/bench.zarr"
        t0 = time.perf_counter()
        write_store(path, args.samples, args.views, args.chunk, args.shard)
        size = args.samples * args.views * 196 * 768 * 2
        print(f"store: {args.samples} samples x {args.views} views x 196 x 768 fp16 = {size / 2**20:.0f} MiB,"
              f" chunks {args.chunk}, shards {args.shard} (written in {time.perf_counter() - t0:.1f} s)")
        n_batches = 2 * args.samples // bs  # two epochs

        def streaming():
            return iter(FeatureLoader(path, bs, seed=0, shuffle_buffer=args.buffer))

        t0 = time.perf_counter()
        mem_loader = FeatureLoader(path, bs, seed=0, in_memory=True)
        load_s = time.perf_counter() - t0

        store = open_store(path)
        rng = np.random.default_rng(0)

        def oindex():
            while True:
                rows = np.sort(rng.choice(args.samples, bs, replace=False))
                yield store.features.oindex[rows, int(rng.integers(args.views))]

        def per_sample():
            while True:
                rows = rng.choice(args.samples, bs, replace=False)
                yield np.stack([np.asarray(store.features[int(r), int(rng.integers(args.views))])
                                for r in rows])

        results = {
            "streaming (chunk shuffle + buffer)": rate(streaming, n_batches, bs),
            "in-memory (uniform permutation)": rate(lambda: iter(mem_loader), n_batches, bs),
            "random gathers (oindex, per batch)": rate(oindex, args.gather_batches, bs),
            "random per-sample reads": rate(per_sample, args.gather_batches, bs),
        }
        mem_loader.close()
        for name, r in results.items():
            print(f"{name:36s} {r:10.0f} samples/s")
        print(f"in-memory load time: {load_s:.1f} s")
        g = results["random gathers (oindex, per batch)"]
        print(f"ratio streaming / random gathers = {results['streaming (chunk shuffle + buffer)'] / g:.1f}; "
              f"in-memory / random gathers = {results['in-memory (uniform permutation)'] / g:.1f}")


if __name__ == "__main__":
    main()
