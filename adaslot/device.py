"""Where and how to compute: device choice, worker count, matmul precision and autocast (one copy of each).

The same rules for every command: `auto` picks cuda:LOCAL_RANK when a GPU is visible, else the CPU; other
back-ends (mps, xpu) are refused with one line, since nothing here is tested on them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from adaslot.errors import AdaslotError


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda:LOCAL_RANK if available else cpu; `cpu`, `cuda`, `cuda:N`; anything else -> one line."""
    if pref not in ("auto", "cpu", "cuda") and not (pref.startswith("cuda:") and pref[5:].isdigit()):
        raise AdaslotError(f"--device must be auto, cpu, cuda or cuda:N, got {pref!r}")
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise AdaslotError(f"--device {pref} but no CUDA GPU is visible here; use --device cpu")
    if pref.startswith("cuda:"):
        if int(pref[5:]) >= torch.cuda.device_count():
            raise AdaslotError(f"--device {pref}: only {torch.cuda.device_count()} GPUs are visible")
        return torch.device(pref)
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def resolve_workers(workers: int | None) -> int:
    """Data-loading worker processes: the given number, or by default one per spare core (at most 4), so a
    2-core machine runs 1 worker beside the main process instead of oversubscribing it."""
    if workers is not None:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch CPU threads = n inside (None: leave torch's choice), the caller's number restored afterwards.
    Sums over a different number of threads round differently, so runs compare bit for bit only at one n."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_matmul_precision(precision: str) -> None:
    """fp32: exact float32 matmuls (the reference); tf32 and bf16 allow TF32 on Ampere+ GPUs."""
    fast = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    torch.set_float32_matmul_precision("high" if fast else "highest")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for precision "bf16"; nothing otherwise (tf32 is a global matmul setting)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
