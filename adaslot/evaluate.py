"""Evaluation: frozen encoder -> model -> decoder alpha -> masks at each protocol's resolution -> metrics.

Protocols (SPEC "Data"), all scored in one pass over the images:
- `adaslot`  : official AdaSlot configs. All annotations (crowd kept); GT masks resized shorter side 224
               (nearest-exact) + center crop 224; alpha 14x14 -> bilinear 224 -> argmax.
- `dinosaur` : DINOSAUR paper. Crowd annotations dropped; GT at 320 the same way; alpha bilinear to 320.
- `fullres`  : ours. Crowd kept (as `adaslot`); the evaluated region is the network's center crop mapped
               back to the original pixels (pixels whose centre falls inside it); alpha is bilinearly sampled
               straight at those pixels; GT masks are never resized.
Pixels covered by two or more GT masks are ignored (adaslot.metrics). Bilinear = align_corners False.

Geometry (adaslot.data.transforms): torchvision `Resize(S)` + `CenterCrop(S)` rules, as the official
transforms; GT for the published protocols via `resize_masks_nearest_exact` (ocl's ResizeNearestExact).

Stage-2 models: keep <=> keep-logit > drop-logit by default; `gumbel_eval=SEED` samples the Gumbel noise as
the official evaluation does (seeded here, so it is reproducible). The slot initialisation is sampled (as
official) from a seeded generator; the caller's global RNG state is left untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from adaslot.data.transforms import Geometry, compute_geometry, maps_to_original, resize_masks_nearest_exact
from adaslot.errors import AdaslotError
from adaslot.metrics import MetricAccumulator, fg_ari, image_scores, overlap_free_labels

if TYPE_CHECKING:
    from adaslot.config import EvalConfig
    from adaslot.data.coco import CocoDataset

PROTOCOLS = ("adaslot", "dinosaur", "fullres")
PROTOCOL_SIDE = {"adaslot": 224, "dinosaur": 320}
PROTOCOL_CROWD = {"adaslot": True, "dinosaur": False, "fullres": True}  # crowd annotations kept?
METRIC_KEYS = ("fg_ari", "mbo_i", "mbo_c", "miou", "corloc")
PROTOCOL_DESCRIPTION = {
    "adaslot": "AdaSlot configs: crowd kept; GT shorter side 224 (nearest-exact) + center crop; alpha "
               "bilinear to 224",
    "dinosaur": "DINOSAUR paper: crowd dropped; GT shorter side 320 (nearest-exact) + center crop; alpha "
                "bilinear to 320",
    "fullres": "crowd kept; original pixels of the center-crop region; alpha bilinear straight to them; GT "
               "never resized",
}


# ---- masks from alpha ---------------------------------------------------------------------------------


def labels_at_side(alpha_grid: torch.Tensor, side: int) -> np.ndarray:
    """alpha [K, g, g] -> slot ids [side, side]: bilinear (align_corners False) to side x side, argmax."""
    up = F.interpolate(alpha_grid[None].float(), size=(side, side), mode="bilinear", align_corners=False)
    return up[0].max(0).indices.cpu().numpy()  # max().indices: same as argmax, ~5x faster on CPU


def labels_fullres(alpha_grid: torch.Tensor, geom: Geometry) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Slot ids at the original pixels of the crop region (alpha sampled bilinearly straight there).

    Returns (labels [bottom - top, right - left], region (top, left, bottom, right)) where the region is
    `geom.crop_region_original()`: the original pixels whose centres fall inside the network input.
    """
    maps, region = maps_to_original(alpha_grid, geom)
    return maps.max(0).indices.cpu().numpy(), region


def labels_full_image(alpha_grid: torch.Tensor, geom: Geometry) -> np.ndarray:
    """Slot ids for every pixel of the original image [orig_h, orig_w].

    Inside the crop region: identical to `labels_fullres`. Outside (the ends of the longer side that the
    center crop cut off, which the model never saw): the alpha maps are extended by edge replication, so
    such a pixel takes the alpha values of the nearest point on the crop border along the cut axis.
    """
    maps, _ = maps_to_original(alpha_grid, geom, full_image=True)
    return maps.max(0).indices.cpu().numpy()


def gt_at_side(masks: np.ndarray, side: int) -> np.ndarray:
    """GT masks [M, H, W] bool, original resolution -> [M, side, side] (published-protocol resize + crop)."""
    return resize_masks_nearest_exact(torch.from_numpy(np.ascontiguousarray(masks)), side).numpy()


# ---- evaluation items ---------------------------------------------------------------------------------


@dataclass
class EvalItem:
    """One evaluation image: the network input (None when features come from a cache) and the ground truth
    at original resolution: masks [M, H, W] bool, categories [M] int, iscrowd [M] bool."""

    image_id: int
    image: torch.Tensor | None
    geometry: Geometry
    masks: np.ndarray
    categories: np.ndarray
    iscrowd: np.ndarray
    file: str = ""


class EvalDataset(Dataset):
    """A CocoDataset seen as EvalItems (image + GT decoded in the loader workers).

    with_images=False reads only the ground truth (feature-cache proxy, patch ceiling). Unusable images
    come out as the data module's skip dicts ({"ok": False, ...}); the eval loop records them.
    """

    def __init__(self, coco: CocoDataset, with_images: bool = True, indices: Sequence[int] | None = None):
        self.coco = coco
        self.with_images = with_images
        self.indices = list(range(len(coco))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> EvalItem | dict[str, Any]:
        index = self.indices[i]
        if self.with_images:
            raw = self.coco[index]
            if not raw["ok"]:
                return raw
            image, geom, image_id, file = raw["image"], raw["geometry"], raw["image_id"], raw["file"]
        else:
            info = self.coco.image_info(index)
            image_id, file, image = int(info["id"]), str(info["file_name"]), None
            geom = compute_geometry(int(info["height"]), int(info["width"]), self.coco.size)
        gt = self.coco.ground_truth(image_id, include_crowd=True)
        return EvalItem(image_id, image, geom, gt.instance_masks, gt.category_ids, gt.iscrowd, file)


def _collate(batch: list[Any]) -> list[Any]:
    return batch


# ---- per-image scoring --------------------------------------------------------------------------------


def score_image(alpha_grid: torch.Tensor, item: EvalItem, protocols: Sequence[str]
                ) -> dict[str, dict[str, float]]:
    """alpha [K, g, g] of one image -> {protocol: metrics.image_scores(...)} for the requested protocols."""
    out = {}
    for p in protocols:
        sel = np.ones(len(item.masks), bool) if PROTOCOL_CROWD[p] else ~item.iscrowd
        masks, cats = item.masks[sel], item.categories[sel]
        if p == "fullres":
            pred, (top, left, bottom, right) = labels_fullres(alpha_grid, item.geometry)
            gt = masks[:, top:bottom, left:right]
        else:
            side = PROTOCOL_SIDE[p]
            pred = labels_at_side(alpha_grid, side)
            gt = gt_at_side(masks, side)
        out[p] = image_scores(pred, gt, cats)
    return out


# ---- the evaluation loop ------------------------------------------------------------------------------


@dataclass
class ImageResult:
    """What `evaluate_model` hands to its per-image callback (pictures, saved masks)."""

    item: EvalItem
    alpha_grid: torch.Tensor  # [K, g, g]
    keep: np.ndarray | None  # [K] 0/1, stage 2 only
    scores: dict[str, dict[str, float]]


def resolve_protocols(protocols: str | Sequence[str]) -> tuple[str, ...]:
    """"all" | "adaslot,fullres" | a sequence -> tuple of known protocol names (one-line error otherwise)."""
    if isinstance(protocols, str):
        names = protocols.split(",")
        protocols = PROTOCOLS if protocols == "all" else tuple(p.strip() for p in names if p.strip())
    protocols = tuple(protocols)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise AdaslotError(f"unknown --protocol {','.join(bad) or '(empty)'}; choose from "
                           f"{', '.join(PROTOCOLS)} or all")
    return protocols


def is_adaptive(model: torch.nn.Module) -> bool:
    """True for a stage-2 (adaptive) model (also through DDP / torch.compile wrappers)."""
    for attr in ("module", "_orig_mod"):
        model = getattr(model, attr, model)
    return bool(getattr(getattr(model, "cfg", None), "adaptive", False))


def keep_mode_label(model: torch.nn.Module, gumbel_eval: int | None) -> str:
    if not is_adaptive(model):
        return "all slots (stage 1)"
    return "deterministic (keep-logit > drop-logit)" if gumbel_eval is None else (
        f"gumbel (official stochastic protocol, seed {gumbel_eval})")


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    encoder: torch.nn.Module | None,
    dataset: CocoDataset | Dataset | Sequence[EvalItem],
    cfg: EvalConfig | None = None,
    *,
    features_fn: Callable[[list[EvalItem]], torch.Tensor] | None = None,
    on_image: Callable[[ImageResult], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score an in-memory model; returns {"protocols": {name: summary}, "keep_mode", "num_images", "skipped"}.

    dataset: a CocoDataset (wrapped in EvalDataset), an EvalDataset, or any sequence of EvalItems.
    Features come from `encoder(images [B, 3, S, S]) -> [B, T, D]`, or from `features_fn(items)` (cache
    proxy). Uses cfg.protocols, batch_size, workers, max_images, gumbel_eval, seed (defaults: EvalConfig()).
    The model is put in eval mode and restored afterwards; the global RNG state is left untouched.
    Summaries: metrics.MetricAccumulator.summary (fg_ari, mbo_i, mbo_c, miou, corloc, num_images,
    num_skipped, and for stage 2 mean_kept_slots, kept_vs_objects_r, kept_histogram).
    """
    from adaslot.config import EvalConfig
    from adaslot.data.coco import CocoDataset

    cfg = cfg or EvalConfig()
    protocols = resolve_protocols(cfg.protocols)
    coco = None
    if isinstance(dataset, CocoDataset):
        coco = dataset
        dataset = EvalDataset(dataset, with_images=features_fn is None)
    elif isinstance(dataset, EvalDataset):
        coco = dataset.coco
    if cfg.max_images is not None and cfg.max_images < len(dataset):  # type: ignore[arg-type]
        dataset = torch.utils.data.Subset(dataset, range(cfg.max_images))  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False,  # type: ignore[arg-type]
                        num_workers=cfg.workers, collate_fn=_collate)
    device = next(model.parameters()).device
    adaptive = is_adaptive(model)
    keep_mode = "gumbel" if cfg.gumbel_eval is not None else "deterministic"
    seed = cfg.seed if cfg.gumbel_eval is None else cfg.gumbel_eval
    accs = {p: MetricAccumulator() for p in protocols}
    skipped: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for batch in loader:
                items = [b for b in batch if isinstance(b, EvalItem)]
                for bad in (b for b in batch if not isinstance(b, EvalItem)):
                    skip = {k: v for k, v in bad.items() if k != "ok"}  # the fields of data.coco.Skip
                    if cfg.strict:
                        from adaslot.data.coco import Skip

                        raise Skip(**skip).strict_error()
                    skipped.append(skip)
                    if coco is not None:
                        coco.record(bad)
                if items:
                    _score_batch(model, encoder, features_fn, items, protocols, accs, adaptive, keep_mode,
                                 device, on_image)
                if progress is not None:
                    progress(len(batch))
    finally:
        model.train(was_training)
    return {
        "protocols": {p: accs[p].summary() for p in protocols},
        "keep_mode": keep_mode_label(model, cfg.gumbel_eval),
        "num_images": accs[protocols[0]].num_images,
        "skipped": skipped,
    }


def _score_batch(model: torch.nn.Module, encoder: Any, features_fn: Any, items: list[EvalItem],
                 protocols: Sequence[str], accs: dict[str, MetricAccumulator], adaptive: bool, keep_mode: str,
                 device: torch.device, on_image: Callable[[ImageResult], None] | None) -> None:
    if features_fn is not None:
        feats = features_fn(items)
    else:
        if encoder is None:
            raise ValueError("evaluate_model needs an encoder or a features_fn")
        feats = encoder(torch.stack([it.image for it in items]).to(device))
    out = model(feats.to(device=device, dtype=torch.float32), keep_mode=keep_mode if adaptive else None)
    b, k, t = out.alpha.shape
    g = math.isqrt(t)
    if g * g != t:
        raise AdaslotError(f"{t} tokens do not form a square patch grid")
    grids = out.alpha.reshape(b, k, g, g)
    keeps = out.keep.detach().cpu().numpy() if out.keep is not None else None
    for i, item in enumerate(items):
        scores = score_image(grids[i], item, protocols)
        kept = int(keeps[i].sum()) if keeps is not None else None
        for p in protocols:
            accs[p].add(scores[p], kept)
        if on_image is not None:
            on_image(ImageResult(item, grids[i], keeps[i] if keeps is not None else None, scores))


# ---- patch ceiling ------------------------------------------------------------------------------------


def patch_ceiling(dataset: CocoDataset | Dataset | Sequence[EvalItem], grid: int = 14, side: int = 224,
                  max_images: int | None = None) -> float:
    """Best FG-ARI a patch-grid labelling reaches on `dataset` (adaslot protocol: crowd kept, GT at 224).

    Each of the grid x grid patches gets the GT object covering most of its foreground pixels (overlap
    pixels excluded; a patch without foreground gets the background label), every pixel of the patch takes
    that label, and FG-ARI is scored against the GT at `side`; mean over images. Models whose masks live on
    the same patch grid get close to this only by bilinear smoothing of boundaries within a patch.
    """
    from adaslot.data.coco import CocoDataset

    if isinstance(dataset, CocoDataset):
        dataset = EvalDataset(dataset, with_images=False)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)  # type: ignore[arg-type]
    patch_of = (np.arange(side) * grid) // side  # patch row/column of every pixel row/column
    pid = patch_of[:, None] * grid + patch_of[None, :]
    scores = []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, EvalItem):
            continue  # unusable image
        labels, _ = overlap_free_labels(gt_at_side(item.masks, side))
        nl = int(labels.max()) + 1
        counts = np.bincount((pid * nl + labels).ravel(), minlength=grid * grid * nl).reshape(grid * grid, nl)
        counts[:, 0] = 0  # background never wins a patch that has some foreground
        majority = np.where(counts.max(1) > 0, counts.argmax(1), 0)
        scores.append(fg_ari(majority[pid], labels))
    if not scores:
        raise AdaslotError("patch ceiling: no usable image in the dataset")
    return float(np.mean(scores))


# ---- the `adaslot eval` command -----------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AdaslotError(f"--device {device!r} is not a torch device (auto, cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AdaslotError("--device cuda but CUDA is not available here; use --device cpu")
    return dev


_CONTRACT_KEYS = ("weights_sha256", "tap_point", "input_size", "num_tokens", "feature_dim", "normalisation")


def check_feature_contract(payload: dict[str, Any], contract: dict[str, Any], what: str) -> None:
    """Refuse (one line) features that differ from those the checkpoint was trained on.

    `what` names the feature source in the message ("--encoder-weights F", "the cache S", ...).
    """
    if payload.get("encoder") and contract.get("encoder") != payload["encoder"]:
        raise AdaslotError(f"the checkpoint was trained on encoder {payload['encoder']!r}, but {what} "
                           f"gives {contract.get('encoder')!r} features")
    want = payload.get("feature_contract") or {}
    for key in _CONTRACT_KEYS:
        if want.get(key) is not None and contract.get(key) is not None and want[key] != contract[key]:
            label = "weights checksum" if key == "weights_sha256" else key
            limit = 16 if key == "weights_sha256" else 200  # a checksum prefix is enough; a tap point is read
            raise AdaslotError(f"{what} do not match the checkpoint's feature contract ({label} "
                               f"{str(contract[key])[:limit]!r} != {str(want[key])[:limit]!r}); use the "
                               "encoder weights the model was trained with")


def _build_coco(cfg: EvalConfig, size: int) -> CocoDataset:
    from adaslot.data.coco import CocoDataset

    if cfg.images or cfg.annotations:
        if not (cfg.images and cfg.annotations):
            raise AdaslotError("--images and --annotations go together (or use --dataset coco --root R)")
        coco = CocoDataset(cfg.images, cfg.annotations, size=size, strict=cfg.strict)
    elif cfg.root:
        if cfg.dataset != "coco":
            raise AdaslotError(f"--dataset {cfg.dataset!r} is not supported: use coco, or --images + "
                               "--annotations")
        coco = CocoDataset.from_root(cfg.root, cfg.split, size=size, strict=cfg.strict)
    else:
        raise AdaslotError("no evaluation data: pass --dataset coco --root R, or --images D --annotations F")
    # strict: a missing image raised above. Unreadable ones are found in loader workers, where a raise
    # would come back as a wrapped traceback: they come out as skips and the eval loop stops at the first.
    coco.strict = False
    if len(coco) == 0:
        raise AdaslotError(f"no usable images in {coco.images_dir} (listed {coco.num_listed}, all missing)")
    if coco.num_without_annotations == len(coco):
        raise AdaslotError(f"{coco.annotation_file} has no annotated images (all {len(coco)} images have no "
                           "annotations): nothing to score; is it the right annotation file?")
    return coco


def run_eval(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """`adaslot eval`: checkpoint + encoder (or cache) + dataset -> OUT/metrics.json, vis/, masks/.

    Returns the metrics.json content plus "out" (the output folder).
    """
    from adaslot.checkpoint import load_model

    protocols = resolve_protocols(cfg.protocols)
    cfg = dataclasses.replace(cfg, protocols=",".join(protocols))
    # Checked before anything is loaded or the output folder is made.
    for flag, value, low in (("--batch-size", cfg.batch_size, 1), ("--workers", cfg.workers, 0),
                             ("--num-vis", cfg.num_vis, 0), ("--max-images", cfg.max_images, 1)):
        if value is not None and value < low:
            raise AdaslotError(f"{flag} must be >= {low}, got {value}")
    device = resolve_device(cfg.device)
    model, payload = load_model(cfg.checkpoint, device)
    mcfg = model.cfg
    if cfg.gumbel_eval is not None and not mcfg.adaptive:
        raise AdaslotError(f"--gumbel-eval samples the stage-2 keep decision, but {cfg.checkpoint} is a "
                           "stage-1 checkpoint (all slots are kept); drop the flag")

    encoder = None
    features_fn = None
    if cfg.from_cache:
        from adaslot.store import open_store

        store = open_store(cfg.from_cache)
        store.check_compatible(payload.get("feature_contract"), encoder=payload.get("encoder"),
                               feature_dim=mcfg.feature_dim, num_tokens=mcfg.num_tokens, split=cfg.split)
        contract = dict(store.contract)
        check_feature_contract(payload, contract, f"the cached features {cfg.from_cache}")
        source = (f"PROXY from cached features {cfg.from_cache}: stored fp16 patch features, not a re-run of "
                  "the encoder")
    else:
        from adaslot.encoders import build_encoder

        encoder = build_encoder(payload["encoder"], weights=cfg.encoder_weights, device=device)
        contract = encoder.contract()
        what = (f"--encoder-weights {cfg.encoder_weights}" if cfg.encoder_weights
                else "the encoder weights found")
        check_feature_contract(payload, contract, what)
        source = "images: frozen encoder re-run on every image"
    if (contract.get("num_tokens"), contract.get("feature_dim")) != (mcfg.num_tokens, mcfg.feature_dim):
        raise AdaslotError(f"the encoder gives {contract.get('num_tokens')}x{contract.get('feature_dim')} "
                           f"features, the checkpoint's model expects {mcfg.num_tokens}x{mcfg.feature_dim}")
    side = int((contract.get("input_size") or [224])[0])
    coco = _build_coco(cfg, side)
    indices = None
    if cfg.from_cache:
        features_fn, indices = _cache_reader(store, coco, device)
    dataset = EvalDataset(coco, with_images=features_fn is None, indices=indices)
    total = len(dataset) if cfg.max_images is None else min(len(dataset), cfg.max_images)

    out_dir = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).resolve().parent / f"eval-{cfg.split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    # metrics.json is written last; an old one must not pass for this run's result if this run stops
    (out_dir / "metrics.json").unlink(missing_ok=True)
    saver = _ImageSaver(out_dir, cfg.save_masks, cfg.num_vis)
    t0 = time.perf_counter()
    if progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("eval", total=total)
            result = evaluate_model(model, encoder, dataset, cfg, features_fn=features_fn, on_image=saver,
                                    progress=lambda n: bar.advance(task, n))
    else:
        result = evaluate_model(model, encoder, dataset, cfg, features_fn=features_fn, on_image=saver)
    saver.finish()
    if result["num_images"] == 0:
        raise AdaslotError(f"none of the {total} images could be used (skip reasons: {coco.skips.summary()})")
    result = {
        "protocols": result["protocols"],
        "protocol_definitions": {p: PROTOCOL_DESCRIPTION[p] for p in protocols},
        "keep_mode": result["keep_mode"],
        "source": source,
        "num_images": result["num_images"],
        "skipped_images": result["skipped"],
        "seconds": round(time.perf_counter() - t0, 2),
        "checkpoint": {
            "path": str(Path(cfg.checkpoint).resolve()),
            "sha256": file_sha256(cfg.checkpoint),
            "stage": payload.get("stage"),
            "step": payload.get("step"),
            "encoder": payload.get("encoder"),
            "model_config": payload.get("model_config"),
        },
        "feature_contract": contract,
        "dataset": {"images_dir": str(coco.images_dir), "annotations": str(coco.annotation_file),
                    "split": cfg.split, **coco.summary()},
        "config": dataclasses.asdict(cfg),
    }
    write_json(out_dir / "metrics.json", result)
    result["out"] = str(out_dir)
    return result


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temp name + rename); NaN / inf become null so the file is valid JSON."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return clean(x.item())
        return x

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(clean(obj), indent=2) + "\n")
    os.replace(tmp, path)


class _ImageSaver:
    """Per-image side outputs: `--save-masks` label PNGs (+ masks/crop_boxes.json), `--num-vis` grids."""

    def __init__(self, out_dir: Path, save_masks: bool, num_vis: int) -> None:
        self.out_dir, self.save_masks, self.num_vis = out_dir, save_masks, num_vis
        self.boxes: dict[str, Any] = {}
        self.vis_done = 0

    def __call__(self, r: ImageResult) -> None:
        from adaslot import viz

        item = r.item
        if self.save_masks:
            labels = labels_full_image(r.alpha_grid, item.geometry)
            viz.save_label_png(self.out_dir / "masks" / f"{item.image_id:012d}.png", labels)
            top, left, bottom, right = item.geometry.crop_region_original()
            self.boxes[str(item.image_id)] = {
                "file": Path(item.file).name, "height": item.geometry.orig_h, "width": item.geometry.orig_w,
                "crop_top_left_bottom_right": [top, left, bottom, right],
            }
        if self.vis_done < self.num_vis and item.image is not None:
            side = item.geometry.out_h
            gt_labels, _ = overlap_free_labels(gt_at_side(item.masks, side))
            pred = labels_at_side(r.alpha_grid, side)
            a = r.scores.get("adaslot") or next(iter(r.scores.values()))
            title = f"image {item.image_id}  FG-ARI {100 * a['fg_ari']:.1f}  mBO {100 * a['mbo_i']:.1f}"
            if r.keep is not None:
                title += f"  kept {int(r.keep.sum())}/{len(r.keep)}"
            img = viz.slot_grid(item.image.float().cpu().numpy(), gt_labels, pred,
                                r.alpha_grid.float().cpu().numpy(), r.keep, title)
            (self.out_dir / "vis").mkdir(parents=True, exist_ok=True)
            img.save(self.out_dir / "vis" / f"{item.image_id:012d}.png")
            self.vis_done += 1

    def finish(self) -> None:
        if self.save_masks:
            (self.out_dir / "masks").mkdir(parents=True, exist_ok=True)
            write_json(self.out_dir / "masks" / "crop_boxes.json", self.boxes)


# ---- feature-cache proxy ------------------------------------------------------------------------------


def _cache_reader(store: Any, coco: CocoDataset, device: torch.device
                  ) -> tuple[Callable[[list[EvalItem]], torch.Tensor], list[int]]:
    """features_fn reading view 0 of a feature store by image id, and the dataset indices the store covers.

    Rows are read as one contiguous range per batch (eval batches follow the store's row order).
    """
    row_of = {int(i): r for r, i in enumerate(np.asarray(store.image_ids)) if i >= 0}
    indices = [k for k, image_id in enumerate(coco.image_ids) if image_id in row_of]
    if not indices:
        raise AdaslotError(f"the cached features {store.path} hold none of the images of "
                           f"{coco.annotation_file}: cache that split (adaslot cache-features --split val)")

    def features_fn(items: list[EvalItem]) -> torch.Tensor:
        rows = np.asarray([row_of[it.image_id] for it in items])
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = np.asarray(store.read(lo, hi))[rows - lo, 0]  # [B, T, D] float16, view 0 = unflipped image
        return torch.from_numpy(block.astype(np.float32)).to(device)

    return features_fn, indices


# ---- terminal output ----------------------------------------------------------------------------------

_ROWS = (("fg_ari", "FG-ARI"), ("mbo_i", "mBO^i"), ("mbo_c", "mBO^c"), ("miou", "mIoU"), ("corloc", "CorLoc"),
         ("mean_kept_slots", "kept slots"), ("kept_vs_objects_r", "r(kept, #objects)"),
         ("num_images", "images"), ("num_skipped", "images without GT"))
_PERCENT = {"fg_ari", "mbo_i", "mbo_c", "miou", "corloc"}


def print_results(result: dict[str, Any]) -> None:
    """A rich table: one column per protocol, metrics in percent (as the papers report them)."""
    from rich.console import Console
    from rich.table import Table

    protos = result["protocols"]
    title = f"adaslot eval: {result.get('num_images', '?')} images, keep: {result.get('keep_mode', '')}"
    table = Table(title=title)
    table.add_column("metric")
    for p in protos:
        table.add_column(p + (f" ({PROTOCOL_SIDE[p]} px)" if p in PROTOCOL_SIDE else " (original px)"),
                         justify="right")
    for key, label in _ROWS:
        if not any(key in s for s in protos.values()):
            continue
        cells = []
        for s in protos.values():
            v = s.get(key)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                cells.append("-")
            elif key in _PERCENT:
                cells.append(f"{100 * v:.1f}")
            elif isinstance(v, float):
                cells.append(f"{v:.2f}")
            else:
                cells.append(str(v))
        table.add_row(label, *cells)
    console = Console()
    console.print(table)
    if "PROXY" in result.get("source", ""):
        console.print(f"[yellow]{result['source']}[/yellow]")
    if result.get("skipped_images"):
        console.print(f"skipped {len(result['skipped_images'])} unusable images (listed in metrics.json)")
    missing = result.get("dataset", {}).get("skipped_by_reason", {}).get("missing", 0)
    if missing:  # listed in the annotations but not on disk: never reach the eval loop
        console.print(f"{missing} annotated images missing on disk (metrics.json: dataset)")
    if "out" in result:
        console.print(f"wrote {result['out']}/metrics.json")
