"""Scores of one image (docs/method.md#metrics): FG-ARI, mBO, mIoU, mask CorLoc and the object diagnostics.

Everything is built from one contingency table per image (`np.bincount` over `gt_label * K + slot`), so an
image at full resolution costs a few passes over its pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

# Above this many contingency cells, compact the label ids with np.unique first (never hit with slot ids and
# per-image instance indices; guards against callers passing e.g. raw annotation ids).
_MAX_DENSE_CELLS = 1 << 22
# Object diagnostics (`object_diagnostics`): a slot holds a real share of an object at >= 20 % of its pixels,
# and covers it at more than half of them.
HOLD_SHARE = 0.2
COVER_SHARE = 0.5


def overlap_free_labels(gt_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instance label map of `gt_masks [M, H, W]` bool -> (labels [H, W] int32, overlap [H, W] bool).

    labels[p] = m + 1 where exactly mask m covers p; 0 for background and for overlap pixels (covered by
    two or more masks), which `overlap` marks so they can be ignored in prediction too.
    """
    gt_masks = np.asarray(gt_masks, dtype=bool)
    if gt_masks.ndim != 3:
        raise ValueError(f"gt_masks must be [M, H, W], got shape {gt_masks.shape}")
    m, h, w = gt_masks.shape
    labels = np.zeros((h, w), np.int32)
    overlap = np.zeros((h, w), bool)
    # One pass per mask (faster than reductions over the mask axis of a [M, H, W] stack).
    for i, mask in enumerate(gt_masks):
        overlap |= mask & (labels > 0)
        labels[mask] = i + 1
    labels[overlap] = 0
    return labels, overlap


def class_masks(gt_masks: np.ndarray, categories: npt.ArrayLike) -> np.ndarray:
    """Merge instance masks by category: `gt_masks [M, H, W]`, `categories [M]` -> `[C, H, W]` bool.

    Classes are in sorted category order; the result feeds `mbo` for mBO^c (its own overlap rule then
    applies between different categories only, as in ocl's per-class segmentation masks).
    """
    gt_masks = np.asarray(gt_masks, dtype=bool)
    category = np.asarray(categories)
    if len(category) != len(gt_masks):
        raise ValueError(f"{len(gt_masks)} masks but {len(category)} categories")
    cats = np.unique(category)
    out = np.zeros((len(cats),) + gt_masks.shape[1:], bool)
    for i, c in enumerate(cats):
        np.any(gt_masks[category == c], axis=0, out=out[i])
    return out


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts n[i, j] = #{p : a[p] = i, b[p] = j} of flat non-negative int arrays -> [max a + 1, max b + 1].

    Ids are used directly as indices (rows/columns of absent ids are 0); very sparse ids are compacted first.
    """
    if a.size == 0:
        return np.zeros((1, 1), np.int64)
    a = a.astype(np.int64, copy=False)
    b = b.astype(np.int64, copy=False)
    if a.min() < 0 or b.min() < 0:
        raise ValueError("label ids must be non-negative")
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    if na * nb > _MAX_DENSE_CELLS:
        _, a = np.unique(a, return_inverse=True)
        _, b = np.unique(b, return_inverse=True)
        na, nb = int(a.max()) + 1, int(b.max()) + 1
    return np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb)


def _ari_from_contingency(n: np.ndarray) -> float:
    """ARI of a contingency table [A, B]; 1.0 if the denominator is 0 (both one cluster / all singletons)."""
    n = n.astype(np.float64)
    a, b = n.sum(1), n.sum(0)
    total = a.sum()
    # Pair counts x(x-1); the 1/2 of C(x, 2) cancels in the ratio (as in ocl).
    rindex = float((n * (n - 1)).sum())
    aindex = float((a * (a - 1)).sum())
    bindex = float((b * (b - 1)).sum())
    expected = aindex * bindex / max(total * (total - 1), 1.0)
    denominator = (aindex + bindex) / 2 - expected
    if denominator <= 0:
        return 1.0
    return float((rindex - expected) / denominator)


def fg_ari(pred: np.ndarray, gt: np.ndarray) -> float:
    """Foreground adjusted Rand index between `pred [H, W]` slot ids and `gt [H, W]` instance ids.

    Only pixels with gt > 0 count (0 = background or ignored, e.g. overlaps; see `overlap_free_labels`).
    No such pixel -> 1.0 (official quirk: the image still counts in the mean).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    fg = gt > 0
    if not fg.any():
        return 1.0
    return _ari_from_contingency(_contingency(gt[fg], pred[fg]))


def iou_matrix(pred: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """IoU between every non-empty GT mask and every slot: `pred [H, W]`, `gt_masks [M, H, W]` -> `[M', P]`.

    Overlap pixels are removed from prediction and target first, then GT masks left empty are dropped
    (M' <= M rows, in input order). Columns are slot ids 0..max(pred); a slot without pixels has IoU 0.
    """
    pred = np.asarray(pred)
    gt_masks = np.asarray(gt_masks, dtype=bool)
    if gt_masks.shape[1:] != pred.shape:
        raise ValueError(f"pred {pred.shape} and gt_masks {gt_masks.shape} differ in shape")
    return _iou_from_labels(pred, *overlap_free_labels(gt_masks), len(gt_masks))


def _iou_from_labels(pred: np.ndarray, labels: np.ndarray, overlap: np.ndarray, num_masks: int) -> np.ndarray:
    """`iou_matrix` from precomputed `overlap_free_labels` of `num_masks` GT masks."""
    return _iou_from_table(_slot_table(pred, labels, overlap, num_masks))


def _slot_table(pred: np.ndarray, labels: np.ndarray, overlap: np.ndarray, num_masks: int) -> np.ndarray:
    """Pixel counts [1 + M', P] over the non-ignored pixels: row 0 = background, row 1 + i = the i-th GT mask
    that is non-empty after overlap removal (input order); column s = slot id s (P = max(pred) + 1)."""
    valid = ~overlap
    n = _contingency(labels[valid], pred[valid])  # row 0 = background, row m + 1 = instance m
    num_slots = max(int(pred.max()) + 1 if pred.size else 1, n.shape[1])
    counts = np.zeros((num_masks + 1, num_slots), np.int64)
    counts[: n.shape[0], : n.shape[1]] = n
    return np.concatenate([counts[:1], counts[1:][counts[1:].sum(1) > 0]])


def _iou_from_table(counts: np.ndarray) -> np.ndarray:
    """IoU [M', P] of every object row of a `_slot_table` with every slot (background counts in slot area)."""
    inter = counts[1:].astype(np.float64)  # [M', P]
    gt_area = inter.sum(1, keepdims=True)
    slot_area = counts.sum(0, keepdims=True).astype(np.float64)  # includes background pixels
    union = gt_area + slot_area - inter
    iou: np.ndarray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


def mbo(pred: np.ndarray, gt_masks: np.ndarray) -> float:
    """Mean best overlap: mean over GT masks of the max IoU over slots (slots may be reused); NaN if no GT.

    mBO^i with instance masks, mBO^c with `class_masks(...)`.
    """
    iou = iou_matrix(pred, gt_masks)
    if len(iou) == 0:
        return math.nan
    return float(iou.max(1).mean())


def _hungarian(iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The matching maximising total IoU -> (rows, cols). scipy.optimize is imported on first use: it costs
    seconds, and segment / train import this module without scoring (docs/scale.md)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(iou, maximize=True)
    return rows, cols


def miou(pred: np.ndarray, gt_masks: np.ndarray) -> float:
    """Hungarian mean IoU: one slot per GT mask maximising total IoU, unmatched GT count 0; NaN if no GT."""
    iou = iou_matrix(pred, gt_masks)
    if len(iou) == 0:
        return math.nan
    rows, cols = _hungarian(iou)
    return float(iou[rows, cols].sum() / len(iou))


def mask_corloc(pred: np.ndarray, gt_masks: np.ndarray, threshold: float = 0.5) -> float:
    """1.0 if some GT mask has best-overlap IoU > threshold with a slot's mask, else 0.0; NaN if no GT.

    Mask IoU, not the literature's box CorLoc (docs/method.md#metrics); the mean over images is mask_corloc.
    """
    iou = iou_matrix(pred, gt_masks)
    if len(iou) == 0:
        return math.nan
    return float(iou.max(1).max() > threshold)


def object_diagnostics(pred: np.ndarray, gt_masks: np.ndarray, hold_share: float = HOLD_SHARE,
                       cover_share: float = COVER_SHARE) -> dict[str, float]:
    """How slots and GT objects pair up in one image: `pred [H, W]` slot ids, `gt_masks [M, H, W]` bool.

    Pixels covered by two or more GT masks are ignored; GT masks left empty are dropped (as in `mbo`).
    Returns counts (as floats, like every per-image score):
    - active_slots: slots winning at least one pixel of `pred` (ignored pixels included);
    - split_objects: GT objects held by >= 2 slots, where slot s holds object m when it wins
      >= hold_share of m's pixels;
    - merge_slots: slots covering >= 2 objects, where slot s covers object m when it wins more than
      cover_share of m's pixels (with the default 1/2 an object has at most one covering slot);
    - background_slots: active slots whose non-ignored pixels are more than half background.
    """
    pred = np.asarray(pred)
    labels, overlap = overlap_free_labels(gt_masks)
    if labels.shape != pred.shape:
        raise ValueError(f"pred {pred.shape} and gt_masks {np.shape(gt_masks)} differ in shape")
    return _diagnostics(pred, _slot_table(pred, labels, overlap, len(gt_masks)), hold_share, cover_share)


def _diagnostics(pred: np.ndarray, counts: np.ndarray, hold_share: float, cover_share: float
                 ) -> dict[str, float]:
    """`object_diagnostics` from a `_slot_table` [1 + M', P] of `pred`."""
    if not (0 < hold_share <= 1 and 0 <= cover_share < 1):
        raise ValueError(f"need 0 < hold_share <= 1 and 0 <= cover_share < 1, got {hold_share} and "
                         f"{cover_share}")
    num_slots = counts.shape[1]
    active = np.bincount(pred.ravel().astype(np.int64), minlength=num_slots)[:num_slots] > 0
    objects = counts[1:]  # [M', P], every row non-empty
    # Shares by division: exact fractions such as 3/15 compare equal to the literal 0.2.
    share = objects / objects.sum(1, keepdims=True) if len(objects) else np.zeros((0, num_slots))
    holders = (share >= hold_share).sum(1)  # [M']
    covered = (share > cover_share).sum(0)  # [P]
    background = active & (2 * counts[0] > counts.sum(0))
    return {"active_slots": float(active.sum()), "split_objects": float((holders >= 2).sum()),
            "merge_slots": float((covered >= 2).sum()), "background_slots": float(background.sum())}


def image_scores(
    pred: np.ndarray, gt_masks: np.ndarray, categories: Sequence[int] | None = None,
    hold_share: float = HOLD_SHARE, cover_share: float = COVER_SHARE,
) -> dict[str, float]:
    """All per-image metrics at once: keys fg_ari, mbo_i, mbo_c, miou, mask_corloc, num_objects and the
    `object_diagnostics` counts (active_slots, split_objects, merge_slots, background_slots).

    `pred [H, W]` slot ids, `gt_masks [M, H, W]` bool, `categories [M]` (None -> mbo_c is NaN).
    num_objects = GT masks that are non-empty after removing overlap pixels.
    """
    pred = np.asarray(pred)
    gt_masks = np.asarray(gt_masks, dtype=bool)
    if gt_masks.shape[1:] != pred.shape:
        raise ValueError(f"pred {pred.shape} and gt_masks {gt_masks.shape} differ in shape")
    labels, overlap = overlap_free_labels(gt_masks)
    table = _slot_table(pred, labels, overlap, len(gt_masks))
    iou = _iou_from_table(table)
    out = {"fg_ari": fg_ari(pred, labels), "num_objects": float(len(iou))}
    if len(iou) == 0:
        out.update(mbo_i=math.nan, miou=math.nan, mask_corloc=math.nan)
    else:
        best = iou.max(1)
        rows, cols = _hungarian(iou)
        out.update(
            mbo_i=float(best.mean()),
            miou=float(iou[rows, cols].sum() / len(iou)),
            mask_corloc=float(best.max() > 0.5),
        )
    out["mbo_c"] = math.nan if categories is None or len(gt_masks) == 0 else mbo(
        pred, class_masks(gt_masks, categories)
    )
    out.update(_diagnostics(pred, table, hold_share, cover_share))
    return out
