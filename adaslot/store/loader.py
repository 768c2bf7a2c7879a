"""Training reader for feature stores: one view per sample read ahead in threads, shuffled, exactly resumable.

Order (a pure function of seed, epoch, rank, world size, store layout and buffer size): every epoch the
order of the store's blocks (`chunk_samples` rows) is shuffled (one permutation shared by all ranks; rank r
takes blocks r, r + P, ...), rows are shuffled inside each block and mixed across blocks by a bounded
shuffle buffer (like the official pipeline's 3000-sample buffer), and each sample gets one stored view drawn
uniformly (p = 0.5 flip for train stores, independently per sample and epoch), so training from a 2-view
store samples the same augmentation distribution as online training. Every valid sample is seen exactly once
per epoch (per rank: once per epoch of its part). In-memory mode (`in_memory=True`): this rank's rows, all
views, are loaded into RAM once and each epoch is a uniform random permutation of them.

Reading: since the whole order is known in advance, batch j is a job that reads exactly its B sample views
(`FeatureStore.read_views`: one view's bytes per sample, checksums checked) into a host buffer. `readers`
threads run these jobs, `prefetch` batches ahead of the step. With `device` set, the loader also copies
ahead: on CUDA each batch goes host -> device on a side stream (pinned memory, non_blocking) and is converted
fp16 -> fp32 there, so the trainer finds the next batch already on the GPU; on the CPU the reader threads
convert. The trainer waits only if the step is faster than the reads. Host buffers are recycled (a fresh
19 MB buffer per batch costs page faults comparable to the read itself): always in device mode, and with
`reuse_buffers=True` for CPU float16 batches, which are then valid only until the next `next()`.

Resume: the only state is `consumed` (samples handed out by this rank), the same on every DDP rank (each
takes the same local batch per step); `state_dict()` / `load_state_dict()` resume the exact batch sequence,
and rank 0's state is valid for every rank.
"""

from __future__ import annotations

import queue
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from adaslot.errors import AdaslotError
from adaslot.store import FeatureStore, open_store

DEVICE_AHEAD = 2  # batches already copied to the GPU while the step runs


class FeatureLoader:
    """Infinite iterator of (features [B, T, D], rows [B] int64 store row indices).

    store: FeatureStore or path; batch_size: samples per batch on this rank; shuffle_buffer: samples mixed
    across blocks (streaming mode); view: "random" or a fixed view index; prefetch: batches read ahead;
    readers: threads reading them. device None: float16 CPU batches (page-locked if pin_memory); a device:
    float32 batches on it, copied ahead (see module doc). reuse_buffers (device None only): recycle the
    batch buffers; a batch is then overwritten after the next `next()`. max_samples: read only the store's
    first N valid rows (in row order; None: all).
    """

    def __init__(self, store: FeatureStore | str, batch_size: int, *, seed: int = 0,
                 shuffle_buffer: int = 1024, in_memory: bool = False, rank: int = 0, world_size: int = 1,
                 view: str | int = "random", prefetch: int = 4, readers: int = 2,
                 device: torch.device | str | None = None, pin_memory: bool | None = None,
                 reuse_buffers: bool = False, require_complete: bool = True,
                 max_samples: int | None = None) -> None:
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
        self.prefetch, self.readers = max(1, prefetch), max(1, readers)
        self.device = torch.device(device) if device is not None else None
        on_cuda = self.device is not None and self.device.type == "cuda"
        self.pin_memory = on_cuda if pin_memory is None else pin_memory
        self.reuse_buffers = reuse_buffers or self.device is not None
        self.chunks = self.store.chunk_bounds()
        valid = self.store.valid
        if max_samples is not None:
            valid = valid.copy()
            valid[np.flatnonzero(valid)[max_samples:]] = False
        self.max_samples = max_samples
        self._chunk_rows = [np.flatnonzero(valid[a:b]) + a for a, b in self.chunks]
        if in_memory:
            self._mem_rows = np.concatenate(  # ascending: blocks in order, rows ascending inside each
                [self._chunk_rows[c] for c in range(len(self.chunks)) if c % world_size == rank]
                or [np.empty(0, np.int64)]
            ).astype(np.int64)
            if self._mem_rows.size == 0:
                raise AdaslotError(f"rank {rank} of {world_size} has no samples in {self.store.path}")
            self._mem = self._load_all()
        elif sum(r.size > 0 for r in self._chunk_rows) < world_size:
            raise AdaslotError(f"{self.store.path} has fewer non-empty blocks than the {world_size} ranks "
                               f"that stream it; use --cache-in-memory or a store with smaller --chunk-size")
        self.consumed = 0  # samples handed out by __next__ on this rank
        self._plans: dict[int, tuple[np.ndarray, np.ndarray, list[int]]] = {}
        self._pool: ThreadPoolExecutor | None = None
        # host batches being read, in stream order
        self._jobs: deque[Future[tuple[torch.Tensor, torch.Tensor]]] = deque()
        self._ahead: deque[tuple[torch.Tensor, torch.Tensor, Any]] = deque()  # CUDA: batches being copied
        self._copy_stream: Any = None
        # recycled host buffers, (buffer, CUDA event)
        self._free: queue.SimpleQueue[tuple[torch.Tensor, Any]] = queue.SimpleQueue()
        self._lent: torch.Tensor | None = None  # reuse_buffers: the buffer of the batch handed out last
        self._next_pos: tuple[int, int] = (0, 0)  # (epoch, index) of the next batch to submit

    # ------------------------------------------------------------------ plan (pure functions of the seed)

    def _epoch_chunks(self, epoch: int) -> list[int]:
        """This rank's blocks for `epoch`, in reading order (streaming mode)."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.chunks))
        return [int(c) for c in perm[self.rank::self.world_size] if self._chunk_rows[c].size]

    def epoch_length(self, epoch: int) -> int:
        """Samples this rank sees in `epoch`."""
        if self.in_memory:
            return int(self._mem_rows.size)
        return int(sum(self._chunk_rows[c].size for c in self._epoch_chunks(epoch)))

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(rows [L] in emission order, views [L], block reading order) of this rank's `epoch`."""
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

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        if epoch not in self._plans:
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}  # keep the previous one
            self._plans[epoch] = self.epoch_plan(epoch)
        return self._plans[epoch]

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
                "num_samples": self.store.num_samples, "chunk_samples": self.store.chunk_samples,
                "max_samples": self.max_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after `state["consumed"]` samples; the order-defining settings must be the same."""
        for key in ("seed", "shuffle_buffer", "in_memory", "world_size", "view", "num_samples",
                    "chunk_samples", "max_samples"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise AdaslotError(f"cannot resume the cache loader exactly: {key} was {state[key]!r}, now "
                                   f"{mine!r} (use the same store, seed, world size and cache options)")
        self.close()
        self.consumed = int(state["consumed"])

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> FeatureLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._lent is not None:  # the caller is done with the previous batch
            self._free.put((self._lent, None))
            self._lent = None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix="adaslot-reader")
            self._next_pos = self.position(self.consumed)
        if self.device is not None and self.device.type == "cuda":
            feats, rows = self._next_on_cuda()
        else:
            feats, rows = self._next_host()
            if self.reuse_buffers and self.device is None:
                self._lent = feats
        self.consumed += rows.numel()
        return feats, rows

    def _next_host(self) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self._jobs) < self.prefetch:
            self._submit()
        job = self._jobs.popleft()
        self._submit()
        try:
            batch: tuple[torch.Tensor, torch.Tensor] = job.result()
            return batch
        except BaseException:
            self.close()
            raise

    def _next_on_cuda(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep DEVICE_AHEAD batches in flight to the GPU on a side stream; hand out the oldest."""
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]  # torch leaves Stream() unannotated
        while len(self._ahead) < DEVICE_AHEAD:
            host, rows = self._next_host()
            with torch.cuda.stream(self._copy_stream):
                feats = host.to(self.device, non_blocking=True).float()
                done = torch.cuda.Event()  # type: ignore[no-untyped-call]  # torch leaves Event() unannotated
                done.record()
            self._free.put((host, done))  # reused once the copy has finished (the reader waits for it)
            self._ahead.append((feats, rows, done))
        feats, rows, done = self._ahead.popleft()
        main = torch.cuda.current_stream(self.device)
        main.wait_event(done)
        feats.record_stream(main)  # allocated on the copy stream, used on the main one
        return feats, rows

    def _submit(self) -> None:
        """Queue the read of the next batch of the stream (which may span an epoch boundary)."""
        epoch, pos = self._next_pos
        parts_r, parts_v, need = [], [], self.batch_size
        while need:
            rows, views, _ = self._plan(epoch)
            take = min(need, rows.size - pos)
            parts_r.append(rows[pos:pos + take])
            parts_v.append(views[pos:pos + take])
            need -= take
            pos += take
            if pos == rows.size:
                epoch, pos = epoch + 1, 0
        self._next_pos = (epoch, pos)
        assert self._pool is not None
        self._jobs.append(self._pool.submit(self._read_batch, np.concatenate(parts_r),
                                            np.concatenate(parts_v)))

    def _read_batch(self, rows: np.ndarray, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs in a reader thread: rows/views -> (features [B, T, D], rows [B])."""
        s = self.store
        feats = self._buffer(rows.size)
        if self.in_memory:
            dst, pos = feats.numpy(), np.searchsorted(self._mem_rows, rows)
            for i, (p, v) in enumerate(zip(pos.tolist(), views.tolist(), strict=True)):
                dst[i] = self._mem[p, v]  # (np.take(out=...) is 3x slower for this on numpy 2.4)
        else:
            s.read_views(rows, views, feats.numpy())
        if self.device is not None and self.device.type == "cpu":
            out = feats.float()  # "on the device" for a CPU run, off the training thread
            self._free.put((feats, None))
            feats = out
        return feats, torch.from_numpy(rows)

    def _buffer(self, n: int) -> torch.Tensor:
        """A [n, T, D] float16 host buffer: a recycled one if any is free (once its GPU copy is done)."""
        if self.reuse_buffers:
            try:
                buf, copied = self._free.get_nowait()
                if copied is not None:
                    copied.synchronize()
                if buf.shape[0] == n:
                    return buf
            except queue.Empty:
                pass
        s = self.store
        return torch.empty((n, s.num_tokens, s.feature_dim), dtype=torch.float16, pin_memory=self.pin_memory)

    def close(self) -> None:
        """Stop reading ahead (a later __next__ restarts at `consumed`)."""
        if self._pool is not None:
            for job in self._jobs:
                job.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
        self._jobs.clear()
        self._ahead.clear()
        self._lent = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

    def _load_all(self) -> np.ndarray:
        """This rank's valid rows, all views: [M, V, T, D] float16 in RAM."""
        s = self.store
        need = self._mem_rows.size * s.num_views * s.num_tokens * s.feature_dim * 2
        avail = _available_ram()
        if avail is not None and need > 0.9 * avail:
            raise AdaslotError(f"--cache-in-memory needs {need / 2**30:.1f} GiB for this rank's part of "
                               f"{s.path} but {avail / 2**30:.1f} GiB are available; stream it instead")
        v = s.num_views
        out = np.empty((self._mem_rows.size, v, s.num_tokens, s.feature_dim), np.float16)
        step = 256
        for i in range(0, self._mem_rows.size, step):
            rows = self._mem_rows[i:i + step]
            s.read_views(np.repeat(rows, v), np.tile(np.arange(v), rows.size),
                         out[i:i + rows.size].reshape(rows.size * v, s.num_tokens, s.feature_dim))
        return out


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
