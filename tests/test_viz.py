"""viz.slot_grid: layout, magnification of small inputs, dropped and merged slots marked."""

from __future__ import annotations

import numpy as np

from adaslot.viz import MIN_SIDE, palette, slot_grid


def _inputs(side: int, k: int = 3):
    rng = np.random.default_rng(0)
    image = rng.random((3, side, side))
    gt = np.zeros((side, side), np.int64)
    gt[: side // 2] = 1
    pred = rng.integers(0, k, (side, side))
    alpha = rng.random((k, 8, 8))
    return image, gt, pred, alpha


def test_small_images_are_magnified_by_whole_pixels():
    image, gt, pred, alpha = _inputs(64)
    pic = np.asarray(slot_grid(image, gt, pred, alpha))
    assert pic.shape[1] == 3 * MIN_SIDE  # 64 px magnified x3
    # the image panel is the input repeated 3 x 3 (nearest), not resampled
    top_left = pic[:3, :3]
    assert (top_left == top_left[0, 0]).all()
    big = np.asarray(slot_grid(*_inputs(224)))
    assert big.shape[1] == 3 * 224  # large enough: unchanged


def test_dropped_slot_is_crossed_in_red_and_kept_slot_is_not():
    image, gt, pred, alpha = _inputs(64)
    pic = np.asarray(slot_grid(image, gt, pred, alpha, keep=np.array([1, 0, 1])))
    s, tile = 3 * 64, (3 * 3 * 64) // 8
    red = (pic[..., 0] > 200) & (pic[..., 1] < 60) & (pic[..., 2] < 60)
    assert red[s:s + tile, tile:2 * tile].any()  # slot 1: dropped
    assert not red[s:s + tile, 0:tile].any()  # slot 0: kept


def test_merged_slot_wears_its_groups_colour_and_is_not_crossed():
    image, gt, pred, alpha = _inputs(64)
    keep = np.array([1, 0, 1])  # slot 1 merged into slot 0: not a representative any more
    pic = np.asarray(slot_grid(image, gt, pred, alpha, keep=keep, merged_into=np.array([0, 0, 2])))
    s, tile = 3 * 64, (3 * 3 * 64) // 8
    red = (pic[..., 0] > 200) & (pic[..., 1] < 60) & (pic[..., 2] < 60)
    assert not red[s:s + tile, tile:2 * tile].any()  # merged, not dropped
    colour = palette(3)
    assert (pic[s + tile - 1, tile + tile // 2] == colour[0]).all()  # frame of slot 1 = slot 0's colour
    assert (pic[s + tile - 1, 2 * tile + tile // 2] == colour[2]).all()
