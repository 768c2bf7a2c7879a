"""`adaslot eval`: checkpoint + encoder (or a cached val store) + dataset -> OUT/metrics.json, vis/,
masks/."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adaslot import faults
from adaslot.config import EvalConfig
from adaslot.data.datasets import open_dataset
from adaslot.device import resolve_device
from adaslot.errors import AdaslotError
from adaslot.evaluate.report import CONFUSION_PNG, ImageSaver, save_count_confusion
from adaslot.evaluate.scoring import PROTOCOL_DESCRIPTION, EvalDataset, EvalItem, evaluate_model
from adaslot.files import file_sha256, write_json
from adaslot.progress import progress_bar

if TYPE_CHECKING:
    from adaslot.data.coco import CocoDataset

def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Score `cfg.checkpoint`; returns the metrics.json content plus "out" (the output folder)."""
    from adaslot.checkpoint import check_feature_shape, load_encoder, load_model

    cfg.validate()
    protocols = cfg.protocols
    given = cfg.method.given()
    device = resolve_device(cfg.device)
    model, payload = load_model(cfg.checkpoint, device, given)
    mcfg = model.cfg  # the inference method that runs: the checkpoint's, overridden by cfg.method
    if cfg.gumbel_eval is not None and not mcfg.adaptive:
        raise AdaslotError(f"--gumbel-eval samples the stage-2 keep decision, but {cfg.checkpoint} is a "
                           "stage-1 checkpoint (all slots are kept); drop the flag")
    if cfg.gumbel_eval is not None and mcfg.selector == "quality":
        raise AdaslotError(f"--gumbel-eval samples the Gumbel selector's keep decision, but {cfg.checkpoint} "
                           "selects slots by quality (no noise); drop the flag")
    trained_on = payload.get("feature_contract") or {"encoder": payload.get("encoder")}
    encoder, features_fn, indices = None, None, None
    if cfg.from_cache:
        from adaslot.store import open_store

        store = open_store(cfg.from_cache)
        store.check_compatible(trained_on, split=cfg.data.split)
        contract = dict(store.contract)
        source = (f"PROXY from cached features {cfg.from_cache}: stored fp16 patch features, not a re-run of "
                  "the encoder")
        check_feature_shape(contract, payload)
    else:
        encoder = load_encoder(payload, cfg.encoder_weights, device)
        contract = encoder.contract()
        source = "images: frozen encoder re-run on every image"
    coco = open_dataset(cfg.data, int((contract.get("input_size") or [224])[0]))
    if coco.num_without_annotations == len(coco):
        raise AdaslotError(f"{coco.annotation_file} has no annotated images (all {len(coco)} images have no "
                           "annotations): nothing to score; is it the right annotation file?")
    if cfg.from_cache:
        features_fn, indices = cache_reader(store, coco, device)
    dataset = EvalDataset(coco, with_images=features_fn is None, indices=indices)
    total = len(dataset) if cfg.max_images is None else min(len(dataset), cfg.max_images)

    out_dir = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).resolve().parent / f"eval-{cfg.data.split}"
    faults.note(kept=f"{out_dir / 'metrics.json'} is not written (it comes last)")
    out_dir.mkdir(parents=True, exist_ok=True)
    # metrics.json is written last; an old one must not pass for this run's result if this run stops
    for stale in ("metrics.json", CONFUSION_PNG):
        (out_dir / stale).unlink(missing_ok=True)
    saver = ImageSaver(out_dir, cfg.save_masks, cfg.num_vis)
    t0 = time.perf_counter()
    with progress_bar("eval", cfg.progress, unit="img") as bar:
        task = bar.add_task("eval", total=total)
        result = evaluate_model(model, encoder, dataset, cfg, features_fn=features_fn, on_image=saver,
                                progress=lambda n: bar.advance(task, n))
    saver.finish()
    if result["num_images"] == 0:
        raise AdaslotError(f"none of the {total} images could be used (skip reasons: {coco.skips.summary()})")
    result = {
        "protocols": result["protocols"],
        "protocol_definitions": {p: PROTOCOL_DESCRIPTION[p] for p in protocols},
        "keep_mode": result["keep_mode"],
        "method": {**result["method"], "overridden": sorted(given)},
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
                    "split": cfg.data.split, **coco.summary()},
        "config": cfg.to_dict(),
    }
    confusion = save_count_confusion(result["protocols"], out_dir / CONFUSION_PNG)
    result["count_confusion_png"] = str(confusion) if confusion else None
    write_json(out_dir / "metrics.json", result)
    result["out"] = str(out_dir)
    return result


def cache_reader(store: Any, coco: CocoDataset, device: torch.device
                 ) -> tuple[Callable[[list[EvalItem]], torch.Tensor], list[int]]:
    """features_fn reading view 0 of a feature store by image id (checksums checked: a damaged store is a
    one-line error), and the dataset indices the store covers."""
    row_of = {int(i): r for r, i in enumerate(np.asarray(store.image_ids)) if i >= 0}
    indices = [k for k, image_id in enumerate(coco.image_ids) if image_id in row_of]
    if not indices:
        raise AdaslotError(f"the cached features {store.path} hold none of the images of "
                           f"{coco.annotation_file}: cache that split (adaslot cache-features --split val)")

    def features_fn(items: list[EvalItem]) -> torch.Tensor:
        rows = np.asarray([row_of[it.image_id] for it in items])
        block = store.read_views(rows, np.zeros_like(rows))  # [B, T, D] float16, view 0 = unflipped image
        return torch.from_numpy(block).to(device).float()

    return features_fn, indices
