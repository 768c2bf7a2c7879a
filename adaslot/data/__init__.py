"""Data: COCO-format datasets (pycocotools), MOVi and ocl's webdataset shards without TensorFlow
(docs/movi.md), the image transforms (docs/method.md#transforms) with their geometry, and the built-in
synthetic shapes dataset. Heavy modules are imported lazily by the names below."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "CocoDataset": "adaslot.data.coco",
    "GroundTruth": "adaslot.data.coco",
    "Skip": "adaslot.data.coco",
    "SkipLog": "adaslot.data.coco",
    "collate": "adaslot.data.coco",
    "open_dataset": "adaslot.data.coco",
    "Geometry": "adaslot.data.transforms",
    "ImageLoadError": "adaslot.data.transforms",
    "compute_geometry": "adaslot.data.transforms",
    "describe_transform": "adaslot.data.transforms",
    "hflip": "adaslot.data.transforms",
    "load_image": "adaslot.data.transforms",
    "maps_to_original": "adaslot.data.transforms",
    "resize_masks_nearest_exact": "adaslot.data.transforms",
    "transform_image": "adaslot.data.transforms",
    "MoviDataset": "adaslot.data.movi",
    "train_frames": "adaslot.data.movi",
    "CocoWdsDataset": "adaslot.data.coco_wds",
    "SyntheticConfig": "adaslot.data.synthetic",
    "run_make_synthetic": "adaslot.data.make_synthetic",
    "render_scene": "adaslot.data.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy: `import adaslot.data.synthetic` must not pull in torch (make-synthetic stays fast to start).
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'adaslot.data' has no attribute {name!r}")
