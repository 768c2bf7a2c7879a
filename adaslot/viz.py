"""PNG pictures of slot masks: one grid per image, and colour label maps. Pillow + numpy only.

Grid layout (`slot_grid`): top row = image | ground truth (without one: the predicted segmentation alone) |
predicted segmentation over the image; below, one tile per slot with its alpha map (white = 1), framed in the
slot's colour; a dropped slot (stage 2) is drawn dimmed with a red cross; a slot merged into another
(`eval --merge-slots`) keeps its own mask, framed in its group's colour and labelled `k>j`. Files are
written atomically.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["colorize", "palette", "save_label_png", "save_png", "slot_grid"]

MIN_SIDE = 192  # pictures of smaller images are magnified to at least this side


def palette(n: int) -> np.ndarray:
    """n distinct RGB colours [n, 3] uint8 (golden-ratio hues), the same for every call; id 0 is not black."""
    cols = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.25 * ((i // 14) % 2)
        cols.append([round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v)])
    return np.asarray(cols, dtype=np.uint8).reshape(n, 3)


def colorize(labels: np.ndarray, background_zero: bool = False) -> np.ndarray:
    """labels [H, W] int -> RGB [H, W, 3] uint8. background_zero: label 0 is drawn black (GT maps)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = int(labels.max()) + 1 if labels.size else 1
    cols = palette(n)
    if background_zero:
        cols = np.concatenate([np.zeros((1, 3), np.uint8), palette(max(n - 1, 1))])[:n]
    return cols[labels]


def _to_uint8_image(image: np.ndarray) -> np.ndarray:
    """image [3, H, W] or [H, W, 3], float in [0, 1] or uint8 -> [H, W, 3] uint8."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize an [H, W] or [H, W, 3] uint8 array to size (W, H)."""
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(arr).resize(size, mode))


def slot_grid(
    image: np.ndarray,
    gt_labels: np.ndarray | None,
    pred_labels: np.ndarray,
    alpha: np.ndarray,
    keep: np.ndarray | None = None,
    title: str = "",
    merged_into: np.ndarray | None = None,
) -> Image.Image:
    """The picture of one image.

    image [3, S, S] float in [0, 1] (the network input), gt_labels [S, S] int (0 = background/ignored) or
    None (unlabelled images: the middle panel shows the predicted slot ids), pred_labels [S, S] int slot
    ids, alpha [K, h, w] per-slot masks (any resolution, in [0, 1]), keep [K] 0/1 or None (stage 1),
    merged_into [K] int or None: the slot each slot was merged into (itself: not merged); a merged slot's
    tile shows its own mask (alpha before merging), the segmentation panels the merged result.
    Returns a PIL image (3 S' wide, S' = S magnified by a whole factor to at least MIN_SIDE).
    """
    img = _to_uint8_image(image)
    # Small inputs (e.g. the demo's 64 px) are magnified by whole pixels so tiles and labels stay readable.
    zoom = max(1, -(-MIN_SIDE // img.shape[0]))
    img, pred_labels = (np.asarray(a).repeat(zoom, 0).repeat(zoom, 1) for a in (img, pred_labels))
    s = img.shape[0]
    k = alpha.shape[0]
    cols = palette(max(k, 1))
    slot_colours = cols[np.clip(pred_labels, 0, k - 1)]
    overlay = (0.45 * img + 0.55 * slot_colours).astype(np.uint8)
    if gt_labels is None:
        middle = slot_colours
    else:
        middle = colorize(np.asarray(gt_labels).repeat(zoom, 0).repeat(zoom, 1), background_zero=True)
    top = np.concatenate([img, middle, overlay], axis=1)

    ncol = 8
    tile = (3 * s) // ncol
    nrow = (k + ncol - 1) // ncol
    canvas = Image.new("RGB", (3 * s, s + nrow * tile + (14 if title else 0)), (40, 40, 40))
    y0 = 14 if title else 0
    canvas.paste(Image.fromarray(top), (0, y0))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 1), title, fill=(230, 230, 230))
    for i in range(k):
        a = (np.clip(np.asarray(alpha[i], dtype=np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
        a = _resize(a, (tile - 4, tile - 4), nearest=False)
        into = int(merged_into[i]) if merged_into is not None else i
        dropped = keep is not None and not bool(keep[i]) and into == i
        rgb = np.repeat(a[..., None], 3, axis=2)
        if dropped or into != i:
            rgb = (rgb * (0.35 if dropped else 0.7)).astype(np.uint8)
        x, y = (i % ncol) * tile, y0 + s + (i // ncol) * tile
        frame = tuple(int(c) for c in cols[into])  # a merged slot wears its group's colour
        draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=frame if not dropped else (90, 90, 90))
        canvas.paste(Image.fromarray(rgb), (x + 2, y + 2))
        if dropped:
            draw.line([x + 2, y + 2, x + tile - 3, y + tile - 3], fill=(220, 30, 30), width=2)
            draw.line([x + 2, y + tile - 3, x + tile - 3, y + 2], fill=(220, 30, 30), width=2)
        draw.text((x + 4, y + 3), str(i) if into == i else f"{i}>{into}", fill=(255, 255, 0))
    return canvas


def save_label_png(path: str | Path, labels: np.ndarray) -> Path:
    """Write a label map [H, W] (slot ids, or 0 = outside / 1 + slot id, see evaluate) as a lossless PNG.

    8-bit grayscale when ids fit (< 256), else 16-bit; values are the ids themselves, not colours.
    """
    labels = np.asarray(labels)
    if labels.size and labels.max() > 255:
        img = Image.fromarray(labels.astype(np.uint16))
    else:
        img = Image.fromarray(labels.astype(np.uint8))  # mode L
    return save_png(img, path)


def save_png(img: Image.Image, path: str | Path, **options: Any) -> Path:
    """Save `img` as a PNG at `path` atomically (temp name + rename; parent folders are created); `options`
    go to `Image.save` (e.g. optimize=True)."""
    from adaslot.files import atomic_path

    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", **options)
    return Path(path)
