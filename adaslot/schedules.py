"""Learning-rate schedules: pure functions of the optimiser step (docs/method.md#schedules).

`step` is the number of optimiser steps already taken (0 for the first update), the same convention as
`torch.optim.lr_scheduler.LambdaLR` stepped once per update in the official code, so the very first update
of a warm-up schedule uses lr 0.
"""

from __future__ import annotations

from collections.abc import Callable

from adaslot.errors import AdaslotError


def adaslot_lr(step: int, base: float = 4e-4, warmup: int = 10_000, half_life: int = 100_000) -> float:
    """AdaSlot: base * min(1, t / warmup) * 0.5 ** (t / half_life); the decay runs from step 0."""
    t = max(int(step), 0)
    ramp = 1.0 if warmup <= 0 else min(1.0, t / warmup)
    return base * ramp * 0.5 ** (t / half_life)


def dinosaur_lr(step: int, base: float = 4e-4, warmup: int = 10_000, half_life: int = 100_000) -> float:
    """DINOSAUR: linear warm-up to `base` over `warmup` steps, then base * 0.5 ** ((t - warmup) / half_life).

    The decay starts after the warm-up (unlike `adaslot_lr`).
    """
    t = max(int(step), 0)
    if t < warmup:
        return base * t / warmup
    return base * 0.5 ** ((t - warmup) / half_life)


def constant_lr(step: int, base: float = 4e-4, warmup: int = 0, half_life: int = 0) -> float:
    """Constant `base` (tests and ablations; `warmup`/`half_life` are accepted and ignored)."""
    return base


def ramp_weight(step: int, weight: float, ramp_steps: int = 0) -> float:
    """A loss weight raised linearly from 0 at step 0 to `weight` at `ramp_steps`, then constant (ocl's
    LinearHPScheduler with start value 0; docs/method.md#count-options). ramp_steps 0: `weight` throughout."""
    if ramp_steps <= 0:
        return weight
    return weight * min(1.0, max(int(step), 0) / ramp_steps)


SCHEDULES: dict[str, Callable[..., float]] = {
    "adaslot": adaslot_lr,
    "dinosaur": dinosaur_lr,
    "constant": constant_lr,
}


def get_schedule(name: str) -> Callable[..., float]:
    """The schedule function called `name` (adaslot, dinosaur, constant)."""
    if name not in SCHEDULES:
        raise AdaslotError(f"unknown --lr-schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]
