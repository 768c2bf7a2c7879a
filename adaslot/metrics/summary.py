"""Summaries of per-image scores over many images: means, slot-count statistics, count confusion.

The per-image scores come from `adaslot.metrics.image.image_scores`; docs/method.md#object-diagnostics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

# Metric keys renamed since earlier versions: old name -> new name (files written before still load).
RENAMED_KEYS = {"corloc": "mask_corloc"}


def upgrade_metric_keys(scores: dict[str, Any]) -> dict[str, Any]:
    """A copy of `scores` (a metrics.json protocol entry or a sweep score) with old key names renamed
    (RENAMED_KEYS); a key already present under its new name wins."""
    out = dict(scores)
    for old, new in RENAMED_KEYS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out

def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def slot_count_stats(kept: npt.ArrayLike, num_objects: npt.ArrayLike) -> dict[str, Any]:
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


def count_confusion(slots: npt.ArrayLike, num_objects: npt.ArrayLike) -> list[list[int]]:
    """Images per (object count, slot count): `[O + 1][S + 1]` nested lists, entry [o][s] = #images with o GT
    objects and s slots (O, S = the largest counts seen; [] without images)."""
    s = np.asarray(slots, dtype=np.int64)
    o = np.asarray(num_objects, dtype=np.int64)
    if s.shape != o.shape:
        raise ValueError(f"{len(s)} slot counts but {len(o)} object counts")
    if len(s) == 0:
        return []
    width = int(s.max()) + 1
    flat = np.bincount(o * width + s, minlength=(int(o.max()) + 1) * width)
    counts: list[list[int]] = flat.reshape(-1, width).tolist()
    return counts


def _nanmean(values: npt.ArrayLike) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else math.nan


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


METRIC_KEYS = ("fg_ari", "mbo_i", "mbo_c", "miou", "mask_corloc")


@dataclass
class MetricAccumulator:
    """Per-image scores (`image_scores` dicts) of one protocol, summarised over images by `summary()`.

    NaN entries (images without GT) are skipped per metric. `kept_slots` (stage 2: the number of slots the
    model kept for the image) is stored in the row; it counts only when every image has it.
    """

    rows: list[dict[str, float]] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return len(self.rows)

    def add(self, scores: dict[str, float], kept_slots: int | None = None) -> None:
        row = dict(scores)
        if kept_slots is not None:
            row["kept_slots"] = float(kept_slots)
        self.rows.append(row)

    def summary(self) -> dict[str, Any]:
        """Means of METRIC_KEYS; num_images; num_skipped (images without any GT mask: not in the mBO / mIoU /
        mask CorLoc means, but in FG-ARI's); mean_objects. With `object_diagnostics` in the scores:
        split_rate (objects held by >= 2 slots / all objects), merge_rate (slots covering >= 2 objects /
        active slots), background_slots (mean per image), mean_active_slots, active_vs_objects_r,
        count_confusion {"slots": "kept" or "active", "counts": `count_confusion`} and per_object_count
        {"<objects>": {num_images, fg_ari, mbo_i, split_rate, mean_slots}} (JSON-ready: string keys).
        With kept slots (stage 2): mean_kept_slots, kept_vs_objects_r, kept_histogram; the confusion
        matrix and mean_slots then count kept slots, else active ones."""
        rows = self.rows

        def column(key: str) -> np.ndarray:
            return np.asarray([r.get(key, math.nan) for r in rows], dtype=np.float64)

        out: dict[str, Any] = {key: _nanmean(column(key)) for key in METRIC_KEYS}
        objects = column("num_objects")
        out["num_images"] = len(rows)
        out["num_skipped"] = int((objects == 0).sum())
        out["mean_objects"] = _nanmean(objects)
        kept = column("kept_slots")
        has_kept = bool(rows) and not np.isnan(kept).any()
        if has_kept:
            stats = slot_count_stats(kept, objects)
            out["mean_kept_slots"] = stats["mean"]
            out["kept_vs_objects_r"] = stats["pearson_r"]
            out["kept_histogram"] = stats["histogram"]
        if not rows or any("active_slots" not in r for r in rows):
            return out
        active = column("active_slots")
        out["split_rate"] = _ratio(column("split_objects").sum(), objects.sum())
        out["merge_rate"] = _ratio(column("merge_slots").sum(), active.sum())
        out["background_slots"] = float(column("background_slots").mean())
        out["mean_active_slots"] = float(active.mean())
        out["active_vs_objects_r"] = _pearson(active, objects)
        slots, source = (kept, "kept") if has_kept else (active, "active")
        out["count_confusion"] = {"slots": source, "counts": count_confusion(slots, objects)}
        per_count = {}
        fg_ari, mbo_i, split = column("fg_ari"), column("mbo_i"), column("split_objects")
        for n in np.unique(objects).astype(np.int64):
            sel = objects == n
            per_count[str(n)] = {
                "num_images": int(sel.sum()),
                "fg_ari": _nanmean(fg_ari[sel]),
                "mbo_i": _nanmean(mbo_i[sel]),
                "split_rate": _ratio(split[sel].sum(), objects[sel].sum()),
                "mean_slots": float(slots[sel].mean()),
            }
        out["per_object_count"] = per_count
        return out
