"""COCO-format data through pycocotools: images for the encoder, ground truth at original resolution.

`CocoDataset.from_root(root, split)` reads the COCO 2017 layout (`root/{split}2017/`,
`root/annotations/instances_{split}2017.json`); `CocoDataset(images_dir, annotation_file)` reads any
COCO-format dataset. Item i is a dict:
    ok=True:  image [3, S, S] (views=1) or [V, 3, S, S] (views=2: image, its horizontal flip), float in
              [0, 1], not normalised; index, image_id, file, geometry (transforms.Geometry)
    ok=False: index, image_id, file, reason, detail (the image could not be used)
`collate` stacks the good items and carries the bad ones in `batch["skipped"]`, so skipping works inside a
multi-worker DataLoader; call `dataset.record(batch)` in the main process to keep the skip list and counts
(workers hold copies of the dataset, so nothing a worker records would reach the main process).

Images listed in the json but missing on disk are found at construction (one stat per image) and left out of
the index space up front (recorded with reason "missing"); decode failures are found when read.
Images without annotations are kept: their ground truth is empty. The dataset never raises for a bad image
or annotation: it reports them (skips, `GroundTruth.problems`); the loops apply `--strict` (stop at the
first).

Ground truth (`ground_truth(image_id)`, docs/method.md#protocols): every annotation, crowd included by default
(AdaSlot configs) or excluded (`include_crowd=False`, DINOSAUR paper), as instance masks at the original
resolution [M, H, W] bool plus class masks (instances merged by category). `evaluate.masks.gt_at_side`
resizes them for the two published protocols (shorter side 224 or 320, nearest-exact, center crop).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from adaslot.config.data import DataSpec
from adaslot.data.coco_index import load_coco, read_image_list
from adaslot.data.decode import DECODERS, decode_file, load_notes, transform_batch
from adaslot.data.transforms import (
    ImageLoadError,
    hflip,
    load_image,
    transform_image,
)
from adaslot.errors import AdaslotError


@dataclass
class Skip:
    """One image left out, and why (reason: missing, unreadable, truncated, too-large, size-mismatch)."""

    image_id: int
    file: str
    reason: str
    detail: str = ""
    index: int | None = None  # dataset index when found at read time (None: left out at construction)

    def item(self) -> dict[str, Any]:
        """The dataset item of this image (see the module doc): {"ok": False, image_id, file, reason, detail,
        index}."""
        return {"ok": False, **asdict(self)}

    def strict_error(self) -> AdaslotError:
        """The one-line error of a --strict run that meets this image."""
        return strict_error(f"image {self.image_id} ({self.file})", self.reason, self.detail)


def strict_error(what: str, reason: str, detail: str = "") -> AdaslotError:
    """The one-line error of a --strict run that meets a bad input `what` (an image, a file)."""
    return AdaslotError(f"{what}: {reason}" + (f" ({detail})" if detail else "")
                        + "; drop --strict to skip it")


@dataclass
class SkipLog:
    """The skip list of a dataset: what was left out, with counts for the final summary."""

    items: list[Skip] = field(default_factory=list)
    _seen: set[tuple[int, str]] = field(default_factory=set, repr=False)

    def add(self, skip: Skip) -> None:
        """Record once per (image, reason): an epoch loop meets the same bad file again and again."""
        key = (skip.image_id, skip.reason)
        if key not in self._seen:
            self._seen.add(key)
            self.items.append(skip)

    def record(self, batch_or_item: dict[str, Any], notes: Counter[str]) -> list[Skip]:
        """Add the skips of a collated batch (or of one item) and count its notes into `notes`; returns the
        new skips. The datasets' `record` (call it in the main process for every batch)."""
        if "ok" in batch_or_item:  # a single item
            item = batch_or_item
            skipped = [] if item["ok"] else [{k: v for k, v in item.items() if k != "ok"}]
            new_notes = item.get("notes", []) if item["ok"] else []
        else:
            skipped, new_notes = batch_or_item.get("skipped", []), batch_or_item.get("notes", [])
        new = [Skip(**s) for s in skipped]
        for s in new:
            self.add(s)
        notes.update(new_notes)
        return new

    def counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.items))

    def summary(self) -> str:
        if not self.items:
            return "skipped 0 images"
        parts = ", ".join(f"{n} {r}" for r, n in sorted(self.counts().items()))
        return f"skipped {len(self.items)} images ({parts})"


@dataclass
class GroundTruth:
    """Ground truth of one image at original resolution (H, W of the annotation file).

    instance_masks: [M, H, W] bool; category_ids: [M] int64; iscrowd: [M] bool;
    class_masks: [C, H, W] bool (union of the instances of each category); class_ids: [C] int64 (sorted).
    M = C = 0 for an image without (kept) annotations. problems: annotations that could not be decoded
    (left out), one readable line each."""

    image_id: int
    height: int
    width: int
    instance_masks: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    class_masks: np.ndarray
    class_ids: np.ndarray
    problems: list[str] = field(default_factory=list)


class CocoDataset(Dataset):
    """COCO-format images -> transformed tensors (docs/method.md#transforms), ground truth and a skip list.

    size: network input side S; views: 1 (image) or 2 (image, hflip) stacked; antialias: see transforms;
    exif: "auto" | "transpose" | "raw" (see load_image); decoder: "pil" (the reference) or "torchvision"
    (data/decode.py; used by the batch path `__getitems__`, which the DataLoader calls). annotations=False
    reads the image list alone (data/coco_index.py: enough for `cache-features`; no ground truth).
    Open one from flags with `open_dataset`."""

    def __init__(self, images_dir: str | Path, annotation_file: str | Path, size: int = 224,
                 views: int = 1, antialias: bool = False, exif: str = "auto", crop: bool = True,
                 decoder: str = "pil", annotations: bool = True) -> None:
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        if not self.images_dir.is_dir():
            raise AdaslotError(f"image directory {self.images_dir} not found; check --root / --images")
        if views not in (1, 2):
            raise AdaslotError(f"views must be 1 or 2, got {views}")
        if exif not in ("auto", "transpose", "raw"):
            raise AdaslotError(f"exif must be auto, transpose or raw, got {exif!r}")
        if decoder not in DECODERS:
            raise AdaslotError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        self.decoder = decoder
        self.decode_on_device = False  # torchvision on a GPU: the workers read bytes (cache-features sets it)
        self.size, self.views, self.antialias, self.exif, self.crop = size, views, antialias, exif, crop
        self.coco = load_coco(self.annotation_file) if annotations else None
        self._imgs = self.coco.imgs if self.coco is not None else read_image_list(self.annotation_file)
        self.skips = SkipLog()
        self.notes: Counter[str] = Counter()  # handled oddities (EXIF rotated, CMYK, ...), see `record`
        ids = sorted(self._imgs)
        on_disk = {e.name for e in os.scandir(self.images_dir) if e.is_file()}  # one listing, not N stats
        present = []
        for image_id in ids:
            name = self._imgs[image_id]["file_name"]
            if name in on_disk or ("/" in name and (self.images_dir / name).is_file()):
                present.append(image_id)
            else:
                self.skips.add(Skip(image_id, str(self.images_dir / name), "missing",
                                    "listed in the annotations, not on disk"))
        self.image_ids: list[int] = present
        # What __getitem__ needs, as flat arrays: DataLoader workers then do not touch (and copy-on-write
        # duplicate, through refcounts) the annotation dicts just to find a file name.
        infos = [self._imgs[i] for i in present]
        self._files = np.array([str(info["file_name"]) for info in infos])
        self._wh = np.array([[int(info.get("width", -1)), int(info.get("height", -1))] for info in infos],
                            np.int64).reshape(-1, 2)
        self.num_listed = len(ids)
        self.num_without_annotations = (sum(1 for i in present if not self.coco.imgToAnns.get(i))
                                        if self.coco is not None else None)

    @classmethod
    def from_root(cls, root: str | Path, split: str = "val", **kwargs: Any) -> CocoDataset:
        """The COCO 2017 layout: root/{split}2017/ and root/annotations/instances_{split}2017.json."""
        return cls(*DataSpec(root=str(root), split=split).paths(), **kwargs)

    # ------------------------------------------------------------ images

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_info(self, index: int) -> dict[str, Any]:
        return self._imgs[self.image_ids[index]]

    def index_of(self, image_id: int) -> int:
        if not hasattr(self, "_index"):
            self._index = {i: k for k, i in enumerate(self.image_ids)}
        return self._index[image_id]

    def load(self, index: int) -> tuple[Any, list[str]]:
        """Decode image `index` into (RGB PIL image in the annotation frame, notes such as
        "exif-transposed" / "converted-from-CMYK"), or raise ImageLoadError."""
        path = self.images_dir / str(self._files[index])
        w, h = (int(v) for v in self._wh[index])
        wh = (w, h) if w > 0 and h > 0 else None
        loaded = load_image(path, expected_wh=wh, exif=self.exif)
        return loaded.image, load_notes(path, loaded.source_mode, loaded.format, loaded.exif_transposed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One item (see module doc). Pure: records nothing; pass items or batches to `record`."""
        image_id = self.image_ids[index]
        file = str(self.images_dir / str(self._files[index]))
        try:
            image, notes = self.load(index)
        except ImageLoadError as e:
            return Skip(image_id, file, e.reason, e.detail, index).item()
        x, geom = transform_image(image, self.size, antialias=self.antialias, crop=self.crop)
        if self.views == 2:
            x = torch.stack([x, hflip(x)])
        return {"ok": True, "index": index, "image_id": image_id, "file": file, "image": x, "geometry": geom,
                "notes": notes}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """The items of a batch (the DataLoader calls this with a batch's indices): the items `__getitem__`
        gives, each image decoded by `self.decoder`, the transform run once per group of same-size images
        (data/decode.py; same values). The per-image Python work of a batch is the decode alone."""
        items: list[dict[str, Any]] = []
        good, pixels = [], []
        for index in indices:
            image_id = self.image_ids[index]
            path = self.images_dir / str(self._files[index])
            w, h = (int(v) for v in self._wh[index])
            wh = (w, h) if w > 0 and h > 0 else None
            try:
                d = decode_file(path, wh, self.exif, self.decoder, on_device=self.decode_on_device)
            except ImageLoadError as e:
                items.append({"ok": False, **asdict(Skip(image_id, str(path), e.reason, e.detail, index))})
                continue
            item = {"ok": True, "index": index, "image_id": image_id, "file": str(path), "notes": d.notes}
            if self.decode_on_device:  # the main process decodes and transforms (decode.finish_on_device)
                item.update(decoded=d, expected=wh)
            items.append(item)
            good.append(item)
            pixels.append(d.pixels)
        if self.decode_on_device:
            return items
        xs, geoms = transform_batch([p for p in pixels if p is not None], self.size, self.antialias,
                                    self.crop, self.views)
        for item, x, geom in zip(good, xs, geoms, strict=True):
            item["image"], item["geometry"] = x, geom
        return items

    def record(self, batch_or_item: dict[str, Any]) -> list[Skip]:
        """Keep the skip list and notes of a collated batch (or of one item); returns the new skips.
        Call it in the main process for every batch: `for b in loader: ds.record(b); ...`."""
        return self.skips.record(batch_or_item, self.notes)

    # ------------------------------------------------------------ ground truth

    def ground_truth(self, image_id: int, include_crowd: bool = True) -> GroundTruth:
        """Instance and class masks of `image_id` at original resolution (see GroundTruth)."""
        if self.coco is None:
            raise AdaslotError(f"{self.annotation_file} was opened without its annotations")
        info = self.coco.imgs[image_id]
        h, w = int(info["height"]), int(info["width"])
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if include_crowd or not a.get("iscrowd", 0)]
        masks, cats, crowd, problems = [], [], [], []
        for a in anns:
            try:
                m = self.coco.annToMask(a).astype(bool)
            except Exception as e:  # malformed segmentation (pycocotools raises various types)
                self.notes["bad-annotation"] += 1
                problems.append(f"annotation {a.get('id')} of image {image_id} is malformed "
                                f"({type(e).__name__})")
                continue
            if m.shape != (h, w) or not m.any():
                self.notes["empty-annotation"] += 1
                continue
            masks.append(m)
            cats.append(int(a["category_id"]))
            crowd.append(bool(a.get("iscrowd", 0)))
        inst = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        cat_arr = np.asarray(cats, np.int64)
        class_ids = np.unique(cat_arr)
        class_masks = (np.stack([inst[cat_arr == c].any(0) for c in class_ids]) if len(class_ids)
                       else np.zeros((0, h, w), bool))
        return GroundTruth(image_id, h, w, inst, cat_arr, np.asarray(crowd, bool), class_masks, class_ids,
                           problems)

    def first_malformed_annotation(self) -> str | None:
        """A structural check of every annotation, without decoding masks (fast enough for COCO train):
        the first one pycocotools could not turn into a mask, as one readable line, or None."""
        if self.coco is None:
            raise AdaslotError(f"{self.annotation_file} was opened without its annotations")
        for a in self.coco.dataset.get("annotations", []):
            info = self.coco.imgs.get(a.get("image_id"))
            what = f"annotation {a.get('id')} of image {a.get('image_id')}"
            if info is None:
                return f"{what} refers to no image of {self.annotation_file.name}"
            if "category_id" not in a:
                return f"{what} has no category_id"
            problem = _segmentation_problem(a.get("segmentation"), int(info["height"]), int(info["width"]))
            if problem:
                return f"{what} is malformed ({problem})"
        return None

    def summary(self) -> dict[str, Any]:
        """Counts for the end-of-job summary (complete once every batch went through `record`). Skips count
        images (once per image and reason); notes count reads (an image read in two epochs counts twice)."""
        return {
            "listed": self.num_listed,
            "usable_indices": len(self),
            "without_annotations": self.num_without_annotations,
            "skipped": len(self.skips.items),
            "skipped_by_reason": self.skips.counts(),
            "notes": dict(self.notes),
        }


def _segmentation_problem(seg: Any, h: int, w: int) -> str | None:
    """Why `seg` (a COCO segmentation) cannot be decoded for an h x w image, or None."""
    if isinstance(seg, list):
        if not seg:
            return "empty polygon list"
        for poly in seg:
            if not isinstance(poly, list | tuple) or len(poly) < 6 or len(poly) % 2:
                return "a polygon needs an even number (>= 6) of coordinates"
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in poly):
                return "a polygon coordinate is not a number"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not isinstance(size, list | tuple) or list(size) != [h, w]:
            return f"RLE size {size} is not the image's [{h}, {w}]"
        if not isinstance(counts, str | list):
            return "RLE without counts"
        return None
    return f"segmentation of type {type(seg).__name__}"


def keep_list(batch: list[Any]) -> list[Any]:
    """DataLoader collate that leaves a batch as the list of its items (they are used one by one)."""
    return batch


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader collate: stacks good items; bad ones go to "skipped" (list of Skip dicts).

    Returns image [B, 3, S, S] or [B, V, 3, S, S] (B may be 0), index [B], image_id [B], file [B],
    geometry [B] (list of Geometry), skipped [list of dict], notes [list of str]."""
    good = [it for it in items if it["ok"]]
    skipped = [{k: v for k, v in it.items() if k != "ok"} for it in items if not it["ok"]]
    return {
        "image": _stacked([it["image"] for it in good]) if good and "image" in good[0] else torch.zeros(0),
        "index": torch.tensor([it["index"] for it in good], dtype=torch.int64),
        "image_id": torch.tensor([it["image_id"] for it in good], dtype=torch.int64),
        "file": [it["file"] for it in good],
        "geometry": [it.get("geometry") for it in good],
        "skipped": skipped,
        "notes": [n for it in good for n in it.get("notes", [])],
        **({"decoded": [it["decoded"] for it in good], "expected": [it["expected"] for it in good]}
           if good and "decoded" in good[0] else {}),
    }


def _stacked(images: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack(images), without the copy when they are already the rows, in order, of one contiguous
    tensor (what `CocoDataset.__getitems__` returns for a batch of same-size images)."""
    base = images[0]._base
    if (base is not None and base.is_contiguous() and base.shape == (len(images), *images[0].shape)
            and all(x._base is base and x.data_ptr() == base[r].data_ptr() for r, x in enumerate(images))):
        return base
    return torch.stack(images)


def open_dataset(spec: DataSpec, size: int, views: int = 1, antialias: bool = False,
                 annotations: bool = True) -> CocoDataset:
    """The dataset `spec` names, at network input side `size` (never strict itself: loops apply the policy,
    see `CocoDataset`). With `spec.strict`, a malformed annotation is refused here, before any work (so the
    annotations are read even when annotations=False, which otherwise reads the image list alone).
    COCO-format data only; `data.datasets.open_dataset` opens every `--dataset`."""
    if spec.dataset not in ("coco", "synthetic"):
        raise AdaslotError(f"--dataset {spec.dataset} is opened by adaslot.data.datasets.open_dataset")
    images, ann_file = spec.paths()
    ds = CocoDataset(images, ann_file, size=size, views=views, antialias=antialias,
                     annotations=annotations or spec.strict)
    if spec.strict:
        missing = next((s for s in ds.skips.items if s.reason == "missing"), None)
        if missing is not None:
            raise missing.strict_error()
        problem = ds.first_malformed_annotation()
        if problem:
            raise AdaslotError(f"{problem}; drop --strict to skip it")
    if len(ds) == 0:
        raise AdaslotError(f"no usable images in {ds.images_dir} (listed {ds.num_listed}, all missing)")
    return ds
