"""COCO as the webdataset shards of ocl's conversion (`--dataset coco-wds`, docs/movi.md#coco-shards).

ROOT/{split}/shard-*.tar (or shards straight in ROOT). Sample key = str(image_id); members `image.jpg` (the
original JPEG bytes), `instance_mask.npy[.gz]` (uint8 [N, H, W, 1], one mask per annotation from
pycocotools' annToMask, crowd included), `instance_category.npy[.gz]` (uint8 [N], COCO category ids); any
member over 512 bytes is gzipped, so each may or may not end in `.gz`. An image without annotations has no
instance members. Other members (bbox, area, captions, stuff) are never read.

Samples are ordered by image id (as `data.coco.CocoDataset`), so the index space, the items, the ground
truth and the metrics equal the pycocotools path on the same images. The shards do not record `iscrowd`:
every annotation counts as non-crowd, which is the AdaSlot protocol (crowd kept) but not DINOSAUR's (crowd
dropped), so eval refuses `--protocol dinosaur` on these shards.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaslot.data import wds
from adaslot.data.coco import GroundTruth, Skip, SkipLog
from adaslot.data.transforms import ImageLoadError, hflip, load_image, transform_image
from adaslot.errors import AdaslotError


def _image_member(sample: wds.TarSample) -> str | None:
    return next((m for m in sorted(sample.members) if m.split(".")[0] == "image"), None)


class CocoWdsDataset(torch.utils.data.Dataset):
    """The shards of one split, with the `CocoDataset` interface the loops use (items, `record`, `skips`,
    `ground_truth`, `image_info`, `summary`). size / views / antialias as in CocoDataset."""

    def __init__(self, root: str | Path, split: str = "train", size: int = 224, views: int = 1,
                 antialias: bool = False) -> None:
        root = Path(root)
        folder = root / split if wds.shard_paths(root / split) else root
        shards = wds.shard_paths(folder)
        if not shards:
            raise AdaslotError(f"no shard-*.tar in {root / split} or {root}: is it a folder of COCO "
                               "webdataset shards (docs/movi.md#coco-shards)?")
        if views not in (1, 2):
            raise AdaslotError(f"views must be 1 or 2, got {views}")
        self.folder, self.split, self.size, self.views, self.antialias = folder, split, size, views, antialias
        self.skips = SkipLog()
        self.notes: Counter[str] = Counter()
        samples: dict[int, wds.TarSample] = {}
        for path in shards:
            found, err = wds.index_shard(path)
            for s in found:
                image_id = wds.numeric_key(s)
                if image_id is None:
                    self.skips.add(Skip(-1, f"{path.name}#{s.key}", "bad-key", "key is not an image id"))
                    continue
                if _image_member(s) is None:
                    self.skips.add(Skip(image_id, f"{path.name}#{s.key}", "missing", "no image member"))
                    continue
                samples[image_id] = s
            if err is not None:
                self.skips.add(Skip(-1 - len(self.skips.items), path.name, err.reason, err.detail))
        self.image_ids: list[int] = sorted(samples)
        self._samples = [samples[i] for i in self.image_ids]
        self._index = {i: k for k, i in enumerate(self.image_ids)}
        self.num_listed = len(self.image_ids) + sum(1 for s in self.skips.items if s.reason == "missing")
        self.num_without_annotations = sum(1 for s in self._samples if s.find("instance_mask") is None)
        self.images_dir = self.annotation_file = folder

    def __len__(self) -> int:
        return len(self.image_ids)

    def _file(self, index: int) -> str:
        s = self._samples[index]
        return f"{Path(s.shard).name}#{s.key}"

    def index_of(self, image_id: int) -> int:
        return self._index[image_id]

    def _masks(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(instance masks uint8 [N, H, W], categories int64 [N]); N = 0 without annotations."""
        s = self._samples[index]
        if s.find("instance_mask") is None:
            return np.zeros((0, 0, 0), np.uint8), np.zeros(0, np.int64)
        masks = wds.read_array(s, str(s.find("instance_mask")))
        cats = wds.read_array(s, str(s.find("instance_category"))) if s.find("instance_category") else \
            np.zeros(len(masks), np.int64)
        return masks.reshape(masks.shape[:3]), cats.astype(np.int64)

    def _load(self, index: int) -> tuple[Any, list[str]]:
        s = self._samples[index]
        data = wds.read_member(s, str(_image_member(s)))
        wh = None
        if s.find("instance_mask") is not None:  # the annotations' frame: [N, H, W, 1]
            h, w = wds.read_npy_shape(s, str(s.find("instance_mask")))[1:3]
            wh = (int(w), int(h))
        loaded = load_image(self._file(index), expected_wh=wh, data=data)
        notes = ["exif-transposed"] if loaded.exif_transposed else []
        if loaded.source_mode != "RGB":
            notes.append(f"converted-from-{loaded.source_mode}")
        return loaded.image, notes

    def image_info(self, index: int) -> dict[str, Any]:
        image, _ = self._load(index)
        return {"id": self.image_ids[index], "file_name": self._file(index), "height": image.height,
                "width": image.width}

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, file = self.image_ids[index], self._file(index)
        try:
            image, notes = self._load(index)
        except (ImageLoadError, wds.MemberError) as e:
            return Skip(image_id, file, e.reason, e.detail, index).item()
        x, geom = transform_image(image, self.size, antialias=self.antialias)
        if self.views == 2:
            x = torch.stack([x, hflip(x)])
        return {"ok": True, "index": index, "image_id": image_id, "file": file, "image": x, "geometry": geom,
                "notes": notes}

    def record(self, batch_or_item: dict[str, Any]) -> list[Skip]:
        """Keep the skips and notes of a collated batch or one item (see `CocoDataset.record`)."""
        return self.skips.record(batch_or_item, self.notes)

    def ground_truth(self, image_id: int, include_crowd: bool = True) -> GroundTruth:
        """As `CocoDataset.ground_truth` (empty masks dropped); iscrowd is unknown here: all False."""
        index = self.index_of(image_id)
        try:
            masks, cats = self._masks(index)
            if len(masks) == 0:
                info = self.image_info(index)
                h, w = info["height"], info["width"]
                masks = np.zeros((0, h, w), bool)
        except (wds.MemberError, ImageLoadError) as e:
            empty = np.zeros((0, 1, 1), bool)
            return GroundTruth(image_id, 1, 1, empty, np.zeros(0, np.int64), np.zeros(0, bool), empty,
                               np.zeros(0, np.int64), [f"image {image_id}: {e}"])
        inst = masks.astype(bool)
        keep = inst.reshape(len(inst), -1).any(1)
        inst, cats = inst[keep], cats[keep]
        class_ids = np.unique(cats)
        h, w = inst.shape[1:] if len(inst) else masks.shape[1:3]
        class_masks = (np.stack([inst[cats == c].any(0) for c in class_ids]) if len(class_ids)
                       else np.zeros((0, h, w), bool))
        return GroundTruth(image_id, int(h), int(w), inst, cats, np.zeros(len(inst), bool), class_masks,
                           class_ids)

    def summary(self) -> dict[str, Any]:
        return {"listed": self.num_listed, "usable_indices": len(self),
                "without_annotations": self.num_without_annotations, "skipped": len(self.skips.items),
                "skipped_by_reason": self.skips.counts(), "notes": dict(self.notes)}

    def store_identity(self) -> dict[str, Any]:
        ids = np.asarray(self.image_ids, np.int64)
        return {"name": "coco-wds", "shards": [p.name for p in wds.shard_paths(self.folder)],
                "num_samples": len(self), "image_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest()}


def open_coco_wds(spec: Any, size: int, views: int = 1, antialias: bool = False) -> CocoWdsDataset:
    """`--dataset coco-wds` (`config.DataSpec`); with `spec.strict`, a sample lost while listing is refused
    here."""
    if spec.images or spec.annotations or not spec.root:
        raise AdaslotError("--dataset coco-wds reads --root DIR (DIR/<split>/shard-*.tar)")
    if not Path(spec.root).is_dir():
        raise AdaslotError(f"dataset root {spec.root} not found")
    ds = CocoWdsDataset(spec.root, spec.split, size=size, views=views, antialias=antialias)
    if spec.strict and ds.skips.items:
        raise ds.skips.items[0].strict_error()
    if len(ds) == 0:
        raise AdaslotError(f"no usable images in {ds.folder} ({ds.skips.summary()})")
    return ds
