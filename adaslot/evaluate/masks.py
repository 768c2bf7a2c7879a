"""From decoder alpha to label maps, the one mask path of `adaslot eval` and `adaslot segment`.

alpha [B, K, T] -> alpha grids [B, K, g, g] -> per image: labels at a protocol's side (bilinear, argmax), at
the original pixels of the crop region, or for the whole original image (docs/method.md#protocols).
Bilinear = align_corners False. Ground truth for the published protocols is resized here too.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from adaslot.data.transforms import Geometry, maps_to_original, resize_masks_nearest_exact
from adaslot.errors import AdaslotError


def alpha_grids(alpha: torch.Tensor) -> torch.Tensor:
    """alpha [B, K, T] (T = g * g tokens) -> [B, K, g, g]."""
    b, k, t = alpha.shape
    g = math.isqrt(t)
    if g * g != t:
        raise AdaslotError(f"{t} tokens do not form a square patch grid")
    return alpha.reshape(b, k, g, g)


def labels_at_side(alpha_grid: torch.Tensor, side: int) -> np.ndarray:
    """alpha [K, g, g] -> slot ids [side, side]: bilinear (align_corners False) to side x side, argmax."""
    up = F.interpolate(alpha_grid[None].float(), size=(side, side), mode="bilinear", align_corners=False)
    return up[0].max(0).indices.cpu().numpy()  # max().indices: same as argmax, ~5x faster on CPU


def labels_fullres(alpha_grid: torch.Tensor, geom: Geometry) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Slot ids at the original pixels of the crop region (alpha sampled bilinearly straight there).

    Returns (labels [bottom - top, right - left], region (top, left, bottom, right)) where the region is
    `geom.crop_region_original()`: the original pixels whose centres fall inside the network input.
    """
    maps, region = maps_to_original(alpha_grid, geom)
    return maps.max(0).indices.cpu().numpy(), region


def alpha_full_image(alpha_grid: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """alpha [K, g, g] -> alpha at every pixel of the original image [K, orig_h, orig_w] (float32, on the
    device of alpha_grid), sampled as in `labels_full_image` (bilinear weights: the sum over K is kept)."""
    return maps_to_original(alpha_grid, geom, full_image=True)[0]


def labels_full_image(alpha_grid: torch.Tensor, geom: Geometry, block: int = 1 << 24) -> np.ndarray:
    """Slot ids for every pixel of the original image [orig_h, orig_w] (argmax over K of `alpha_full_image`).

    Inside the crop region: identical to `labels_fullres`. Outside (the ends of the longer side that the
    center crop cut off, which the model never saw): the alpha maps are extended by edge replication, so
    such a pixel takes the alpha values of the nearest point on the crop border along the cut axis.
    Computed in blocks of whole rows of at most `block` alpha values (64 MB), so a 12-megapixel photo with
    33 slots does not need 1.6 GB at once; every pixel's value is the same as in one pass.
    """
    k = alpha_grid.shape[0]
    step = max(1, block // max(1, k * geom.orig_w))
    parts = [maps_to_original(alpha_grid, geom, full_image=True, rows=(r, r + step))[0].max(0).indices.cpu()
             for r in range(0, geom.orig_h, step)]
    return torch.cat(parts, 0).numpy()


def gt_at_side(masks: np.ndarray, side: int) -> np.ndarray:
    """GT masks [M, H, W] bool, original resolution -> [M, side, side] (published-protocol resize + crop)."""
    return resize_masks_nearest_exact(torch.from_numpy(np.ascontiguousarray(masks)), side).numpy()
