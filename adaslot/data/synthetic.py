"""The built-in synthetic dataset: shape scenes written as a real COCO-2017-layout dataset.

`write_coco_synthetic(cfg)` writes
    OUT/train2017/<id:012d>.jpg, OUT/val2017/<id:012d>.jpg,
    OUT/annotations/instances_train2017.json, OUT/annotations/instances_val2017.json
so `pycocotools.coco.COCO` and `adaslot.data.coco` read it unchanged. Segmentations are compressed RLE of
the *visible* part of each object (occlusion resolved in painting order), with `area` and `bbox` computed
from that RLE by pycocotools, exactly as COCO does.

Every image is drawn from its own RNG seeded by (seed, split, index), so a dataset is deterministic for a
seed and the first N images do not change when more are requested. Only numpy + Pillow + pycocotools:
no torch, a few ms per 224 px image.
"""

from __future__ import annotations

import colorsys
import functools
import json
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from adaslot.config.data import BACKGROUNDS, CATEGORIES, SyntheticConfig
from adaslot.errors import AdaslotError
from adaslot.files import atomic_dir

TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "noise")
SPLIT_SEED = {"train": 0, "val": 1}
VAL_ID_OFFSET = 1_000_000  # val image ids = 1_000_000 + i + 1, so ids are unique across splits (as in COCO)

__all__ = ["BACKGROUNDS", "CATEGORIES", "Scene", "SyntheticConfig", "render_scene", "write_coco_synthetic"]


@dataclass
class Scene:
    """One rendered scene. image: [H, W, 3] uint8; masks: [M, H, W] bool (visible parts, painting order);
    category_ids: [M] int (1-based, index into CATEGORIES + 1); iscrowd: [M] bool."""

    image: np.ndarray
    masks: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray


# ---------------------------------------------------------------- drawing

def _random_colour(rng: np.random.Generator, avoid: list[np.ndarray], min_dist: float = 0.3) -> np.ndarray:
    """A saturated colour in [0,1]^3, >= `min_dist` (RGB L2) from every colour in `avoid` if possible."""
    best, best_d = None, -1.0
    for _ in range(20):
        h, s, v = rng.uniform(0, 1), rng.uniform(0.45, 1.0), rng.uniform(0.35, 1.0)
        c = np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)
        d = min((float(np.linalg.norm(c - a)) for a in avoid), default=1.0)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best  # type: ignore[return-value]  # set: the first try always beats best_d = -1


def _pattern(rng: np.random.Generator, kind: str, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Pattern values in [0, 1] (1 = first colour) at pixel coordinates yy, xx (same shape, float32)."""
    if kind == "stripes":
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(0.04, 0.12) * size
        u = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))
        return (np.sin(u * np.float32(2 * np.pi / period)) > 0).astype(np.float32)
    if kind == "checker":
        cell = max(2, int(rng.uniform(0.03, 0.08) * size))
        return (((yy.astype(np.int32) // cell) + (xx.astype(np.int32) // cell)) % 2).astype(np.float32)
    if kind == "noise":  # smooth blotches: a small random grid upsampled bilinearly, sampled at the pixels
        g = int(rng.integers(3, 8))
        small = Image.fromarray((rng.uniform(0, 1, (g, g)) * 255).astype(np.uint8), "L")
        full = np.asarray(small.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        return full[yy.astype(np.int32), xx.astype(np.int32)]
    if kind == "gradient":
        theta = rng.uniform(0, 2 * np.pi)
        u = (xx - size / 2) * np.float32(np.cos(theta)) + (yy - size / 2) * np.float32(np.sin(theta))
        return np.clip(u / size + 0.5, 0, 1).astype(np.float32)
    return np.ones(yy.shape, np.float32)  # solid


def _fill(rng: np.random.Generator, kind: str, c0: np.ndarray, c1: np.ndarray, size: int,
          yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Colours [..., 3] at pixel coordinates yy, xx mixing c0 and c1 by a pattern of `kind`."""
    if kind == "solid":
        return np.broadcast_to(c0, (*yy.shape, 3))
    p = _pattern(rng, kind, size, yy, xx)[..., None]
    return c1 + p * (c0 - c1)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a regular shape of circumradius r (the circle is drawn as an ellipse, not here)."""
    if kind == "square":
        n, radii = 4, [r * 0.9]
    elif kind == "triangle":
        n, radii = 3, [r]
    elif kind == "diamond":
        n, radii, angle = 4, [r], 0.0  # axis-aligned rhombus, squashed below
    elif kind == "hexagon":
        n, radii = 6, [r]
    elif kind == "star":
        n, radii = 10, [r, r * 0.5]
    else:
        raise ValueError(kind)
    pts = []
    for i in range(n):
        a = angle + 2 * np.pi * i / n
        rr = radii[i % len(radii)]
        sx = 0.65 if kind == "diamond" else 1.0
        pts.append((cx + rr * sx * np.cos(a), cy + rr * np.sin(a)))
    return pts


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """[size, size] bool mask of one shape, rasterised by Pillow (fast, exact polygon fill)."""
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_shape_polygon(kind, cx, cy, r, angle), fill=255)
    return np.asarray(im) > 0


def render_scene(rng: np.random.Generator, cfg: SyntheticConfig) -> Scene:
    """Draw one scene with `rng` (the only source of randomness). See `Scene` for shapes."""
    s = cfg.image_size
    yy, xx = _grid(s)
    # Background.
    bg_kind = cfg.background
    if bg_kind == "varied":
        bg_kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    b0 = _random_colour(rng, [])
    b1 = np.clip(b0 + rng.uniform(-0.25, 0.25, 3), 0, 1).astype(np.float32)  # low contrast inside background
    image = np.array(_fill(rng, "solid" if bg_kind == "plain" else bg_kind, b0, b1, s, yy, xx), np.float32)

    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    cat_names = list(cfg.categories)
    labels = np.zeros((s, s), np.int32)  # 0 = background, k = object k (1-based) on top
    objects: list[tuple[int, np.ndarray]] = []  # (category id, full shape mask)
    used_colours = [b0, b1]
    for _ in range(n):
        kind = cat_names[int(rng.integers(len(cat_names)))]
        placed = None
        for _try in range(10):
            r = rng.uniform(cfg.min_radius, cfg.max_radius) * s
            cx, cy = rng.uniform(r * 0.6, s - r * 0.6, 2)  # may poke out of the frame a little
            full = _shape_mask(kind, s, cx, cy, r, rng.uniform(0, 2 * np.pi))
            area = int(full.sum())
            if area == 0:
                continue
            # The new object goes on top: earlier objects must stay >= min_visible visible.
            ok = True
            for k, (_, m) in enumerate(objects, start=1):
                vis = (labels == k) & ~full
                if vis.sum() < cfg.min_visible * m.sum():
                    ok = False
                    break
            if ok:
                placed = full
                break
        if placed is None:
            continue  # crowded scene: fewer objects than drawn, which is fine
        c0 = _random_colour(rng, used_colours)
        used_colours.append(c0)
        if cfg.texture:
            tex = TEXTURES[int(rng.integers(len(TEXTURES)))]
            # second colour = a darker shade of the first, so a textured object still reads as one object
            c1 = np.clip(c0 * rng.uniform(0.4, 0.8), 0, 1).astype(np.float32)
        else:
            tex, c1 = "solid", c0
        image[placed] = _fill(rng, tex, c0, c1, s, yy[placed], xx[placed])
        objects.append((CATEGORIES.index(kind) + 1, placed))
        labels[placed] = len(objects)

    masks = (labels[None] == np.arange(1, len(objects) + 1)[:, None, None])  # [M, H, W] visible parts
    cats = np.array([c for c, _ in objects], np.int64)
    keep = masks.reshape(len(objects), s * s).any(1)  # fully hidden objects are not annotated
    masks, cats = masks[keep], cats[keep]
    crowd = np.zeros(len(masks), bool)
    if cfg.crowd_prob > 0:
        crowd = rng.uniform(0, 1, len(masks)) < cfg.crowd_prob
    img8 = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return Scene(image=img8, masks=masks, category_ids=cats, iscrowd=crowd)


# ---------------------------------------------------------------- writing

def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG of image `index` of `split`: independent per image, so datasets are prefix-stable."""
    return np.random.default_rng([seed, SPLIT_SEED[split], index])


def image_id_for(split: str, index: int) -> int:
    return index + 1 + (VAL_ID_OFFSET if split == "val" else 0)


def _encode_annotations(scene: Scene, image_id: int) -> list[dict[str, Any]]:
    """COCO annotations of one scene, without their "id" (numbered in order by the caller)."""
    from pycocotools import mask as mask_utils

    anns = []
    for j, m in enumerate(scene.masks):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append({
            "image_id": image_id,
            "category_id": int(scene.category_ids[j]),
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": int(scene.iscrowd[j]),
        })
    return anns


Rendered = list[tuple[dict[str, Any], list[dict[str, Any]]]]  # per image: its COCO entry, its annotations


def _render_range(cfg: SyntheticConfig, img_dir: Path, split: str, start: int, stop: int) -> Rendered:
    """Render images start..stop-1 of `split`, write their JPEGs to img_dir -> their COCO entries in order.
    Each image depends only on (seed, split, index), so any split of the range gives the same bytes."""
    out: Rendered = []
    for i in range(start, stop):
        scene = render_scene(scene_rng(cfg.seed, split, i), cfg)
        image_id = image_id_for(split, i)
        name = f"{image_id:012d}.jpg"
        Image.fromarray(scene.image, "RGB").save(img_dir / name, quality=cfg.jpeg_quality)
        entry = {"id": image_id, "file_name": name, "height": cfg.image_size, "width": cfg.image_size}
        out.append((entry, _encode_annotations(scene, image_id)))
    return out


def _render_range_star(job: tuple[SyntheticConfig, Path, str, int, int]) -> Rendered:
    return _render_range(*job)


CHUNK_IMAGES = 256  # images per job given to a worker process: few round trips, bounded memory in flight


def _write_split(cfg: SyntheticConfig, root: Path, split: str, count: int, ann_id: int,
                 advance: Callable[[int], Any], pool: Pool | None) -> tuple[dict[str, Any], int]:
    img_dir = root / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, img_dir, split, a, min(count, a + CHUNK_IMAGES)) for a in range(0, count, CHUNK_IMAGES)]
    chunks = pool.imap(_render_range_star, jobs) if pool is not None else map(_render_range_star, jobs)
    images, annotations = [], []
    for chunk in chunks:  # in order, whatever the number of workers: ids and JSON are the same
        for entry, anns in chunk:
            images.append(entry)
            for ann in anns:
                annotations.append({"id": ann_id, **ann})
                ann_id += 1
        advance(len(chunk))
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "overwrite", "progress", "workers")}
    coco = {
        "info": {"description": "adaslot synthetic shapes", "version": "1.0", "generator_settings": settings},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)],
    }
    return coco, ann_id


def write_coco_synthetic(cfg: SyntheticConfig) -> dict[str, Any]:
    """Write the dataset in COCO's layout to `cfg.out` (atomically: a temp dir renamed at the end). Returns a
    summary dict (root, images per split, objects per split, mean objects per image)."""
    cfg.validate()
    if not cfg.out:
        raise AdaslotError("give the output folder of make-synthetic")
    if cfg.format == "movi":
        raise AdaslotError("--format movi is written by adaslot.data.movi_synthetic.write_movi_synthetic")
    out = Path(cfg.out)
    summary: dict[str, Any] = {"root": str(out)}
    # fork: the workers only render with numpy / Pillow and need nothing of the parent but cfg; started
    # before the progress bar's thread
    pool = mp.get_context("fork").Pool(cfg.workers) if cfg.workers > 1 else None
    try:
        with atomic_dir(out, cfg.overwrite) as tmp:
            from adaslot.progress import progress_bar

            with progress_bar("make-synthetic", cfg.progress, unit="img") as bar:
                task = bar.add_task("make-synthetic", total=cfg.num_train + cfg.num_val)
                ann_id = 1
                (tmp / "annotations").mkdir()
                for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
                    coco, ann_id_next = _write_split(cfg, tmp, split, count, ann_id,
                                                     lambda k: bar.advance(task, k), pool)
                    # json.dumps + one write: the C encoder (json.dump to a file encodes in Python), same text
                    (tmp / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
                    summary[f"{split}_images"] = count
                    summary[f"{split}_objects"] = ann_id_next - ann_id
                    ann_id = ann_id_next
    finally:
        if pool is not None:
            pool.terminate()
    n_img = cfg.num_train + cfg.num_val
    summary["mean_objects"] = (summary["train_objects"] + summary["val_objects"]) / max(1, n_img)
    return summary
