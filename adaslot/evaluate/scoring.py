"""Scoring a model: per-image metrics under each protocol (docs/method.md#protocols), and the eval loop.

Stage-2 models keep a slot when its keep logit beats its drop logit (a quality-selector model selects as in
training), and every image starts from the same slot-initialisation noise (`SlotAttention.fixed_init(seed)`),
so a score is a function of the image alone, whatever the batch size, as in `adaslot segment`
(docs/method.md#deviations). `gumbel_eval=SEED` is the official evaluation: the slot initialisation and the
Gumbel noise are sampled per image, from a generator seeded with SEED. Slots merge as the model's inference
method says (`cfg.merge_slots`, recorded in the checkpoint; `EvalOptions.method` overrides it), in the
model's forward (docs/adaptive.md). The caller's global RNG state is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from adaslot.data.coco import keep_list
from adaslot.data.transforms import Geometry, compute_geometry
from adaslot.device import resolve_workers
from adaslot.evaluate.masks import alpha_grids, gt_at_side, labels_at_side, labels_fullres
from adaslot.evaluate.options import EvalOptions
from adaslot.metrics import MetricAccumulator, image_scores

if TYPE_CHECKING:
    from adaslot.data.coco import CocoDataset
    from adaslot.features import FeatureSource
    from adaslot.model import AdaSlot

PROTOCOL_SIDE = {"adaslot": 224, "dinosaur": 320, "movi": 128}
PROTOCOL_CROWD = {"adaslot": True, "dinosaur": False, "fullres": True, "movi": True}  # crowd kept?
PROTOCOL_DESCRIPTION = {
    "adaslot": "AdaSlot configs: crowd kept; GT shorter side 224 (nearest-exact) + center crop; alpha "
               "bilinear to 224",
    "dinosaur": "DINOSAUR paper: crowd dropped; GT shorter side 320 (nearest-exact) + center crop; alpha "
                "bilinear to 320",
    "fullres": "crowd kept; original pixels of the center-crop region; alpha bilinear straight to them; GT "
               "never resized",
    "movi": "official MOVi: every frame an image; GT object ids at 128 x 128 (nearest-exact), background "
            "ignored by FG-ARI and mBO; alpha bilinear to 128",
}


@dataclass
class EvalItem:
    """One evaluation image: the network input (None when features come from a cache) and the ground truth
    at original resolution: masks [M, H, W] bool, categories [M] int, iscrowd [M] bool; problems: its
    annotations that could not be decoded."""

    image_id: int
    image: torch.Tensor | None
    geometry: Geometry
    masks: np.ndarray
    categories: np.ndarray
    iscrowd: np.ndarray
    file: str = ""
    problems: list[str] = field(default_factory=list)


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
        return EvalItem(image_id, image, geom, gt.instance_masks, gt.category_ids, gt.iscrowd, file,
                        gt.problems)


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
        # MOVi: no categories are read (docs/method.md#movi), so no class-level mBO
        out[p] = image_scores(pred, gt, None if p == "movi" else cats)
    return out


@dataclass
class ImageResult:
    """What `evaluate_model` hands to its per-image callback (pictures, saved masks)."""

    item: EvalItem
    alpha_grid: torch.Tensor  # [K, g, g]
    keep: np.ndarray | None  # [K] 0/1: kept (stage 2) or left after merging; None: every slot
    scores: dict[str, dict[str, float]]
    merged_into: np.ndarray | None = None  # [K] the slot each slot merged into (itself: not merged)
    slot_masks: torch.Tensor | None = None  # [K, g, g] each slot's own mask before merging (pictures)


def _unwrap(model: torch.nn.Module) -> AdaSlot:
    """The model inside DDP / torch.compile wrappers."""
    for attr in ("module", "_orig_mod"):
        model = getattr(model, attr, model)
    return cast("AdaSlot", model)


def is_adaptive(model: torch.nn.Module) -> bool:
    """True for a stage-2 (adaptive) model (also through DDP / torch.compile wrappers)."""
    return bool(getattr(getattr(_unwrap(model), "cfg", None), "adaptive", False))


def keep_mode_label(model: torch.nn.Module, gumbel_eval: int | None = None) -> str:
    """How the evaluated slots were chosen and grouped (the model's inference method), in words
    (metrics.json `keep_mode`)."""
    cfg: Any = getattr(_unwrap(model), "cfg", None)
    if not is_adaptive(model):
        label = "all slots (stage 1)"
    elif getattr(cfg, "selector", "adaslot") == "quality":
        label = (f"quality selection (tau {cfg.quality_tau}, rho {cfg.quality_rho}, "
                 f"alpha {cfg.quality_alpha}, K_min {cfg.quality_k_min})")
    elif gumbel_eval is None:
        label = "deterministic (keep-logit > drop-logit)"
    else:
        label = f"gumbel (official stochastic protocol, seed {gumbel_eval})"
    if getattr(cfg, "merge_slots", 0):
        what = "slot vectors" if cfg.merge_on == "slots" else "mean input features"
        how = ", each group decoded from its mean slot" if cfg.merge_in_training else ""
        label += f", then slots merged below cosine distance {cfg.merge_slots:g} of their {what}{how}"
    return label


def method_record(model: torch.nn.Module) -> dict[str, Any]:
    """The inference method that ran (ModelConfig.method), for metrics.json, manifest.json and score.json."""
    return dict(_unwrap(model).cfg.method)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    features: FeatureSource,
    dataset: CocoDataset | Dataset | Sequence[EvalItem],
    options: EvalOptions | None = None,
    *,
    on_image: Callable[[ImageResult], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score an in-memory model; returns {"protocols": {name: summary}, "keep_mode", "num_images", "skipped"}.

    features: where the features [B, T, D] come from (adaslot.features: the live encoder, or a feature
    store, the fast proxy). dataset: a CocoDataset (wrapped in EvalDataset: the images `features` covers),
    an EvalDataset, or any sequence of EvalItems. options: how to score (default: EvalOptions()). The model
    is put in eval mode and restored afterwards; the global RNG is left untouched. Summaries:
    metrics.MetricAccumulator.summary.
    """
    from adaslot.data.coco import CocoDataset, Skip

    opts = options or EvalOptions()
    protocols = opts.protocols
    coco: Any = None
    # any dataset with CocoDataset's interface (data.movi, data.coco_wds) is wrapped the same way
    if isinstance(dataset, CocoDataset) or hasattr(dataset, "ground_truth"):
        coco = dataset
        dataset = EvalDataset(cast("CocoDataset", dataset), with_images=features.needs_images,
                              indices=features.covering(dataset))
    elif isinstance(dataset, EvalDataset):
        coco = dataset.coco
    # the dataset has __len__ at run time; torch declares none on Dataset (hence the ignores)
    if opts.max_images is not None and opts.max_images < len(dataset):  # type: ignore[arg-type]  # see above
        dataset = torch.utils.data.Subset(dataset, range(opts.max_images))  # type: ignore[arg-type]  # idem
    loader = DataLoader(dataset, batch_size=opts.batch_size, shuffle=False,  # type: ignore[arg-type]  # idem
                        num_workers=resolve_workers(opts.workers), collate_fn=keep_list)
    device = next(model.parameters()).device
    keep_mode = "gumbel" if opts.gumbel_eval is not None else "deterministic"
    seed = opts.seed if opts.gumbel_eval is None else opts.gumbel_eval
    accs = {p: MetricAccumulator() for p in protocols}
    skipped: list[dict[str, Any]] = []
    was_training = model.training
    inner = _unwrap(model)
    recorded = inner.cfg
    inner.cfg = recorded.with_method(dict(opts.method), "this model")
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for batch in loader:
                items = [b for b in batch if isinstance(b, EvalItem)]
                for bad in (b for b in batch if not isinstance(b, EvalItem)):
                    skip = {k: v for k, v in bad.items() if k != "ok"}  # the fields of data.coco.Skip
                    if opts.strict:
                        raise Skip(**skip).strict_error()
                    skipped.append(skip)
                    if coco is not None:
                        coco.record(bad)
                if opts.strict:
                    problem = next((p for it in items for p in it.problems), None)
                    if problem:
                        from adaslot.errors import AdaslotError

                        raise AdaslotError(f"{problem}; drop --strict to skip it")
                if items:
                    _score_batch(model, features.features(items), items,
                                 accs, keep_mode, opts, on_image)
                if progress is not None:
                    progress(len(batch))
        label, method = keep_mode_label(model, opts.gumbel_eval), method_record(model)
    finally:
        model.train(was_training)
        inner.cfg = recorded
    return {
        "protocols": {p: accs[p].summary() for p in protocols},
        "keep_mode": label,
        "method": method,
        "num_images": accs[protocols[0]].num_images,
        "skipped": skipped,
    }


def _score_batch(model: torch.nn.Module, feats: torch.Tensor, items: list[EvalItem],
                 accs: dict[str, MetricAccumulator], keep_mode: str, opts: EvalOptions,
                 on_image: Callable[[ImageResult], None] | None) -> None:
    """features [B, T, D] of `items` -> the model -> each item's scores into `accs` (and `on_image`)."""
    device = next(model.parameters()).device
    feats = feats.to(device=device, dtype=torch.float32)
    init = None
    if opts.gumbel_eval is None:  # docs/method.md#deviations: one slot-init draw for every image
        inner = _unwrap(model)
        init = inner.slot_attention.fixed_init(len(items), inner.cfg.num_slots, opts.seed)
    out = model(feats, slots_init=init, keep_mode=keep_mode if is_adaptive(model) else None)
    keep, groups = out.segment_keep, out.groups  # the model's inference method (docs/adaptive.md)
    grids = alpha_grids(out.segment_alpha)
    own = alpha_grids(out.alpha) if groups is not None and on_image is not None else None
    keeps = keep.detach().float().cpu().numpy() if keep is not None else None
    for i, item in enumerate(items):
        scores = score_image(grids[i], item, opts.protocols)
        kept = int(keeps[i].sum()) if keeps is not None else None
        for p in opts.protocols:
            accs[p].add(scores[p], kept)
        if on_image is not None:
            on_image(ImageResult(item, grids[i], keeps[i] if keeps is not None else None, scores,
                                 groups[i].cpu().numpy() if groups is not None else None,
                                 own[i] if own is not None else None))
