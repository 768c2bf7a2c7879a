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
  tensorstore      the same loader with each batch read by tensorstore (`vindex`, its own thread pools;
                   concurrency 1, 2, 4; caching off), when tensorstore is installed (not a dependency)
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
from collections.abc import Callable
from typing import Any

import numpy as np

from adaslot.store import STATUS_OK, open_store
from adaslot.store.loader import FeatureLoader

T, D, VIEWS = 196, 768, 2
H100 = 4700  # samples/s one H100 consumes on the reference model (README "Benchmarks", estimated)


def write_store(path: str, n: int, block: int, shard: int, version: int) -> None:
    """A store with the writer's arrays and attributes; format 1 = the old layout (chunks of all views)."""
    import zarr

    from adaslot.store.layout import create_arrays, for_writing

    root = zarr.open_group(path, mode="w")
    if version == 2:
        create_arrays(root, np.arange(n), VIEWS, T, D, shard)
    else:
        root.create_array("features", shape=(n, VIEWS, T, D), dtype="float16", chunks=(block, VIEWS, T, D),
                          shards=(shard, VIEWS, T, D), compressors=None, fill_value=0)
        root.create_array("image_ids", data=np.arange(n, dtype=np.int64), chunks=(n,), compressors=None)
        root.create_array("status", shape=(n,), dtype="uint8", chunks=(shard,), compressors=None)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((shard, VIEWS, T, D), dtype=np.float32).astype(np.float16)
    for a in range(0, n, shard):
        for_writing(root, "features")[a:a + shard] = data[:n - a]
    for_writing(root, "status")[:] = STATUS_OK
    root.attrs.update({"format": "adaslot-feature-store", "format_version": version, "complete": True,
                       "views": ["image", "hflip"], "dataset": {"split": "train"},
                       "layout": {"chunk_samples": block, "shard_samples": shard}})


def rchar() -> int:
    """Bytes this process has read through read()/pread() so far (page-cache hits included)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return r.ru_utime + r.ru_stime


def measure(step: Callable[[], int], warmup: int = 1) -> Callable[[int], dict[str, float]]:
    """step() reads some samples and returns how many -> run(k): k timed steps after `warmup` untimed ones
    (start-up: threads, first reads, and the batches a loader reads ahead while starting)."""
    def run(k: int) -> dict[str, float]:
        for _ in range(warmup):
            step()
        r0, c0, t0 = rchar(), cpu_seconds(), time.perf_counter()
        n = sum(step() for _ in range(k))
        dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        return {"rate": n / dt, "bytes": (rchar() - r0) / n, "per_cpu": n / cpu}
    return run


def plain_read(path: str, threads: int, batch_bytes: int) -> Callable[[int], dict[str, float]]:
    """Sequential read of all shard files in 4 MiB preads into a reused batch-sized buffer, as samples of one
    view's bytes. 4 MiB was the fastest read size here (64 MiB reads ran at a third of the speed: the
    destination no longer stays in the CPU caches); the buffer has the size of one loader batch."""
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

    def run(_k: int) -> dict[str, float]:
        c0, t0 = cpu_seconds(), time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(one, files))
        n = total / (T * D * 2)
        dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        return {"rate": n / dt, "bytes": T * D * 2, "per_cpu": n / cpu}

    return run


def tensorstore_reader(path: str, concurrency: int) -> Callable[..., np.ndarray]:
    """FeatureStore.read_views done by tensorstore (vindex over (row, view) pairs), its caching off."""
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
    p.add_argument("--slow-batches", type=int, default=8, help="batches timed for the slow zarr-python rows")
    args = p.parse_args()
    bs, n = args.batch_size, args.samples
    try:  # not a dependency of adaslot: compared when installed
        import tensorstore  # noqa: F401

        has_tensorstore = True
    except ImportError:
        has_tensorstore = False
    with tempfile.TemporaryDirectory(dir=os.environ.get("ADASLOT_BENCH_DIR")) as tmp:
        v2, v1 = f"{tmp}/v2.zarr", f"{tmp}/v1.zarr"
        t0 = time.perf_counter()
        write_store(v2, n, args.chunk, args.shard, 2)
        write_store(v1, n, args.chunk, args.shard, 1)
        gib = n * VIEWS * T * D * 2 / 2**30
        print(f"stores: {n} samples x {VIEWS} views x {T} x {D} fp16 = {gib:.2f} GiB "
              f"each (format 2 and format 1), blocks of {args.chunk}, shards of {args.shard}, batch {bs}, "
              f"buffer {args.buffer} (written in {time.perf_counter() - t0:.0f} s; read from the page cache)")

        def loader(path: str, readers: int, setup: Callable[[Any], None] | None = None, **kw: Any
                   ) -> Callable[[int], dict[str, float]]:
            ld = FeatureLoader(path, bs, seed=0, shuffle_buffer=args.buffer, readers=readers,
                               reuse_buffers=True, **kw)
            if setup:
                setup(ld.store)
            timed = measure(lambda: next(ld)[1].numel(), warmup=ld.prefetch + 1)

            def run(k: int) -> dict[str, float]:
                try:
                    return timed(k)
                finally:
                    ld.close()  # no reads ahead left running into the next row's timing

            return run

        def no_crc(store: Any) -> None:
            store.direct.verify = False

        def via_zarr(store: Any) -> None:
            store.direct = None

        def via_ts(k: int) -> Callable[[Any], None]:
            def setup(store: Any) -> None:
                store.read_views = tensorstore_reader(v2, k)
            return setup

        old = open_store(v1)
        order = iter(np.random.default_rng(0).permutation(len(old.chunk_bounds())).tolist() * 1000)

        def old_chunk() -> int:
            """The loader before format 2: a whole chunk (64 samples x 2 views) through zarr-python."""
            a, b = old.chunk_bounds()[next(order)]
            np.asarray(old.features[a:b])
            return b - a

        epoch2 = 2 * n // bs  # batches in two epochs
        slow = args.slow_batches
        rows: dict[str, tuple[Callable[[int], dict[str, float]], int]] = {
            "ceiling: plain sequential read, 1 thread": (plain_read(v2, 1, bs * T * D * 2), 1),
            "ceiling: plain sequential read, 2 threads": (plain_read(v2, 2, bs * T * D * 2), 1),
            "adaslot, 1 reader thread": (loader(v2, 1), epoch2),
            "adaslot, 2 reader threads": (loader(v2, 2), epoch2),
            "adaslot, 1 reader, no checksum": (loader(v2, 1, no_crc), epoch2),
            "adaslot, 2 readers, no checksum": (loader(v2, 2, no_crc), epoch2),
            "adaslot on a format-1 store, 2 readers": (loader(v1, 2), epoch2),
            "adaslot in-memory (--cache-in-memory)": (loader(v2, 1, in_memory=True), epoch2),
            **{f"tensorstore, concurrency {k}": (loader(v2, 1, via_ts(k)), epoch2 // 4)
               for k in ((1, 2, 4) if has_tensorstore else ())},
            "zarr-python, 2 reader threads": (loader(v2, 2, via_zarr), slow),
            "format 1 + zarr-python whole chunks": (measure(old_chunk), slow),
        }
        results: dict[str, list[dict[str, float]]] = {k: [] for k in rows}
        for _ in range(args.repeats):  # interleaved, so every row sees the same mix of machine load
            for name, (run, k) in rows.items():
                results[name].append(run(k))

        def med(name: str, key: str = "rate") -> float:
            return statistics.median(r[key] for r in results[name])

        print(f"{'reader':40s} {'samples/s':>9s} {'x H100':>6s} {'KB/sample':>9s} {'per CPU-s':>9s}   runs")
        for name, rs in results.items():
            runs = ", ".join(f"{r['rate']:.0f}" for r in rs)
            print(f"{name:40s} {med(name):9.0f} {med(name) / H100:6.2f} {med(name, 'bytes') / 1000:9.0f} "
                  f"{med(name, 'per_cpu'):9.0f}   {runs}")
        for k in (1, 2):
            a = med(f"adaslot, {k} reader thread{'s' * (k > 1)}")
            c = med(f"ceiling: plain sequential read, {k} thread{'s' * (k > 1)}")
            print(f"ratio streaming ({k} reader thread{'s' * (k > 1)}) / H100 estimate {H100} samples/s = "
                  f"{a / H100:.2f}; / plain-read ceiling ({k} thread{'s' * (k > 1)}) = {a / c:.2f}")
        best = max(med("adaslot, 1 reader thread"), med("adaslot, 2 reader threads"))
        if has_tensorstore:
            ts = max(med(f"tensorstore, concurrency {k}") for k in (1, 2, 4))
            vs_ts = f"best tensorstore = {best / ts:.1f}"
        else:
            vs_ts = "tensorstore: not installed (pip install tensorstore to compare)"
        zp, old = med("zarr-python, 2 reader threads"), med("format 1 + zarr-python whole chunks")
        print(f"ratio adaslot / {vs_ts}; / zarr-python = {best / zp:.0f}; / format 1 + zarr-python whole "
              f"chunks = {best / old:.1f}")
        for k in (1, 2):
            a = med(f"adaslot, {k} reader thread{'s' * (k > 1)}")
            b = med(f"adaslot, {k} reader{'s' * (k > 1)}, no checksum")
            print(f"ratio streaming with / without checksums ({k} reader{'s' * (k > 1)}) = {a / b:.3f} "
                  f"(cost {100 * (1 - a / b):.1f} %, wall clock)")
        # Load-independent: CPU time per sample of this process (all threads).
        a, b = med("adaslot, 1 reader thread", "per_cpu"), med("adaslot, 1 reader, no checksum", "per_cpu")
        print(f"ratio streaming samples per CPU-second with / without checksums = {a / b:.3f} "
              f"(cost {100 * (1 - a / b):.1f} %)")
        print(f"ratio CPU cores busy streaming at the H100 estimate ({H100} samples/s) = {H100 / a:.2f} "
              f"(with checksums; {H100 / b:.2f} without)")


if __name__ == "__main__":
    main()
