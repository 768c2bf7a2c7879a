"""The dataset a `config.DataSpec` names, whatever its `--dataset`: COCO-format data (`data.coco`), MOVi
(`data.movi`) or ocl's COCO shards (`data.coco_wds`). The last two have CocoDataset's interface (items,
`record`, `skips`, `ground_truth`, `image_info`, `summary`), so every loop reads them unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adaslot.config.data import DataSpec


def open_dataset(spec: DataSpec, size: int, views: int = 1, antialias: bool = False,
                 annotations: bool = True) -> Any:
    """The dataset of `spec` at network input side `size` (never strict itself: loops apply the policy;
    with `spec.strict`, what is known bad before reading is refused here). annotations=False: a COCO-format
    dataset reads its image list alone (no ground truth; what cache-features needs)."""
    if spec.dataset == "movi":
        from adaslot.data.movi import open_movi

        return open_movi(spec, size, views)
    if spec.dataset == "coco-wds":
        from adaslot.data.coco_wds import open_coco_wds

        return open_coco_wds(spec, size, views, antialias)
    from adaslot.data.coco import open_dataset as open_coco

    return open_coco(spec, size, views, antialias, annotations=annotations)
