"""MOVi-C / MOVi-E as a dataset of frames, with the official protocol (docs/method.md#movi).

One sample per (video, frame): the train split takes 9 frames per video, chosen once by the key-seeded rule
(`train_frames`), the same every epoch; val and test take every frame. Sample image_id = key * 100 + frame
(`sample_id` / `split_sample_id`), so a feature store's image_ids carry the video key and frame index.

Input: uint8 frame -> / 255 -> bicubic to S x S (128 -> 224, square: no crop) -> clamp [0, 1]; no flip.
Ground truth: the frame's object ids (0 = background) as one mask per object present, at 128 x 128.

The dataset has the interface of `data.coco.CocoDataset` that the loops use (items, `record`, `skips`,
`ground_truth`, `image_info`, `summary`), so cache-features, train, eval and sweep read it unchanged. Bad
videos never raise here: a video lost while listing is in `skips` from the start, one that fails when read
comes out as an ok=False item; the loops apply `--strict`.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaslot.data.coco import GroundTruth, Skip, SkipLog
from adaslot.data.movi_sources import Listing, Video, VideoError, list_split, read_video
from adaslot.data.transforms import compute_geometry, resize_crop
from adaslot.errors import AdaslotError

FRAME_SEED_OFFSET = 457834752  # ocl's per-video frame sampling seed: int(key) + this
TRAIN_FRAMES = 9
ID_STRIDE = 100  # image_id = key * ID_STRIDE + frame


def train_frames(key: int, num_frames: int = 24, k: int = TRAIN_FRAMES) -> list[int]:
    """The frames of video `key` the official training reads: `random.Random(key + 457834752)
    .sample(range(num_frames), k)`, in that order (docs/method.md#movi)."""
    return random.Random(int(key) + FRAME_SEED_OFFSET).sample(range(num_frames), k=min(k, num_frames))


def sample_id(key: int, frame: int) -> int:
    return int(key) * ID_STRIDE + int(frame)


def split_sample_id(image_id: int) -> tuple[int, int]:
    """image_id -> (video key, frame index)."""
    return divmod(int(image_id), ID_STRIDE)


class MoviDataset(torch.utils.data.Dataset):
    """Frames of one MOVi split under `root` (any of the layouts of `data.movi_sources`).

    size: network input side S. frames: "auto" (train: the 9 official frames; val/test: all), "all" or
    "official9". Item i is a dict as in `data.coco`: image [3, S, S] float in [0, 1], index, image_id, file,
    geometry, notes; or ok=False with reason and detail."""

    flip = False  # MOVi is trained without flips: train.inputs.FlippedViews leaves the image as it is
    protocol = "movi"  # the eval protocol of this data (docs/method.md#movi), used by periodic validation

    def __init__(self, root: str | Path, split: str = "train", size: int = 224, frames: str = "auto",
                 cache_videos: int = 2) -> None:
        self.root, self.split, self.size, self.views = Path(root), split, size, 1
        self.listing: Listing = list_split(self.root, split)
        self.layout = self.listing.layout
        self.skips = SkipLog()
        self.notes: Counter[str] = Counter()
        for key, file, reason, detail in self.listing.lost:
            self.skips.add(Skip(sample_id(max(key, 0), 0), file, reason, detail))
        self._cache: OrderedDict[int, Video | VideoError] = OrderedDict()
        self._cache_size = cache_videos
        self.shape = self._reference_shape()  # (T, H, W) of the first readable video
        official9 = frames == "official9" or (frames == "auto" and split == "train")
        self.frames_rule = "official9" if official9 else "all"
        samples: list[tuple[int, int]] = []
        for v, ref in enumerate(self.listing.videos):
            chosen = train_frames(ref.key, self.shape[0]) if official9 else range(self.shape[0])
            samples.extend((v, t) for t in chosen)
        self.samples = np.asarray(samples, np.int64).reshape(-1, 2)  # [N, 2] (video position, frame)
        keys = np.asarray([r.key for r in self.listing.videos], np.int64)
        self.image_ids = [sample_id(keys[v], t) for v, t in self.samples]
        self.num_listed = len(self.image_ids)
        self.num_without_annotations = 0
        self.images_dir = self.listing.folder
        self.annotation_file = self.listing.folder

    # ------------------------------------------------------------ videos

    def _reference_shape(self) -> tuple[int, int, int]:
        """Videos of another shape than this one are skipped ("shape-mismatch"): the first readable video
        of the split sets it, so the choice is a function of the data alone."""
        for v in range(len(self.listing.videos)):
            video = self._video(v, check=False)
            if not isinstance(video, VideoError):
                return video.shape
        if self.listing.videos:
            first = self._video(0, check=False)
            raise AdaslotError(f"no video of {self.listing.folder} ({self.split}) could be read: {first}")
        lost = "; ".join(f"{f}: {r} ({d})" for _k, f, r, d in self.listing.lost[:3])
        raise AdaslotError(f"no videos in split '{self.split}' of {self.listing.folder}"
                           + (f" ({lost})" if lost else ""))

    def _video(self, v: int, check: bool = True) -> Video | VideoError:
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        ref = self.listing.videos[v]
        try:
            video: Video | VideoError = read_video(self.layout, ref)
        except VideoError as e:
            video = e
        if check and not isinstance(video, VideoError) and video.shape != self.shape:
            video = VideoError("shape-mismatch", f"{ref.name}: video {list(video.shape)}, the split's "
                                                 f"first video is {list(self.shape)}")
        self._cache[v] = video
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return video

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(frame uint8 [H, W, 3], object ids uint8 [H, W]) of sample `index`, or VideoError."""
        v, t = (int(x) for x in self.samples[index])
        video = self._video(v)
        if isinstance(video, VideoError):
            raise video
        return video.frame(t)

    # ------------------------------------------------------------ the CocoDataset interface

    def __len__(self) -> int:
        return len(self.image_ids)

    def _file(self, index: int) -> str:
        v, t = (int(x) for x in self.samples[index])
        return f"{self.listing.videos[v].name} frame {t}"

    def image_info(self, index: int) -> dict[str, Any]:
        return {"id": self.image_ids[index], "file_name": self._file(index), "height": self.shape[1],
                "width": self.shape[2]}

    def index_of(self, image_id: int) -> int:
        if not hasattr(self, "_index"):
            self._index = {i: k for k, i in enumerate(self.image_ids)}
        return self._index[image_id]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, file = self.image_ids[index], self._file(index)
        try:
            rgb, _ids = self.frame(index)
        except VideoError as e:
            return Skip(image_id, file, e.reason, e.detail, index).item()
        geom = compute_geometry(rgb.shape[0], rgb.shape[1], self.size, crop=False)
        x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().div_(255.0)  # copy: read-only
        return {"ok": True, "index": index, "image_id": image_id, "file": file, "image": resize_crop(x, geom),
                "geometry": geom, "notes": []}

    def record(self, batch_or_item: dict[str, Any]) -> list[Skip]:
        """Keep the skips and notes of a collated batch or one item (see `CocoDataset.record`)."""
        return self.skips.record(batch_or_item, self.notes)

    def ground_truth(self, image_id: int, include_crowd: bool = True) -> GroundTruth:
        """One mask per object id present in the frame (background 0 left out), at the frame's resolution;
        category = object id (MOVi categories are not read). Empty for a frame that cannot be read."""
        h, w = self.shape[1], self.shape[2]
        try:
            _rgb, ids = self.frame(self.index_of(image_id))
        except VideoError as e:
            empty = np.zeros((0, h, w), bool)
            return GroundTruth(image_id, h, w, empty, np.zeros(0, np.int64), np.zeros(0, bool), empty,
                               np.zeros(0, np.int64), [f"sample {image_id}: {e}"])
        objects = np.unique(ids)
        objects = objects[objects > 0].astype(np.int64)
        masks = ids[None] == objects[:, None, None]
        return GroundTruth(image_id, h, w, masks, objects, np.zeros(len(objects), bool), masks, objects)

    def summary(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "videos": len(self.listing.videos),
            "frames_rule": self.frames_rule,
            "listed": self.num_listed,
            "usable_indices": len(self),
            "without_annotations": 0,
            "skipped": len(self.skips.items),
            "skipped_by_reason": self.skips.counts(),
            "notes": dict(self.notes),
        }

    def store_identity(self) -> dict[str, Any]:
        """What identifies this split for a feature store (`store.writer.store_settings`)."""
        ids = np.asarray(self.image_ids, np.int64)
        return {"name": "movi", "layout": self.layout, **self.listing.identity, "frames": self.frames_rule,
                "num_videos": len(self.listing.videos), "num_samples": len(self),
                "image_id": f"video key * {ID_STRIDE} + frame index",
                "image_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
                "lost": [s.file for s in self.skips.items]}


def open_movi(spec: Any, size: int, views: int = 1) -> MoviDataset:
    """`--dataset movi` (`config.DataSpec`): the split under `spec.root`; with `spec.strict`, a video lost
    while listing is refused here."""
    if spec.images or spec.annotations:
        raise AdaslotError("--dataset movi reads --root DIR (no --images/--annotations)")
    if not spec.root:
        raise AdaslotError("no input data: pass --root DIR (a MOVi TFDS folder, webdataset shards or PNG "
                           "folders; docs/movi.md)")
    if views != 1:
        raise AdaslotError("MOVi is read with one view (the official protocol has no flip): use --views 1")
    ds = MoviDataset(spec.root, spec.split, size=size)
    if spec.strict and ds.skips.items:
        raise ds.skips.items[0].strict_error()
    if len(ds) == 0:
        raise AdaslotError(f"no usable videos in {ds.listing.folder} ({ds.skips.summary()})")
    return ds
