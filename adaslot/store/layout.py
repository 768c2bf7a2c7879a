"""The store's arrays on disk: their zarr v3 definitions, and direct reads of single sample views from shards.

Format 2 (written since the loader reads one view per sample): `features [N, V, T, D]` float16 is sharded
along N only (`shard_samples` rows x all views per shard file); inside a shard every (sample, view) is its
own chunk `[1, 1, T, D]`, stored uncompressed with a crc32c trailer (zarr v3 `bytes` + `crc32c` codecs). So a
training sample reads exactly one view (T x D x 2 bytes + 4) and every read is checked. Format 1 (older
stores): chunks of `chunk_samples` rows x all views, no trailer; one view of one row is still a contiguous
byte range of its chunk (uncompressed), so it is read alone too, but unchecked.

`ShardedFeatures` reads that subset of the zarr v3 sharding spec straight from local files (`os.preadv` into
the caller's buffer, crc32c with google-crc32c): the index of each shard (at its end, crc32c-checked) gives
every chunk's byte range. It is several times faster than going through zarr-python or tensorstore for this
access pattern (`benchmarks/loader_throughput.py`); anything it does not recognise (remote stores, other
codecs) is read through zarr-python instead (`FeatureStore.read_views`).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np

CHECKSUMS = True  # benchmarks set False to measure the checksums' cost; stores are always written with them
NO_CHUNK = np.uint64(2**64 - 1)  # index entry of a chunk that is not in the shard (zarr v3 sharding spec)


class Damage(Exception):
    """A file of the store does not hold what its metadata and checksums say. path: that file."""

    def __init__(self, path: str | Path, what: str) -> None:
        super().__init__(f"{path}: {what}")
        self.path, self.what = str(path), what


def create_arrays(root: Any, image_ids: np.ndarray, views: int, tokens: int, dim: int, shard_samples: int
                  ) -> None:
    """Create the format-2 arrays in zarr group `root` and write `image_ids` (see module doc).

    features: one chunk per (sample, view) inside shards of `shard_samples` rows; every chunk is written,
    zeros included (`write_empty_chunks`), so a chunk missing from a finished shard is damage, not an
    implicit zero. status: one chunk per shard, so each rank writes only its own files.
    """
    from zarr.codecs import Crc32cCodec

    crc = [Crc32cCodec()] if CHECKSUMS else None
    n = len(image_ids)
    root.create_array(
        "features", shape=(n, views, tokens, dim), dtype="float16", chunks=(1, 1, tokens, dim),
        shards=(shard_samples, views, tokens, dim), compressors=crc, fill_value=0,
        dimension_names=("sample", "view", "token", "channel"))
    root.create_array("image_ids", shape=(n,), dtype="int64", chunks=(n,), compressors=crc, fill_value=-1)
    for_writing(root, "image_ids")[:] = image_ids
    root.create_array("status", shape=(n,), dtype="uint8", chunks=(shard_samples,), compressors=crc,
                      fill_value=0)


def for_writing(root: Any, name: str) -> Any:
    """Array `name` of zarr group `root`, set to write every chunk: zarr keeps `write_empty_chunks` out of the
    metadata, so each writer of the store opens its arrays through this."""
    return root[name].with_config({"write_empty_chunks": True})


class ShardedFeatures:
    """Direct reader of a local `features` array (format 1 or 2). Thread-safe; keeps one fd per shard open.

    Use `ShardedFeatures.open(array_dir)`, which returns None for layouts it does not handle.
    """

    def __init__(self, array_dir: Path, shape: tuple[int, ...], shard: tuple[int, ...],
                 chunk: tuple[int, ...], crc: bool) -> None:
        self.dir, self.shape, self.shard, self.chunk, self.crc = array_dir, shape, shard, chunk, crc
        self.verify = crc  # False only to measure the checksum's cost (benchmarks)
        n, v, t, d = shape
        self.item_bytes = t * d * 2  # one view of one sample, float16
        self.grid = (shard[0] // chunk[0], shard[1] // chunk[1])  # chunks per shard along (sample, view)
        self.chunk_bytes = chunk[0] * chunk[1] * self.item_bytes + (4 if crc else 0)
        self.index_bytes = self.grid[0] * self.grid[1] * 16 + 4
        self._index: dict[int, np.ndarray | None] = {}
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, array_dir: str | Path) -> ShardedFeatures | None:
        """Parse `array_dir/zarr.json`; None unless it is the uncompressed float16 sharded layout above."""
        array_dir = Path(array_dir)
        meta = json.loads((array_dir / "zarr.json").read_text())
        try:
            shape = tuple(int(x) for x in meta["shape"])
            shard = tuple(int(x) for x in meta["chunk_grid"]["configuration"]["chunk_shape"])
            (codec,) = meta["codecs"]
            conf = codec["configuration"]
            chunk = tuple(int(x) for x in conf["chunk_shape"])
            inner = [c["name"] for c in conf["codecs"]]
            index = [c["name"] for c in conf["index_codecs"]]
            key = meta["chunk_key_encoding"]
            ok = (meta["data_type"] == "float16" and len(shape) == 4 and codec["name"] == "sharding_indexed"
                  and inner in (["bytes"], ["bytes", "crc32c"]) and index == ["bytes", "crc32c"]
                  and conf["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
                  and conf.get("index_location", "end") == "end" and key["name"] == "default"
                  and key.get("configuration", {}).get("separator", "/") == "/"
                  and shard[1:] == shape[1:] and chunk[2:] == shape[2:] and shard[0] % chunk[0] == 0)
        except (KeyError, TypeError, ValueError):
            return None
        return cls(array_dir, shape, shard, chunk, inner[-1] == "crc32c") if ok else None

    # ---- files

    def shard_of(self, row: int) -> int:
        return row // self.shard[0]

    def shard_path(self, k: int) -> Path:
        return self.dir / "c" / str(k) / "0" / "0" / "0"

    def _fd(self, k: int) -> int | None:
        fd = self._fds.get(k)
        if fd is None:
            with self._lock:
                fd = self._fds.get(k)
                if fd is None:
                    try:
                        fd = os.open(self.shard_path(k), os.O_RDONLY)
                    except FileNotFoundError:
                        return None
                    self._fds[k] = fd
        return fd

    def index(self, k: int) -> np.ndarray | None:
        """Shard k's chunk index [chunks along sample, chunks along view, 2 (offset, nbytes)] uint64, or None
        if the shard file does not exist. Raises Damage if the index is cut short or fails its checksum."""
        if k in self._index:
            return self._index[k]
        fd = self._fd(k)
        if fd is None:
            return None
        size = os.fstat(fd).st_size
        if size < self.index_bytes:
            raise Damage(self.shard_path(k), f"cut short ({size} bytes, less than its index)")
        raw = os.pread(fd, self.index_bytes, size - self.index_bytes)
        if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise Damage(self.shard_path(k), "shard index checksum mismatch (file cut short or overwritten)")
        idx = np.frombuffer(raw[:-4], "<u8").reshape(*self.grid, 2)
        data_end = size - self.index_bytes
        present = idx[..., 0] != NO_CHUNK
        ends = idx[present, 0] + idx[present, 1]
        if (idx[present, 1] != self.chunk_bytes).any() or (ends > data_end).any():
            raise Damage(self.shard_path(k), "shard index points outside the file or at chunks of the "
                                             "wrong size")
        self._index[k] = idx
        return idx

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._index.clear()

    # ---- reads

    def read_into(self, rows: np.ndarray, views: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fill out[i] ([n, T, D] float16, C-contiguous) with view views[i] of row rows[i].

        -> missing [n] bool: rows whose chunk or shard file does not exist (left untouched in `out`; the
        caller decides whether that is an unwritten row or damage). Raises Damage on a short read or a
        checksum mismatch.
        """
        s0, c0, cv = self.shard[0], self.chunk[0], self.chunk[1]
        missing = np.zeros(len(rows), bool)
        crc_buf = bytearray(4)
        for i, (r, v) in enumerate(zip(rows.tolist(), views.tolist(), strict=True)):
            k, local = divmod(r, s0)
            idx = self.index(k)
            if idx is None:
                missing[i] = True
                continue
            ci, within = divmod(local, c0)
            off, nbytes = idx[ci, v // cv]
            if off == NO_CHUNK:
                missing[i] = True
                continue
            fd = self._fds[k]
            dst = out[i]
            if self.crc:  # one (sample, view) per chunk: read it whole with its trailer, check it
                got = os.preadv(fd, [dst, crc_buf], int(off))
                if got != nbytes:
                    raise Damage(self.shard_path(k), f"cut short (chunk of row {r} view {v})")
                if self.verify and google_crc32c.value(dst) != int.from_bytes(crc_buf, "little"):
                    raise Damage(self.shard_path(k), f"checksum mismatch in the chunk of row {r} view {v}")
            else:  # format 1: the view's bytes inside a multi-sample chunk, no checksum to check
                pos = int(off) + (within * cv + v % cv) * self.item_bytes
                if os.preadv(fd, [dst], pos) != self.item_bytes:
                    raise Damage(self.shard_path(k), f"cut short (chunk of row {r})")
        return missing

    def check_shard(self, k: int) -> tuple[int, str | None]:
        """Read every chunk of shard k and check its checksum -> (bytes read, problem or None).

        A missing file is not a problem here (the caller knows from `status` whether it should exist);
        missing chunks are reported as such (format 2 writes every chunk of a shard).
        """
        try:
            idx = self.index(k)
        except Damage as e:
            return 0, e.what
        if idx is None:
            return 0, None
        rows_here = min(self.shard[0], self.shape[0] - k * self.shard[0])
        expected = -(-rows_here // self.chunk[0])
        fd = self._fds[k]
        buf = np.empty(self.chunk_bytes, np.uint8)
        done = self.index_bytes
        for ci in range(self.grid[0]):
            for cj in range(self.grid[1]):
                off, nbytes = idx[ci, cj]
                row = k * self.shard[0] + ci * self.chunk[0]
                what = (f"row {row} view {cj}" if self.chunk[:2] == (1, 1) else  # format 2
                        f"rows {row}-{row + self.chunk[0] - 1}")
                if off == NO_CHUNK:
                    if self.crc and ci < expected:
                        return done, f"the chunk of {what} is missing"
                    continue
                if os.preadv(fd, [buf.data], int(off)) != nbytes:
                    return done, f"cut short (chunk of {what})"
                done += int(nbytes)
                if self.crc and google_crc32c.value(buf[:-4]) != int.from_bytes(buf[-4:].tobytes(), "little"):
                    return done, f"checksum mismatch in the chunk of {what}"
        return done, None
