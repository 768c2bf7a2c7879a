"""Learning-rate schedules against hand-computed values (docs/method.md#schedules)."""

import math

import pytest

from adaslot.errors import AdaslotError
from adaslot.schedules import adaslot_lr, constant_lr, dinosaur_lr, get_schedule

# (step, expected): base 4e-4, warm-up 10k, half-life 100k.
ADASLOT = [
    (0, 0.0),
    (1, 4e-4 * 1e-4 * 0.5 ** 1e-5),
    (5_000, 4e-4 * 0.5 * 0.5 ** 0.05),  # mid warm-up: the decay already runs
    (10_000, 4e-4 * 0.5 ** 0.1),  # 3.7321e-4, not 4e-4
    (100_000, 2e-4),
    (200_000, 1e-4),
    (500_000, 4e-4 / 32),
]
DINOSAUR = [
    (0, 0.0),
    (5_000, 2e-4),  # plain linear warm-up, no decay yet
    (10_000, 4e-4),  # peak reached exactly
    (110_000, 2e-4),  # one half-life after the warm-up
    (510_000, 4e-4 / 32),
]


@pytest.mark.parametrize("step,expected", ADASLOT)
def test_adaslot_lr_table(step, expected):
    assert math.isclose(adaslot_lr(step), expected, rel_tol=1e-12, abs_tol=0.0)


@pytest.mark.parametrize("step,expected", DINOSAUR)
def test_dinosaur_lr_table(step, expected):
    assert math.isclose(dinosaur_lr(step), expected, rel_tol=1e-12, abs_tol=0.0)


def test_hand_value_and_options():
    # 4e-4 * 0.5 ** 0.1 = 3.7321e-4 (0.5**0.1 = 0.933033).
    assert adaslot_lr(10_000) == pytest.approx(3.73213e-4, rel=1e-5)
    assert adaslot_lr(50, base=1.0, warmup=100, half_life=50) == pytest.approx(0.25)
    assert adaslot_lr(7, base=2.0, warmup=0, half_life=7) == pytest.approx(1.0)  # no warm-up
    assert dinosaur_lr(150, base=1.0, warmup=100, half_life=50) == pytest.approx(0.5)
    assert constant_lr(123, base=0.3) == 0.3


def test_get_schedule():
    assert get_schedule("adaslot") is adaslot_lr
    assert get_schedule("dinosaur") is dinosaur_lr
    with pytest.raises(AdaslotError, match="lr-schedule"):
        get_schedule("cosine")
