"""Object-discovery metrics on label maps: pure numpy, per image; the caller averages over images.

Definitions: docs/method.md#metrics (they follow the official ocl code):
- inputs are a predicted label map `pred [H, W]` (slot id per pixel, the argmax over slots) and GT instance
  masks `gt_masks [M, H, W]` bool (or, for FG-ARI, an instance label map `gt [H, W]`, 0 = background/ignored);
- pixels covered by more than one GT mask are ignored in prediction and target (`overlap_free_labels`);
  a GT mask left empty after that is dropped;
- FG-ARI of an image without any GT pixel is 1.0 and counts in the mean (official quirk); mBO / mIoU / CorLoc
  of such an image are NaN and the caller skips it (`MetricAccumulator` does).

Everything is built from one contingency table per image (`np.bincount` over `gt_label * K + slot`), so an
image at full resolution costs a few passes over its pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "MetricAccumulator",
    "class_masks",
    "corloc",
    "fg_ari",
    "image_scores",
    "iou_matrix",
    "mbo",
    "miou",
    "overlap_free_labels",
    "slot_count_stats",
]

# Above this many contingency cells, compact the label ids with np.unique first (never hit with slot ids and
# per-image instance indices; guards against callers passing e.g. raw annotation ids).
_MAX_DENSE_CELLS = 1 << 22


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


def class_masks(gt_masks: np.ndarray, categories: Sequence[int]) -> np.ndarray:
    """Merge instance masks by category: `gt_masks [M, H, W]`, `categories [M]` -> `[C, H, W]` bool.

    Classes are in sorted category order; the result feeds `mbo` for mBO^c (its own overlap rule then
    applies between different categories only, as in ocl's per-class segmentation masks).
    """
    gt_masks = np.asarray(gt_masks, dtype=bool)
    categories = np.asarray(categories)
    if len(categories) != len(gt_masks):
        raise ValueError(f"{len(gt_masks)} masks but {len(categories)} categories")
    cats = np.unique(categories)
    out = np.zeros((len(cats),) + gt_masks.shape[1:], bool)
    for i, c in enumerate(cats):
        np.any(gt_masks[categories == c], axis=0, out=out[i])
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
    return (rindex - expected) / denominator


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
    valid = ~overlap
    n = _contingency(labels[valid], pred[valid])  # row 0 = background, row m + 1 = instance m
    num_slots = max(int(pred.max()) + 1 if pred.size else 1, n.shape[1])
    counts = np.zeros((num_masks + 1, num_slots), np.int64)
    counts[: n.shape[0], : n.shape[1]] = n
    inter = counts[1:].astype(np.float64)  # [M, P]
    gt_area = inter.sum(1, keepdims=True)
    slot_area = counts.sum(0, keepdims=True).astype(np.float64)  # includes background pixels
    union = gt_area + slot_area - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou[gt_area[:, 0] > 0]


def mbo(pred: np.ndarray, gt_masks: np.ndarray) -> float:
    """Mean best overlap: mean over GT masks of the max IoU over slots (slots may be reused); NaN if no GT.

    mBO^i with instance masks, mBO^c with `class_masks(...)`.
    """
    iou = iou_matrix(pred, gt_masks)
    if len(iou) == 0:
        return math.nan
    return float(iou.max(1).mean())


def miou(pred: np.ndarray, gt_masks: np.ndarray) -> float:
    """Hungarian mean IoU: one slot per GT mask maximising total IoU, unmatched GT count 0; NaN if no GT."""
    iou = iou_matrix(pred, gt_masks)
    if len(iou) == 0:
        return math.nan
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return float(iou[rows, cols].sum() / len(iou))


def corloc(pred: np.ndarray, gt_masks: np.ndarray, threshold: float = 0.5) -> float:
    """1.0 if some GT mask has best-overlap IoU > threshold, else 0.0; NaN if no GT (the mean is CorLoc)."""
    iou = iou_matrix(pred, gt_masks)
    if len(iou) == 0:
        return math.nan
    return float(iou.max(1).max() > threshold)


def image_scores(
    pred: np.ndarray, gt_masks: np.ndarray, categories: Sequence[int] | None = None
) -> dict[str, float]:
    """All per-image metrics at once: keys fg_ari, mbo_i, mbo_c, miou, corloc, num_objects.

    `pred [H, W]` slot ids, `gt_masks [M, H, W]` bool, `categories [M]` (None -> mbo_c is NaN).
    num_objects = GT masks that are non-empty after removing overlap pixels.
    """
    pred = np.asarray(pred)
    gt_masks = np.asarray(gt_masks, dtype=bool)
    if gt_masks.shape[1:] != pred.shape:
        raise ValueError(f"pred {pred.shape} and gt_masks {gt_masks.shape} differ in shape")
    labels, overlap = overlap_free_labels(gt_masks)
    iou = _iou_from_labels(pred, labels, overlap, len(gt_masks))
    out = {"fg_ari": fg_ari(pred, labels), "num_objects": float(len(iou))}
    if len(iou) == 0:
        out.update(mbo_i=math.nan, miou=math.nan, corloc=math.nan)
    else:
        best = iou.max(1)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        out.update(
            mbo_i=float(best.mean()),
            miou=float(iou[rows, cols].sum() / len(iou)),
            corloc=float(best.max() > 0.5),
        )
    out["mbo_c"] = math.nan if categories is None or len(gt_masks) == 0 else mbo(
        pred, class_masks(gt_masks, categories)
    )
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def slot_count_stats(kept: Sequence[int], num_objects: Sequence[int]) -> dict:
    """Kept-slot statistics of an adaptive model over images.

    Returns mean (kept slots per image), histogram (list: entry k = #images with k kept slots) and
    pearson_r between kept slots and the number of GT objects (NaN if either is constant or < 2 images).
    """
    k = np.asarray(kept, dtype=np.float64)
    o = np.asarray(num_objects, dtype=np.float64)
    if k.shape != o.shape:
        raise ValueError(f"{len(k)} kept counts but {len(o)} object counts")
    if len(k) == 0:
        return {"mean": math.nan, "histogram": [], "pearson_r": math.nan}
    return {
        "mean": float(k.mean()),
        "histogram": np.bincount(k.astype(np.int64)).tolist(),
        "pearson_r": _pearson(k, o),
    }


@dataclass
class MetricAccumulator:
    """Running means of per-image scores: NaN entries (images without GT) are skipped per metric.

    `summary()` gives each metric's mean, num_images (all images added) and num_skipped (images without
    any GT mask, i.e. not in the mBO / mIoU / CorLoc means; they do count in FG-ARI).
    """

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    num_images: int = 0
    num_skipped: int = 0
    kept: list[int] = field(default_factory=list)
    objects: list[int] = field(default_factory=list)

    def add(self, scores: dict[str, float], kept_slots: int | None = None) -> None:
        self.num_images += 1
        if scores.get("num_objects", 1) == 0:
            self.num_skipped += 1
        for key, value in scores.items():
            if key == "num_objects" or value is None or math.isnan(value):
                continue
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1
        if kept_slots is not None:
            self.kept.append(int(kept_slots))
            self.objects.append(int(scores.get("num_objects", 0)))

    def summary(self) -> dict:
        out: dict = {}
        for key in ("fg_ari", "mbo_i", "mbo_c", "miou", "corloc"):
            n = self.counts.get(key, 0)
            out[key] = self.sums[key] / n if n else math.nan
        out["num_images"] = self.num_images
        out["num_skipped"] = self.num_skipped
        if self.kept:
            stats = slot_count_stats(self.kept, self.objects)
            out["mean_kept_slots"] = stats["mean"]
            out["kept_vs_objects_r"] = stats["pearson_r"]
            out["kept_histogram"] = stats["histogram"]
        return out
