"""Where MOVi videos come from: the three layouts users have (docs/movi.md), each as a list of videos
and a reader of one video.

  tfds  the TFDS folder (`gsutil cp -r gs://kubric-public/tfds/movi_c/128x128 ...`): dataset_info.json and
        `<name>-<split>.tfrecord-NNNNN-of-MMMMM` shards of tf.train.Example records (video and segmentations
        as 24 PNGs each); split val = TFDS `validation`. Video key = position in TFDS order.
  wds   the webdataset shards of ocl's conversion: ROOT/{train,val,test}/shard-*.tar, members
        `KEY.video.npy.gz` (uint8 [T, H, W, 3]) and `KEY.segmentations.npy.gz` (uint8 [T, H, W, 1]).
  png   SPOT/STEVE folders: ROOT/{train,validation}/{video:08d}/{t:08d}_image.png and, outside train,
        binary `{t:08d}_mask_{n:02d}.png` (n = object id, 0 = background).

A reader returns a `Video` (shape (T, H, W); `frame(t)` -> (uint8 [H, W, 3], object ids uint8 [H, W], 0 =
background)) or raises VideoError with a one-word reason (truncated, crc-mismatch, bad-gzip, missing-field,
unreadable, shape-mismatch). TFDS videos decode only the PNGs of the frames asked for; a webdataset video is
one gzip stream, decompressed whole.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adaslot.data import tfrecord, wds
from adaslot.errors import AdaslotError

LAYOUTS = ("tfds", "wds", "png")
SPLITS = ("train", "val", "test")
TFDS_SPLIT = {"train": "train", "val": "validation", "test": "test"}
PNG_SPLIT = {"train": "train", "val": "validation", "test": "test"}
FIELDS = ("video", "segmentations")


class VideoError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason} ({detail})")


class Video:
    """A video read from disk: `shape` (T, H, W) and `frame(t)`."""

    shape: tuple[int, int, int]

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class ArrayVideo(Video):
    def __init__(self, frames: np.ndarray, seg: np.ndarray) -> None:
        self.frames, self.seg = frames, seg
        self.shape = tuple(frames.shape[:3])

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        return self.frames[t], self.seg[t]


class PngVideo(Video):
    """TFDS's encoding: one PNG per frame of `video` and of `segmentations`, decoded on demand."""

    def __init__(self, name: str, video: list[bytes], seg: list[bytes]) -> None:
        self.name, self.video, self.seg = name, video, seg
        if len(video) != len(seg):
            raise VideoError("shape-mismatch", f"{name}: {len(video)} video frames, {len(seg)} segmentations")
        rgb, _ids = self._decode(0)
        self.shape = (len(video), rgb.shape[0], rgb.shape[1])

    def _decode(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        rgb = _decode_png(self.video[t], f"{self.name} video[{t}]")
        ids = _decode_png(self.seg[t], f"{self.name} segmentations[{t}]")
        ids = ids[..., 0] if ids.ndim == 3 and ids.shape[-1] == 1 else ids
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or ids.shape != rgb.shape[:2]:
            raise VideoError("shape-mismatch", f"{self.name} frame {t}: video {list(rgb.shape)}, "
                                               f"segmentations {list(ids.shape)}")
        return rgb, ids.astype(np.uint8)

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, ids = self._decode(t)
        if rgb.shape[:2] != self.shape[1:]:
            raise VideoError("shape-mismatch", f"{self.name} frame {t}: {list(rgb.shape)} vs frame 0")
        return rgb, ids


@dataclass
class VideoRef:
    """One video: key (int, the official sample key), a readable name, and where its bytes are."""

    key: int
    name: str
    where: Any = None


@dataclass
class Listing:
    """The videos of a split plus what was lost while listing: [(key of the first lost video, file,
    reason, detail)]."""

    layout: str
    folder: Path
    videos: list[VideoRef] = field(default_factory=list)
    lost: list[tuple[int, str, str, str]] = field(default_factory=list)
    identity: dict[str, Any] = field(default_factory=dict)


def detect_layout(root: Path) -> tuple[str, Path]:
    """(layout, folder) of a MOVi root; one-line error for a root with none of them."""
    if not root.is_dir():
        raise AdaslotError(f"MOVi root {root} not found")
    infos = [root / "dataset_info.json"] if (root / "dataset_info.json").is_file() else \
        sorted(p for p in root.glob("*/dataset_info.json")) + sorted(root.glob("*/*/dataset_info.json")) + \
        sorted(root.glob("*/*/*/dataset_info.json"))
    infos = [p for p in infos if any(p.parent.glob("*.tfrecord-*"))]
    if len(infos) == 1:
        return "tfds", infos[0].parent
    if len(infos) > 1:
        found = ", ".join(str(p.parent) for p in infos)
        raise AdaslotError(f"{root} holds {len(infos)} TFDS folders ({found}); pass one of them as --root")
    if any(wds.shard_paths(root / s) for s in SPLITS):
        return "wds", root
    if any((root / s).is_dir() and any((root / s).glob("*/00000000_image.png")) for s in PNG_SPLIT.values()):
        return "png", root
    raise AdaslotError(f"{root} holds none of the MOVi layouts: a TFDS folder (dataset_info.json + "
                       "*.tfrecord-* shards), webdataset shards (train/ val/ test/ with shard-*.tar) or PNG "
                       "folders (train/ validation/ with <video>/<frame>_image.png); see docs/movi.md")


def list_split(root: Path, split: str) -> Listing:
    """The videos of `split` (train, val or test) under a MOVi root, in the official order."""
    if split not in SPLITS:
        raise AdaslotError(f"MOVi split {split!r} unknown; choose train, val or test")
    layout, folder = detect_layout(root)
    return {"tfds": _list_tfds, "wds": _list_wds, "png": _list_png}[layout](folder, split)


def read_video(listing_layout: str, ref: VideoRef) -> Video:
    """One video (see module doc), or VideoError."""
    return {"tfds": _read_tfds, "wds": _read_wds, "png": _read_png}[listing_layout](ref)


# ---------------------------------------------------------------- TFDS

def _list_tfds(folder: Path, split: str) -> Listing:
    name = TFDS_SPLIT[split]
    pattern = re.compile(rf"-{name}\.tfrecord-(\d+)-of-(\d+)$")
    shards = sorted((p for p in folder.iterdir() if pattern.search(p.name)),
                    key=lambda p: int(pattern.search(p.name).group(1)))  # type: ignore[union-attr]  # filtered above
    if not shards:
        raise AdaslotError(f"split '{split}' not found in {folder}: no *-{name}.tfrecord-* shards")
    try:
        info = json.loads((folder / "dataset_info.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdaslotError(f"{folder / 'dataset_info.json'} is not readable JSON ({e})") from None
    lengths = next((s.get("shardLengths") for s in info.get("splits", []) if s.get("name") == name), None)
    out = Listing("tfds", folder, identity={"tfds_name": info.get("name"), "version": info.get("version"),
                                            "split": name, "shards": [p.name for p in shards]})
    key = 0
    for n, path in enumerate(shards):
        spans, err = tfrecord.scan_records(path)
        expected = int(lengths[n]) if lengths and n < len(lengths) else len(spans)
        for s in spans[:expected]:
            out.videos.append(VideoRef(key + s.number, f"{path.name}#{s.number}", (str(path), s)))
        if err is not None:
            out.lost.append((key + len(spans), path.name, err.reason, err.detail))
        elif len(spans) < expected:
            out.lost.append((key + len(spans), path.name, "truncated",
                             f"{len(spans)} records, dataset_info.json lists {expected}"))
        key += max(expected, len(spans))
    return out


def _decode_png(data: bytes, what: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise VideoError("unreadable", f"{what}: {e}") from None


def _read_tfds(ref: VideoRef) -> Video:
    path, span = ref.where
    try:
        with open(path, "rb") as f:
            example = tfrecord.decode_example(tfrecord.read_record(f, span), only=set(FIELDS))
    except tfrecord.RecordError as e:
        raise VideoError(e.reason, f"{ref.name}: {e.detail}") from None
    for name in FIELDS:
        if not isinstance(example.get(name), list) or not example[name]:
            raise VideoError("missing-field", f"{ref.name}: no '{name}' frames")
    return PngVideo(ref.name, example["video"], example["segmentations"])  # type: ignore[arg-type]  # bytes lists, checked above


# ---------------------------------------------------------------- webdataset

def _list_wds(folder: Path, split: str) -> Listing:
    shards = wds.shard_paths(folder / split)
    if not shards:
        raise AdaslotError(f"split folder {folder / split} not found or without shard-*.tar files")
    out = Listing("wds", folder, identity={"split": split, "shards": [p.name for p in shards]})
    for path in shards:
        samples, err = wds.index_shard(path)
        for s in samples:
            key = wds.numeric_key(s)
            if key is None:
                out.lost.append((-1, path.name, "bad-key", f"sample key {s.key!r} is not an integer"))
                continue
            missing = [f for f in FIELDS if s.find(f) is None]
            if missing:
                out.lost.append((key, path.name, "missing-field",
                                 f"sample {s.key} has no {', '.join(missing)}"))
                continue
            out.videos.append(VideoRef(key, f"{path.name}#{s.key}", s))
        if err is not None:
            out.lost.append((out.videos[-1].key + 1 if out.videos else 0, path.name, err.reason, err.detail))
    return out


def _read_wds(ref: VideoRef) -> Video:
    sample: wds.TarSample = ref.where
    try:
        frames = wds.read_array(sample, str(sample.find("video")))
        seg = wds.read_array(sample, str(sample.find("segmentations")))
    except wds.MemberError as e:
        raise VideoError(e.reason, e.detail) from None
    return _check(ref, frames, seg)


# ---------------------------------------------------------------- PNG folders

def _list_png(folder: Path, split: str) -> Listing:
    base = folder / PNG_SPLIT[split]
    if not base.is_dir():
        raise AdaslotError(f"split folder {base} not found")
    out = Listing("png", folder, identity={"split": PNG_SPLIT[split]})
    for d in sorted(p for p in base.iterdir() if p.is_dir() and p.name.isdigit()):
        out.videos.append(VideoRef(int(d.name), d.name, d))
    return out


def _read_png(ref: VideoRef) -> Video:
    d: Path = ref.where
    files = sorted(d.glob("*_image.png"))
    if not files:
        raise VideoError("missing-field", f"{ref.name}: no *_image.png frames")
    frames = np.stack([_decode_png(p.read_bytes(), str(p))[..., :3] for p in files])
    seg = np.zeros(frames.shape[:3], np.uint8)
    for t, p in enumerate(files):
        stem = p.name[: -len("_image.png")]
        for m in sorted(d.glob(f"{stem}_mask_*.png")):
            n = int(m.stem.rsplit("_", 1)[1])
            if n > 0:
                seg[t][_decode_png(m.read_bytes(), str(m)).reshape(seg.shape[1:3]) > 127] = n
    return _check(ref, frames, seg)


def _check(ref: VideoRef, frames: np.ndarray, seg: np.ndarray) -> Video:
    if seg.ndim == 4 and seg.shape[-1] == 1:
        seg = seg[..., 0]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError("unreadable", f"{ref.name}: video is {frames.dtype} {list(frames.shape)}, expected "
                                       "uint8 [T, H, W, 3]")
    if seg.shape != frames.shape[:3]:
        raise VideoError("shape-mismatch", f"{ref.name}: segmentations {list(seg.shape)} vs video "
                                           f"{list(frames.shape)}")
    return ArrayVideo(frames, seg.astype(np.uint8))
