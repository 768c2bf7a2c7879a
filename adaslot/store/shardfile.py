"""Writing the store: whole `features` shard files written directly, and the background shard-writer thread.

A format-2 shard file (adaslot/store/layout.py) is, in zarr v3 sharding terms: the chunks of the shard, one
per (sample, view), each the view's T x D float16 bytes followed by their crc32c (little-endian), laid out in
zarr's Morton order of the (sample, view) chunk grid; then the index, [rows, views, (offset, nbytes)] uint64
little-endian, followed by its crc32c. `write_shard` builds exactly those bytes from one [m, V, T, D] array
with one `writev` per run of chunks (no per-chunk encode pipeline), so the file is byte-identical to what
zarr-python writes for the same data (tests/test_store_writer_fast.py) and zarr, the direct reader and
cache-verify read it unchanged. It writes under a `*.partial` name and renames, as zarr's local store does,
so a killed write leaves no file that looks complete. Remote stores and other layouts go through zarr.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np

from adaslot.errors import AdaslotError
from adaslot.store.layout import NO_CHUNK, ShardedFeatures, for_writing

IOV_BATCH = 512  # buffers per writev call (the OS limit, IOV_MAX, is usually 1024)


def morton_order(rows: int, views: int) -> np.ndarray:
    """[rows * views, 2] (row, view) chunk coordinates of a shard in zarr's Morton (Z) order: the bits of
    the two coordinates interleaved, lowest first, a dimension dropping out once its bits are used up."""
    bits = ((rows - 1).bit_length(), (views - 1).bit_length())
    z = np.arange(1 << sum(bits), dtype=np.int64)
    coords = np.zeros((z.size, 2), np.int64)
    src = 0
    for b in range(max(bits)):
        for d in (0, 1):
            if b < bits[d]:
                coords[:, d] |= ((z >> src) & 1) << b
                src += 1
    keep = (coords[:, 0] < rows) & (coords[:, 1] < views)
    return coords[keep]


def shard_bytes_layout(direct: ShardedFeatures, k: int) -> tuple[np.ndarray, int]:
    """-> (Morton-ordered [(row, view)] chunks present in shard k, rows of the array in shard k)."""
    s, v = direct.shard[0], direct.shape[1]
    rows_here = min(s, direct.shape[0] - k * s)
    order = _ORDER_CACHE.get((s, v))
    if order is None:
        order = _ORDER_CACHE[(s, v)] = morton_order(s, v)
    return order, rows_here


_ORDER_CACHE: dict[tuple[int, int], np.ndarray] = {}


def write_shard(direct: ShardedFeatures, k: int, feats: np.ndarray) -> int:
    """Write shard k of a local format-2 `features` array from feats [m, V, T, D] float16 (m = the rows of
    the array in that shard) -> bytes written. Rows of the shard past the end of the array are written as
    no chunks (index entries "none"), as zarr does."""
    order, rows_here = shard_bytes_layout(direct, k)
    s, v, t, d = direct.shard[0], direct.shape[1], direct.shape[2], direct.shape[3]
    if feats.shape != (rows_here, v, t, d) or feats.dtype != np.float16:
        raise ValueError(
            f"shard {k} needs [{rows_here}, {v}, {t}, {d}] float16, got {feats.shape} {feats.dtype}"
        )
    item = t * d * 2
    views = np.ascontiguousarray(feats).reshape(rows_here * v, item // 2).view(np.uint8)
    order = order[order[:, 0] < rows_here]  # chunks past the end of the array are not written (zarr)
    trailer = 4 if direct.crc else 0  # CHECKSUMS off (benchmarks only): no crc32c after each chunk
    chunk_bytes = item + trailer
    index = np.full((s, v, 2), NO_CHUNK, "<u8")
    index[order[:, 0], order[:, 1], 0] = np.arange(len(order), dtype=np.uint64) * np.uint64(chunk_bytes)
    index[order[:, 0], order[:, 1], 1] = chunk_bytes
    value = google_crc32c.value
    buffers: list[Any] = []
    for j in (order[:, 0] * v + order[:, 1]).tolist():
        buffers += (views[j], value(views[j]).to_bytes(4, "little")) if trailer else (views[j],)
    raw = index.tobytes()
    buffers += (raw, value(raw).to_bytes(4, "little"))
    path = direct.shard_path(k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    total = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            for i in range(0, len(buffers), IOV_BATCH):
                part = buffers[i : i + IOV_BATCH]
                want = sum(memoryview(b).nbytes for b in part)
                got = os.writev(fd, part)
                if got != want:  # a short write (a size limit, a signal): the rest with plain writes
                    _finish_write(fd, part, got)
                total += want
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a size limit leaves no half shard behind
        raise
    return total


def _finish_write(fd: int, part: list[Any], done: int) -> None:
    for b in part:
        mv = memoryview(b).cast("B")  # a bytes object or a 1-D uint8 array
        if done >= len(mv):
            done -= len(mv)
            continue
        mv = mv[done:]
        done = 0
        while len(mv):
            n = os.write(fd, mv)
            mv = mv[n:]


def direct_features(root: Any, path: str) -> ShardedFeatures | None:
    """The direct writer for a local store whose features array has the format-2 layout (one chunk per sample
    and view); None (write through zarr) for remote stores and format 1."""
    if "://" in path:
        return None
    direct = ShardedFeatures.open(Path(path) / "features")
    if direct is None or direct.chunk[:2] != (1, 1):
        return None
    return direct


class ShardWriter:
    """Background thread writing finished shards in order; errors resurface in the main thread.

    Each item is (shard k, first row a, end row b, feats [b - a, V, T, D] float16, status [b - a] uint8):
    the features file first, then the shard's status chunk (its completion marker, written through zarr).
    """

    def __init__(self, root: Any, path: str, depth: int = 2):
        self.root, self.path = root, path
        self.direct = direct_features(root, path)
        self.q: queue.Queue[Any] = queue.Queue(maxsize=depth)  # bounded: at most `depth` shards held in RAM
        self.error: BaseException | None = None
        self.bytes_written = 0
        self.thread = threading.Thread(target=self._run, name="adaslot-shard-writer", daemon=True)
        self.thread.start()

    def write(self, k: int, a: int, b: int, feats: np.ndarray, status: np.ndarray) -> None:
        """Write one shard now (in the calling thread)."""
        if self.direct is not None:
            write_shard(self.direct, k, feats)
        else:
            for_writing(self.root, "features")[a:b] = feats
        for_writing(self.root, "status")[a:b] = status  # last: the shard counts as written only now
        self.bytes_written += feats.nbytes

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain after a failure
            try:
                self.write(*item)
            except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
                self.error = e

    def submit(self, *item: Any) -> None:
        self._check()
        self.q.put(item)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        self._check()

    def _check(self) -> None:
        e = self.error
        if isinstance(e, OSError):  # a full disk, a size limit: cli.main says it in one line (adaslot.faults)
            raise OSError(e.errno, e.strerror, e.filename or self.path) from None
        if e is not None:
            raise AdaslotError(f"writing the store failed: {type(e).__name__}: {e}")
