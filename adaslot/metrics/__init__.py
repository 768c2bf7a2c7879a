"""Object-discovery metrics on label maps: pure numpy, per image; the caller averages over images.

Definitions: docs/method.md#metrics (they follow the official ocl code):
- inputs are a predicted label map `pred [H, W]` (slot id per pixel, the argmax over slots) and GT instance
  masks `gt_masks [M, H, W]` bool (or, for FG-ARI, an instance label map `gt [H, W]`, 0 = background/ignored);
- pixels covered by more than one GT mask are ignored in prediction and target (`overlap_free_labels`);
  a GT mask left empty after that is dropped;
- FG-ARI of an image without any GT pixel is 1.0 and counts in the mean (official quirk); mBO / mIoU /
  mask CorLoc of such an image are NaN and the caller skips it (`MetricAccumulator` does);
- how slots and objects pair up (split / merge / background slots, counts): docs/method.md#object-diagnostics.

Two modules: `image` scores one image, `summary` summarises the per-image scores of many.
"""

from adaslot.metrics.image import (
    class_masks,
    fg_ari,
    image_scores,
    iou_matrix,
    mask_corloc,
    mbo,
    miou,
    object_diagnostics,
    overlap_free_labels,
)
from adaslot.metrics.summary import (
    METRIC_KEYS,
    RENAMED_KEYS,
    MetricAccumulator,
    count_confusion,
    slot_count_stats,
    upgrade_metric_keys,
)

__all__ = [
    "METRIC_KEYS",
    "RENAMED_KEYS",
    "MetricAccumulator",
    "class_masks",
    "count_confusion",
    "fg_ari",
    "image_scores",
    "iou_matrix",
    "mask_corloc",
    "mbo",
    "miou",
    "object_diagnostics",
    "overlap_free_labels",
    "slot_count_stats",
    "upgrade_metric_keys",
]
