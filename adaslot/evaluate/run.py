"""`adaslot eval`: checkpoint + its features (live encoder, or a cached val store: adaslot.features) +
dataset -> OUT/metrics.json, vis/, masks/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from adaslot import faults
from adaslot.config import EvalConfig
from adaslot.data.datasets import open_dataset
from adaslot.device import resolve_device
from adaslot.errors import AdaslotError
from adaslot.evaluate.options import EvalOptions
from adaslot.evaluate.report import CONFUSION_PNG, ImageSaver, save_count_confusion
from adaslot.evaluate.scoring import PROTOCOL_DESCRIPTION, EvalDataset, evaluate_model
from adaslot.files import file_sha256, write_json
from adaslot.progress import progress_bar


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Score `cfg.checkpoint`; returns the metrics.json content plus "out" (the output folder)."""
    from adaslot.checkpoint import load_model
    from adaslot.features import checkpoint_features

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
    features = checkpoint_features(payload, device, cfg.from_cache, cfg.encoder_weights, cfg.data.split)
    contract = features.contract
    coco = open_dataset(cfg.data, features.image_size)
    if coco.num_without_annotations == len(coco):
        raise AdaslotError(f"{coco.annotation_file} has no annotated images (all {len(coco)} images have no "
                           "annotations): nothing to score; is it the right annotation file?")
    dataset = EvalDataset(coco, with_images=features.needs_images, indices=features.covering(coco))
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
        result = evaluate_model(model, features, dataset, EvalOptions.from_config(cfg), on_image=saver,
                                progress=lambda n: bar.advance(task, n))
    saver.finish()
    if result["num_images"] == 0:
        raise AdaslotError(f"none of the {total} images could be used (skip reasons: {coco.skips.summary()})")
    result = {
        "protocols": result["protocols"],
        "protocol_definitions": {p: PROTOCOL_DESCRIPTION[p] for p in protocols},
        "keep_mode": result["keep_mode"],
        "method": {**result["method"], "overridden": sorted(given)},
        "source": features.description,
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
