"""Shared timing loop of the benchmarks: run two variants in turns so both see the same machine load."""

from __future__ import annotations

import time
from collections.abc import Callable


def alternate(a: Callable[[], float], b: Callable[[], float], repeats: int,
              warmup: bool = True) -> tuple[list[float], list[float]]:
    """Call a, b, a, b, ... `repeats` times each and return their measurements (each call returns its own:
    seconds, or a rate). warmup: one untimed a, b round first (allocator, caches, Adam state)."""
    if warmup:
        a(), b()
    xs, ys = [], []
    for _ in range(repeats):
        xs.append(a())
        ys.append(b())
    return xs, ys


def seconds(fn: Callable[[], object]) -> Callable[[], float]:
    """fn -> a function that runs fn and returns its wall time in seconds."""

    def timed() -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    return timed
