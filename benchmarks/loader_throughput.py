"""Loader benchmark: streaming samples/s from a ViT-B-sized store (T=196, D=768, fp16, 2 views) in the page
cache, against the plain-file-read ceiling, other readers of the same zarr v3 store, and the H100 estimate.

All rows yield batches of one view per sample, float16 [B, T, D], in the loader's shuffled order:
  ceiling          plain sequential read of the shard files (4 MiB preads, no parsing, 1 and 2 threads):
                   bytes/s divided by one view's bytes = the samples/s a reader of exactly one view per
                   sample could at best reach
  adaslot          FeatureLoader streaming (format 2: one checksummed chunk per sample view, read directly
                   from the shard files), 1 and 2 reader threads, recycled batch buffers (as training uses
                   it: pinned staging buffers on CUDA); bytes read per sample from /proc/self/io
  no checksum      the same without checking the crc32c trailers: the checksum's cost
  tensorstore      the same loader with each batch read by tensorstore (`vindex`, its own thread pools)
  zarr-python      the same loader with each batch read through zarr-python
  format 1 + zarr  what the loader did before format 2: whole chunks of 64 samples x 2 views through
                   zarr-python, one view of each sample used
Each row is run `--repeats` times, interleaved with the others, and its median is printed. The machine may be
shared: "per CPU-s" (samples per CPU-second of this process, all threads) is the load-independent cost.

    .venv/bin/python benchmarks/loader_throughput.py [--samples 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from adaslot.store import STATUS_OK, open_store
from adaslot.store.loader import FeatureLoader

T, D, VIEWS = 196, 768, 2
H100 = 4700  # samples/s one H100 consumes on the reference model (README "Benchmarks", estimated)


def write_store(path: str, n: int, block: int, shard: int, version: int) -> None:
    """A store with the writer's arrays and attributes; format 1 = the old layout (chunks of all views)."""
    import zarr

    from adaslot.store.shards import create_features

    root = zarr.open_group(path, mode="w")
    if version == 2:
        create_features(root, n, VIEWS, T, D, shard)
    else:
        root.create_array("features", shape=(n, VIEWS, T, D), dtype="float16", chunks=(block, VIEWS, T, D),
                          shards=(shard, VIEWS, T, D), compressors=None, fill_value=0)
    root.create_array("image_ids", data=np.arange(n, dtype=np.int64), chunks=(n,), compressors=None)
    root.create_array("status", data=np.full(n, STATUS_OK, np.uint8), chunks=(shard,), compressors=None)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((shard, VIEWS, T, D), dtype=np.float32).astype(np.float16)
    for a in range(0, n, shard):
        root["features"][a:a + shard] = data[:n - a]
    root.attrs.update({"format": "adaslot-feature-store", "format_version": version, "complete": True,
                       "views": ["image", "hflip"], "layout": {"chunk_samples": block, "shard_samples": shard},
                       "dataset": {"split": "train"}})


def rchar() -> int:
    """Bytes this process has read through read()/pread() so far (page-cache hits included)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return r.ru_utime + r.ru_stime


def rate(batches: Iterator[Any], n_batches: int, batch: int) -> tuple[float, float, float]:
    """-> (samples/s, bytes read per sample, samples per CPU-second) after one untimed batch (start-up)."""
    next(batches)
    r0, c0, t = rchar(), cpu_seconds(), time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    dt, cpu = time.perf_counter() - t, cpu_seconds() - c0
    n = n_batches * batch
    return n / dt, (rchar() - r0) / n, n / cpu


def plain_read(path: str, threads: int, batch_bytes: int) -> Callable[[], float]:
    """Sequential read of all shard files in 4 MiB preads into a reused batch-sized buffer -> bytes/s.

    4 MiB was the fastest read size here (64 MiB reads run at a third of the speed: the destination no
    longer stays in the CPU caches); the buffer has the size of one loader batch, as the loader's."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    files = sorted(str(p) for p in Path(path, "features", "c").rglob("*") if p.is_file())
    step = 4 << 20

    def one(f: str) -> int:
        buf = np.empty(max(batch_bytes // step, 1) * step, np.uint8)
        slots = buf.size // step
        fd, off, k = os.open(f, os.O_RDONLY), 0, 0
        while got := os.preadv(fd, [buf[(k % slots) * step:(k % slots + 1) * step]], off):
            off, k = off + got, k + 1
        os.close(fd)
        return off

    def run() -> float:
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(one, files))
        return total / (time.perf_counter() - t)

    return run


def tensorstore_reader(path: str, concurrency: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    import tensorstore as ts

    ctx = ts.Context({"cache_pool": {"total_bytes_limit": 0}, "data_copy_concurrency": {"limit": concurrency},
                      "file_io_concurrency": {"limit": concurrency}})
    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{path}/features/"}},
                  context=ctx, read=True).result()

    def read_views(rows: np.ndarray, views: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        data = arr.vindex[rows, views].read().result()
        if out is None:
            return data
        out[...] = data
        return out

    return read_views


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk", type=int, default=64, help="loader block (format 1: zarr chunk) in samples")
    p.add_argument("--shard", type=int, default=512)
    p.add_argument("--buffer", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slow-batches", type=int, default=4, help="batches timed for the slow zarr-python rows")
    args = p.parse_args()
    bs, n = args.batch_size, args.samples
    view_bytes = T * D * 2
    with tempfile.TemporaryDirectory(dir=os.environ.get("ADASLOT_BENCH_DIR")) as tmp:
        v2, v1 = f"{tmp}/v2.zarr", f"{tmp}/v1.zarr"
        t0 = time.perf_counter()
        write_store(v2, n, args.chunk, args.shard, 2)
        write_store(v1, n, args.chunk, args.shard, 1)
        size = n * VIEWS * view_bytes
        print(f"stores: {n} samples x {VIEWS} views x {T} x {D} fp16 = {size / 2**30:.2f} GiB each (format 2 and"
              f" format 1), blocks of {args.chunk}, shards of {args.shard}, batch {bs}, buffer {args.buffer}"
              f" (written in {time.perf_counter() - t0:.0f} s; read from the page cache)")
        n_batches = 2 * n // bs  # two epochs per timed run

        def loader(path: str, readers: int, setup: Callable[[Any], None] | None = None,
                   batches: int = n_batches) -> Callable[[], tuple[float, float]]:
            def run() -> tuple[float, float]:
                ld = FeatureLoader(path, bs, seed=0, shuffle_buffer=args.buffer, readers=readers,
                                   reuse_buffers=True)
                if setup:
                    setup(ld.store)
                try:
                    return rate(ld, batches, bs)
                finally:
                    ld.close()
            return run

        def no_crc(store: Any) -> None:
            store.direct.verify = False

        def via_zarr(store: Any) -> None:
            store.direct = None

        def via_ts(k: int) -> Callable[[Any], None]:
            def setup(store: Any) -> None:
                store.read_views = tensorstore_reader(v2, k)
            return setup

        def old_whole_chunks() -> tuple[float, float]:
            """Format 1 through zarr-python, whole chunks (both views) in a shuffled chunk order."""
            st = open_store(v1)
            order = np.random.default_rng(0).permutation(len(st.chunk_bounds()))[:args.slow_batches * 2]
            r0, c0, t = rchar(), cpu_seconds(), time.perf_counter()
            for c in order:
                a, b = st.chunk_bounds()[c]
                np.asarray(st.features[a:b])
            dt, cpu = time.perf_counter() - t, cpu_seconds() - c0
            used = len(order) * args.chunk
            return used / dt, (rchar() - r0) / used, used / cpu

        rows: dict[str, Callable[[], Any]] = {
            "ceiling: plain sequential read, 1 thread": plain_read(v2, 1, bs * view_bytes),
            "ceiling: plain sequential read, 2 threads": plain_read(v2, 2, bs * view_bytes),
            "adaslot, 1 reader thread": loader(v2, 1),
            "adaslot, 2 reader threads": loader(v2, 2),
            "adaslot, 1 reader, no checksum": loader(v2, 1, no_crc),
            "adaslot, 2 readers, no checksum": loader(v2, 2, no_crc),
            "adaslot on a format-1 store, 2 readers": loader(v1, 2),
            "tensorstore, concurrency 1": loader(v2, 1, via_ts(1)),
            "tensorstore, concurrency 2": loader(v2, 1, via_ts(2)),
            "tensorstore, concurrency 4": loader(v2, 1, via_ts(4)),
            "zarr-python, 2 reader threads": loader(v2, 2, via_zarr, args.slow_batches),
            "format 1 + zarr-python whole chunks": old_whole_chunks,
        }
        results: dict[str, list[Any]] = {k: [] for k in rows}
        for _ in range(args.repeats):
            for name, fn in rows.items():
                results[name].append(fn())

        def med(name: str) -> float:
            r = results[name]
            return statistics.median(x[0] if isinstance(x, tuple) else x / view_bytes for x in r)

        print(f"{'reader':44s} {'samples/s':>10s} {'x H100':>7s} {'KB/sample':>10s} {'per CPU-s':>10s}   runs")
        for name, r in results.items():
            per = [x[0] if isinstance(x, tuple) else x / view_bytes for x in r]
            kb, cpu = (view_bytes, "") if not isinstance(r[0], tuple) else (
                statistics.median(x[1] for x in r), f"{statistics.median(x[2] for x in r):10.0f}")
            print(f"{name:44s} {med(name):10.0f} {med(name) / H100:7.2f} {kb / 1000:10.0f} {cpu:>10s}   "
                  f"{', '.join(f'{x:.0f}' for x in per)}")
        for k, label in ((1, "1 reader thread"), (2, "2 reader threads")):
            a, ceiling = med(f"adaslot, {label}"), med(f"ceiling: plain sequential read, {k} thread{'s' * (k > 1)}")
            print(f"ratio streaming ({label}) / H100 estimate {H100} samples/s = {a / H100:.2f}; "
                  f"/ plain-read ceiling ({k} thread{'s' * (k > 1)}) = {a / ceiling:.2f}")
        best_ts = max(med(f"tensorstore, concurrency {k}") for k in (1, 2, 4))
        print(f"ratio adaslot (2 readers) / best tensorstore = {med('adaslot, 2 reader threads') / best_ts:.2f}; "
              f"/ zarr-python = {med('adaslot, 2 reader threads') / med('zarr-python, 2 reader threads'):.1f}; "
              f"/ format 1 + zarr-python whole chunks = "
              f"{med('adaslot, 2 reader threads') / med('format 1 + zarr-python whole chunks'):.1f}")
        for label, a, b in (("1 reader", "adaslot, 1 reader thread", "adaslot, 1 reader, no checksum"),
                            ("2 readers", "adaslot, 2 reader threads", "adaslot, 2 readers, no checksum")):
            print(f"ratio streaming with / without checksums ({label}) = {med(a) / med(b):.3f} "
                  f"(cost {100 * (1 - med(a) / med(b)):.1f} %)")


if __name__ == "__main__":
    main()
