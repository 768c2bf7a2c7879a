"""Training reader for feature stores: whole-chunk reads in the background, shuffled, exactly resumable.

Streaming mode (default): every epoch, the chunk order is shuffled (one permutation shared by all ranks,
rank r takes chunks r, r + P, ...), rows are shuffled inside each chunk and mixed across chunks by a bounded
shuffle buffer (like the official pipeline's 3000-sample buffer). Chunks are read whole by `readahead` threads
and batches are assembled by a producer thread, so the trainer only takes finished batches from a queue.
In-memory mode (`in_memory=True`): this rank's rows are loaded into RAM once; each epoch is a uniform random
permutation of them.

Every valid sample is seen exactly once per epoch (per rank: once per epoch of its part). One stored view
per sample and epoch is drawn uniformly (p = 0.5 flip for train stores), so training from a 2-view store
samples the same augmentation distribution as online training.

Determinism: the order is a pure function of (seed, epoch, rank, world_size, store layout, buffer size); the
only state is `consumed` (samples handed out by this rank), which is the same on every DDP rank (each takes
the same local batch per step). `state_dict()` / `load_state_dict()` therefore resume the exact batch
sequence, and rank 0's state is valid for every rank.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from adaslot.errors import AdaslotError
from adaslot.store import FeatureStore, open_store


class FeatureLoader:
    """Infinite iterator of (features [B, T, D] float16 tensor, rows [B] int64 store row indices).

    store: FeatureStore or path; batch_size: samples per batch on this rank; shuffle_buffer: samples mixed
    across chunks (streaming mode); view: "random" or a fixed view index; prefetch: finished batches queued
    ahead; readahead: chunk reads in flight; pin_memory: page-locked batches for fast non_blocking copies.
    """

    def __init__(self, store: FeatureStore | str, batch_size: int, *, seed: int = 0,
                 shuffle_buffer: int = 1024, in_memory: bool = False, rank: int = 0, world_size: int = 1,
                 view: str | int = "random",
                 prefetch: int = 4, readahead: int = 2, pin_memory: bool = False,
                 require_complete: bool = True) -> None:
        self.store = open_store(store) if isinstance(store, str) else store
        if require_complete and not self.store.complete:
            self.store.check_compatible(require_complete=True)  # raises the one-line "incomplete" error
        if batch_size < 1:
            raise AdaslotError("batch size must be >= 1")
        if not 0 <= rank < world_size:
            raise AdaslotError(f"rank {rank} is outside world size {world_size}")
        if view != "random" and not (isinstance(view, int) and 0 <= view < self.store.num_views):
            raise AdaslotError(f"view must be 'random' or 0..{self.store.num_views - 1}, got {view!r}")
        self.batch_size, self.seed, self.buffer = batch_size, seed, max(1, shuffle_buffer)
        self.in_memory, self.rank, self.world_size, self.view = in_memory, rank, world_size, view
        self.prefetch, self.readahead, self.pin_memory = max(1, prefetch), max(1, readahead), pin_memory
        self.chunks = self.store.chunk_bounds()
        valid = self.store.valid
        self._chunk_rows = [np.flatnonzero(valid[a:b]) + a for a, b in self.chunks]
        if in_memory:
            self._mem_rows = np.concatenate(
                [self._chunk_rows[c] for c in range(len(self.chunks)) if c % world_size == rank] or [[]]
            ).astype(np.int64)
            if self._mem_rows.size == 0:
                raise AdaslotError(f"rank {rank} of {world_size} has no samples in {self.store.path}")
            self._mem_pos = {int(r): i for i, r in enumerate(self._mem_rows)}
            self._mem = self._load_all()
        elif sum(r.size > 0 for r in self._chunk_rows) < world_size:
            raise AdaslotError(f"{self.store.path} has fewer non-empty chunks than the {world_size} ranks "
                               f"that stream it; use --cache-in-memory or a store with smaller chunks")
        self.consumed = 0  # samples handed out by __next__ on this rank
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=self.prefetch)

    # ------------------------------------------------------------------ plan (pure functions of the seed)

    def _epoch_chunks(self, epoch: int) -> list[int]:
        """This rank's chunks for `epoch`, in reading order (streaming mode)."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.chunks))
        return [int(c) for c in perm[self.rank::self.world_size] if self._chunk_rows[c].size]

    def epoch_length(self, epoch: int) -> int:
        """Samples this rank sees in `epoch`."""
        if self.in_memory:
            return int(self._mem_rows.size)
        return int(sum(self._chunk_rows[c].size for c in self._epoch_chunks(epoch)))

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(rows [L] in emission order, views [L], chunk reading order) of this rank's `epoch`."""
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        if self.in_memory:
            rows, chunk_order = self._mem_rows[rng.permutation(self._mem_rows.size)], []
        else:
            chunk_order = self._epoch_chunks(epoch)
            stream = np.concatenate([rng.permutation(self._chunk_rows[c]) for c in chunk_order])
            rows = _buffer_shuffle(stream, self.buffer, rng)
        if self.view == "random":
            views = rng.integers(0, self.store.num_views, size=rows.size)
        else:
            views = np.full(rows.size, int(self.view))
        return rows.astype(np.int64), views.astype(np.int64), chunk_order

    def position(self, consumed: int | None = None) -> tuple[int, int]:
        """(epoch, index within the epoch) of sample number `consumed` of this rank."""
        left, epoch = self.consumed if consumed is None else consumed, 0
        while left >= (n := self.epoch_length(epoch)):
            left -= n
            epoch += 1
        return epoch, left

    @property
    def epoch(self) -> int:
        return self.position()[0]

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "seed": self.seed, "shuffle_buffer": self.buffer,
                "in_memory": self.in_memory, "world_size": self.world_size, "view": self.view,
                "num_samples": self.store.num_samples, "chunk_samples": self.store.chunk_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after `state["consumed"]` samples; the order-defining settings must be the same."""
        for key in ("seed", "shuffle_buffer", "in_memory", "world_size", "view", "num_samples",
                    "chunk_samples"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise AdaslotError(f"cannot resume the cache loader exactly: {key} was {state[key]!r}, now "
                                   f"{mine!r} (use the same store, seed, world size and cache options)")
        self.close()
        self.consumed = int(state["consumed"])

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._thread is None:
            self._start()
        kind, payload = self._queue.get()
        if kind == "error":
            self.close()
            raise payload
        feats, rows = payload
        self.consumed += rows.numel()
        return feats, rows

    def _start(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, args=(self.consumed, self._queue, self._stop),
                                        name="adaslot-feature-loader", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background thread (a later __next__ restarts it at `consumed`)."""
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:  # unblock a producer waiting on a full queue
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

    def _put(self, q: queue.Queue, stop: threading.Event, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, consumed: int, q: queue.Queue, stop: threading.Event) -> None:
        try:
            epoch, pos = self.position(consumed)
            feats: list[np.ndarray] = []
            rows_out: list[int] = []
            while not stop.is_set():
                for row, feat in self._epoch_samples(epoch, pos, stop):
                    feats.append(feat)
                    rows_out.append(row)
                    if len(rows_out) == self.batch_size:
                        batch = torch.from_numpy(np.stack(feats))
                        if self.pin_memory:
                            batch = batch.pin_memory()
                        if not self._put(q, stop, ("batch", (batch, torch.tensor(rows_out)))):
                            return
                        feats, rows_out = [], []
                epoch, pos = epoch + 1, 0
        except BaseException as e:  # noqa: BLE001  (handed to the consumer thread)
            self._put(q, stop, ("error", e))

    def _epoch_samples(self, epoch: int, pos: int, stop: threading.Event
                       ) -> Iterator[tuple[int, np.ndarray]]:
        """(row, features [T, D]) of this rank's `epoch` from index `pos` on."""
        rows, views, chunk_order = self.epoch_plan(epoch)
        if self.in_memory:
            for r, v in zip(rows[pos:], views[pos:], strict=True):
                yield int(r), self._mem[self._mem_pos[int(r)], v]
            return
        view_of = dict(zip(rows.tolist(), views.tolist(), strict=True))
        needed = set(rows[pos:].tolist())
        order = [c for c in chunk_order if needed.intersection(self._chunk_rows[c].tolist())]
        live: dict[int, np.ndarray] = {}  # rows read but not yet emitted: at most buffer + one chunk
        with ThreadPoolExecutor(max_workers=self.readahead, thread_name_prefix="adaslot-chunk") as pool:
            pending: list[tuple[int, Future]] = []
            next_chunk = 0

            def top_up() -> None:
                nonlocal next_chunk
                while len(pending) < self.readahead and next_chunk < len(order):
                    c = order[next_chunk]
                    pending.append((c, pool.submit(self.store.read, *self.chunks[c])))
                    next_chunk += 1

            top_up()
            for r in rows[pos:].tolist():
                while r not in live:
                    if stop.is_set():
                        return
                    c, fut = pending.pop(0)
                    data, a = fut.result(), self.chunks[c][0]
                    top_up()
                    for rr in self._chunk_rows[c].tolist():
                        if rr in needed:
                            live[rr] = data[rr - a, view_of[rr]].copy()  # copy: the chunk can be freed
                yield r, live.pop(r)

    def _load_all(self) -> np.ndarray:
        """This rank's valid rows, all views: [M, V, T, D] float16 in RAM (whole-chunk reads)."""
        s = self.store
        need = self._mem_rows.size * s.num_views * s.num_tokens * s.feature_dim * 2
        avail = _available_ram()
        if avail is not None and need > 0.9 * avail:
            raise AdaslotError(f"--cache-in-memory needs {need / 2**30:.1f} GiB for this rank's part of "
                               f"{s.path} but {avail / 2**30:.1f} GiB are available; stream it instead")
        out = np.empty((self._mem_rows.size, s.num_views, s.num_tokens, s.feature_dim), np.float16)
        i = 0
        for c, (a, b) in enumerate(self.chunks):
            rows = self._chunk_rows[c]
            if c % self.world_size != self.rank or rows.size == 0:
                continue
            out[i:i + rows.size] = s.read(a, b)[rows - a]
            i += rows.size
        return out

    @property
    def samples_per_epoch(self) -> int:
        return self.epoch_length(self.epoch)


def _available_ram() -> int | None:
    """MemAvailable (free + reclaimable page cache) on Linux; None where unknown (no check then)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _buffer_shuffle(stream: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """Order in which a shuffle buffer of `buffer` slots emits `stream`: fill the buffer, then for each new
    sample emit a uniformly chosen slot and put the sample there; finally emit the rest in random order."""
    n = stream.size
    if buffer <= 1 or n == 0:
        return stream.copy()
    out = np.empty(n, np.int64)
    buf = stream[:buffer].tolist()
    picks = rng.integers(0, len(buf), size=max(0, n - len(buf))).tolist()
    k = 0
    for j, new in zip(picks, stream[len(buf):].tolist(), strict=True):
        out[k] = buf[j]
        buf[j] = new
        k += 1
    out[k:] = np.asarray(buf, np.int64)[rng.permutation(len(buf))]
    return out
