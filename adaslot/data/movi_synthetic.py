"""`adaslot make-synthetic --format movi`: short videos of moving shapes in MOVi's two on-disk layouts.

    OUT/tfds/movi_synthetic/<S>x<S>/1.0.0/  dataset_info.json, features.json,
        movi_synthetic-{train,validation}.tfrecord-NNNNN-of-MMMMM   (tf.train.Example: `video` and
        `segmentations` as T PNGs each, plus a few metadata features)
    OUT/wds/{train,val}/shard-NNNNNN.tar     KEY.video.npy.gz (uint8 [T, S, S, 3]), KEY.segmentations.npy.gz
        (uint8 [T, S, S, 1]), plus members a reader must ignore (metadata.json, background.txt)

Object i of a video has id i + 1 in `segmentations`, 0 is background (as MOVi encodes them). Keys are the
position in TFDS order, `__key__` = f"{i:07d}". Every video is a function of (seed, split, index).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adaslot.config.data import SyntheticConfig
from adaslot.data import tfrecord, wds
from adaslot.data.synthetic import _random_colour, _shape_mask
from adaslot.errors import AdaslotError
from adaslot.files import atomic_dir

NAME = "movi_synthetic"
SPLITS = (("train", "train", 0), ("val", "validation", 1))  # (ours / wds folder, TFDS name, seed slot)


def render_video(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 [T, S, S, 3], object ids uint8 [T, S, S]) of shapes moving in straight lines, drawn
    in a fixed order (later objects on top)."""
    s, t_len = cfg.video_size, cfg.frames
    kinds = list(cfg.categories)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    top, bottom = _random_colour(rng, []), _random_colour(rng, [])
    ramp = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    if cfg.movi_background == "plain":  # same draws as the gradient, so the objects are the same
        bottom = top
    background = top * (1 - ramp) + bottom * ramp  # [S, 1, 3] vertical gradient (plain: one colour)
    objs = []
    colours = [top, bottom]
    for _ in range(n):
        r = rng.uniform(cfg.min_radius, cfg.max_radius) * s
        start = rng.uniform(r, s - r, 2)
        velocity = rng.uniform(-1, 1, 2) * s / (2.0 * t_len)  # at most half the frame over the video
        colour = _random_colour(rng, colours)
        colours.append(colour)
        objs.append((kinds[int(rng.integers(len(kinds)))], r, start, velocity, rng.uniform(0, 2 * np.pi),
                     rng.uniform(-0.1, 0.1), colour))
    frames = np.empty((t_len, s, s, 3), np.uint8)
    ids = np.zeros((t_len, s, s), np.uint8)
    for t in range(t_len):
        image = np.broadcast_to(background, (s, s, 3)).copy()
        for i, (kind, r, start, velocity, angle, spin, colour) in enumerate(objs):
            cx, cy = start + velocity * t
            mask = _shape_mask(kind, s, float(cx), float(cy), float(r), float(angle + spin * t))
            image[mask] = colour
            ids[t][mask] = i + 1
        frames[t] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return frames, ids


def video_rng(seed: int, split_slot: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1000 + split_slot, index])


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def tfds_example(frames: np.ndarray, ids: np.ndarray, key: int) -> bytes:
    """One video as a TFDS-serialised tf.train.Example (PNG frames, flattened metadata)."""
    return tfrecord.encode_example({
        "video": [_png(f) for f in frames],
        "segmentations": [_png(i) for i in ids],  # one channel, like TFDS's [T, H, W, 1] video feature
        "metadata/video_name": [f"{key:07d}".encode()],
        "metadata/num_instances": np.asarray([int(ids.max())], np.int64),
        "metadata/num_frames": np.asarray([len(frames)], np.int64),
        "camera/focal_length": np.asarray([35.0], np.float32),
    })


def wds_members(frames: np.ndarray, ids: np.ndarray, key: int) -> dict[str, bytes]:
    """One video as the members of ocl's conversion (video first; extras a reader must skip)."""
    return {
        "video.npy.gz": wds.gzip_bytes(wds.npy_bytes(frames)),
        "segmentations.npy.gz": wds.gzip_bytes(wds.npy_bytes(ids[..., None])),
        "metadata.json": json.dumps({"num_instances": int(ids.max()), "video_name": f"{key:07d}"}).encode(),
        "background.txt": b"gradient",  # a fixed extra member a reader must skip
    }


def _chunks(n: int, size: int) -> list[range]:
    return [range(a, min(a + size, n)) for a in range(0, n, size)] or [range(0)]


def write_movi_synthetic(cfg: SyntheticConfig) -> dict[str, Any]:
    """Write both layouts under `cfg.out` (atomically: a temp dir renamed at the end) -> summary dict."""
    from adaslot.progress import progress_bar

    cfg.validate()
    if not cfg.out:
        raise AdaslotError("give the output folder of make-synthetic")
    with progress_bar("make-synthetic", cfg.progress, unit="video") as bar:
        task = bar.add_task("make-synthetic", total=cfg.num_train + cfg.num_val)
        return _write(cfg, lambda: bar.advance(task))


def _write(cfg: SyntheticConfig, advance: Any) -> dict[str, Any]:
    out = Path(cfg.out)
    with atomic_dir(out, cfg.overwrite) as tmp:
        return _write_into(cfg, out, tmp, advance)


def _write_into(cfg: SyntheticConfig, out: Path, tmp: Path, advance: Any) -> dict[str, Any]:
    """Both layouts into the temp folder `tmp`, which becomes `out` (paths in the summary are `out`'s)."""
    s = cfg.video_size
    tfds_dir = tmp / "tfds" / NAME / f"{s}x{s}" / "1.0.0"
    tfds_dir.mkdir(parents=True)
    summary: dict[str, Any] = {"root": str(out), "tfds": str(out / tfds_dir.relative_to(tmp)),
                               "wds": str(out / "wds")}
    splits_info = []
    objects = 0
    for ours, tfds_name, slot in SPLITS:
        count = cfg.num_train if ours == "train" else cfg.num_val
        (tmp / "wds" / ours).mkdir(parents=True)
        chunks = _chunks(count, cfg.shard_videos)
        lengths = []
        for n, chunk in enumerate(chunks):
            records, samples = [], []
            for i in chunk:
                frames, ids = render_video(video_rng(cfg.seed, slot, i), cfg)
                objects += len(np.unique(ids[0])) - 1
                records.append(tfds_example(frames, ids, i))
                samples.append((f"{i:07d}", wds_members(frames, ids, i)))
                advance()
            tfrecord.write_records(
                tfds_dir / f"{NAME}-{tfds_name}.tfrecord-{n:05d}-of-{len(chunks):05d}", records)
            wds.write_shard(tmp / "wds" / ours / f"shard-{n:06d}.tar", samples)
            lengths.append(len(records))
        splits_info.append({"name": tfds_name, "shardLengths": [str(v) for v in lengths],
                            "numBytes": "0"})
        summary[f"{ours}_videos"] = count
    info = {"name": NAME, "version": "1.0.0", "description": "adaslot moving shapes, MOVi layout",
            "splits": splits_info}
    (tfds_dir / "dataset_info.json").write_text(json.dumps(info, indent=1))
    (tfds_dir / "features.json").write_text(json.dumps({
        "video": {"shape": [cfg.frames, s, s, 3], "encoding": "png"},
        "segmentations": {"shape": [cfg.frames, s, s, 1], "encoding": "png"}}, indent=1))
    summary["objects_first_frame"] = objects
    return summary
