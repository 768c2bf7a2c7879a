"""Reference scores of a dataset, independent of any model: the patch-grid ceiling of FG-ARI and the best
trivial prediction (adaslot protocol: crowd kept, GT at `side`, overlap pixels ignored)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from adaslot.errors import AdaslotError
from adaslot.evaluate.masks import gt_at_side
from adaslot.evaluate.scoring import EvalDataset, EvalItem
from adaslot.metrics import fg_ari, overlap_free_labels

if TYPE_CHECKING:
    from adaslot.data.coco import CocoDataset


def _gt_labels(dataset: CocoDataset | Dataset | Sequence[EvalItem], side: int, max_images: int | None):
    """Overlap-free GT label maps [side, side] of the usable images (at most `max_images`)."""
    from adaslot.data.coco import CocoDataset

    if isinstance(dataset, CocoDataset):
        dataset = EvalDataset(dataset, with_images=False)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)  # type: ignore[arg-type]  # Dataset has __len__ at run time
    for i in range(n):
        item = dataset[i]
        if isinstance(item, EvalItem):
            yield overlap_free_labels(gt_at_side(item.masks, side))[0]


def patch_ceiling(dataset: CocoDataset | Dataset | Sequence[EvalItem], grid: int = 14, side: int = 224,
                  max_images: int | None = None) -> float:
    """Best FG-ARI a patch-grid labelling reaches on `dataset`, mean over images.

    Each of the grid x grid patches gets the GT object covering most of its foreground pixels (a patch without
    foreground gets the background label), every pixel of the patch takes that label, and FG-ARI is scored
    against the GT at `side`. Models whose masks live on the same patch grid get close to this only by
    bilinear smoothing of boundaries within a patch.
    """
    patch_of = (np.arange(side) * grid) // side  # patch row/column of every pixel row/column
    pid = patch_of[:, None] * grid + patch_of[None, :]
    scores = []
    for labels in _gt_labels(dataset, side, max_images):
        nl = int(labels.max()) + 1
        counts = np.bincount((pid * nl + labels).ravel(), minlength=grid * grid * nl).reshape(grid * grid, nl)
        counts[:, 0] = 0  # background never wins a patch that has some foreground
        majority = np.where(counts.max(1) > 0, counts.argmax(1), 0)
        scores.append(fg_ari(majority[pid], labels))
    if not scores:
        raise AdaslotError("patch ceiling: no usable image in the dataset")
    return float(np.mean(scores))


def trivial_baseline(dataset: CocoDataset | Dataset | Sequence[EvalItem], max_blocks: int, side: int = 224,
                     max_images: int | None = None) -> dict[str, Any]:
    """Best trivial FG-ARI: one label everywhere, or a fixed r x c grid of blocks with r * c <= max_blocks
    (the same grid for every image) -> {"best", "best_prediction", "all": {"rxc": mean FG-ARI}}."""
    sizes = range(1, max_blocks + 1)
    grids = [(r, c) for r in sizes for c in sizes if r * c <= max_blocks]
    blocks = {(r, c): ((np.arange(side) * r) // side)[:, None] * c + ((np.arange(side) * c) // side)[None, :]
              for r, c in grids}
    sums = dict.fromkeys(grids, 0.0)
    n = 0
    for labels in _gt_labels(dataset, side, max_images):
        for g in grids:
            sums[g] += fg_ari(blocks[g], labels)
        n += 1
    scores = {f"{r}x{c}": s / max(n, 1) for (r, c), s in sums.items()}
    best = max(scores, key=scores.__getitem__)
    return {"best": scores[best], "best_prediction": "one slot everywhere" if best == "1x1" else
            f"fixed {best} grid", "all": scores}
