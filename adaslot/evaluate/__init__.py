"""Evaluation: alpha -> label maps (masks.py), per-image scores and the eval loop (scoring.py) with its
options (options.py), model-free reference scores (references.py), the `adaslot eval` command (run.py) and
its pictures and table (report.py)."""

from adaslot.evaluate.masks import alpha_grids, gt_at_side, labels_at_side, labels_full_image, labels_fullres
from adaslot.evaluate.options import EvalOptions
from adaslot.evaluate.references import patch_ceiling, trivial_baseline
from adaslot.evaluate.report import print_results
from adaslot.evaluate.run import run_eval
from adaslot.evaluate.scoring import (
    PROTOCOL_CROWD,
    PROTOCOL_SIDE,
    EvalDataset,
    EvalItem,
    ImageResult,
    evaluate_model,
    is_adaptive,
    keep_mode_label,
    score_image,
)

__all__ = ["PROTOCOL_CROWD", "PROTOCOL_SIDE", "EvalDataset", "EvalItem", "EvalOptions", "ImageResult",
           "alpha_grids", "evaluate_model", "gt_at_side", "is_adaptive", "keep_mode_label", "labels_at_side",
           "labels_full_image", "labels_fullres", "patch_ceiling", "print_results", "run_eval", "score_image",
           "trivial_baseline"]
