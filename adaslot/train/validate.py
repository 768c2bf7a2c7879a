"""Periodic validation during training: the `adaslot` protocol on the first val images, scored by the same
code as `adaslot eval` (deterministic keep, seeded slot noise; the global RNG is left untouched)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adaslot.config import DataSpec, TrainConfig
from adaslot.data.datasets import open_dataset
from adaslot.features import FeatureSource, LiveFeatures, StoreFeatures, open_features

if TYPE_CHECKING:
    from adaslot.evaluate import EvalOptions


class Validator:
    """`validator(model) -> {fg_ari, mbo_i, ...}` (the scalars of the eval summary) on the first `max_images`
    val images (default `cfg.val_max_images`; 0: all): re-running the encoder on a COCO root's val split
    (--val-root, or --root online), or reading a cached val store (--val-from-cache, the fast proxy; its
    ground truth comes from the dataset recorded in the store). `source` gives the features the run trained
    on (`contract`, `encoder_name`; a live `features` source is reused); the model runs its own inference
    method (docs/adaptive.md), `method` overrides it as eval's flags do."""

    def __init__(self, cfg: TrainConfig, source: Any, device: torch.device, max_images: int | None = None,
                 method: dict[str, Any] | None = None) -> None:
        self.cfg, self.source, self.device, self.method = cfg, source, device, dict(method or {})
        self.max_images = cfg.val_max_images if max_images is None else max_images or None
        self.dataset: Any = None
        self.features: FeatureSource | None = None

    def _setup(self) -> None:
        cfg = self.cfg
        trained = getattr(self.source, "features", None)
        if not cfg.val_from_cache and isinstance(trained, LiveFeatures):
            features: FeatureSource = trained  # online training: its encoder, already built
        else:  # a val store, or the encoder of the run's contract at the contract's side
            features = open_features(cfg.val_from_cache, self.device, encoder=None if cfg.val_from_cache else
                                     self.source.encoder_name, weights=cfg.encoder_weights,
                                     expected=self.source.contract,
                                     expected_what="the features this run trained on")
        if isinstance(features, StoreFeatures):
            src = features.store.attrs.get("source", {})
            if src.get("dataset") == "movi" or cfg.data.dataset == "movi":
                root = cfg.val_root or cfg.data.root or src.get("images")  # the cached split's MOVi folder
                data = DataSpec(dataset="movi", root=root, split="val")
            else:
                data = (DataSpec(root=cfg.val_root, split="val") if cfg.val_root else
                        DataSpec(images=src.get("images"), annotations=src.get("annotations")))
        else:
            data = DataSpec(dataset=cfg.data.dataset, root=cfg.val_root or cfg.data.root, split="val")
        self.dataset = open_dataset(data, features.image_size)
        self.features = features

    def options(self) -> EvalOptions:
        """The EvalOptions of validation: the run's seed and workers, its val subset, the dataset's
        protocol; batch size and the skip policy are EvalOptions' defaults (validation skips an unusable val
        image rather than stopping the run)."""
        from adaslot.evaluate import EvalOptions

        protocol = getattr(self.dataset, "protocol", "adaslot")  # MOVi data: "movi"
        return EvalOptions(protocols=(protocol,), workers=self.cfg.workers, max_images=self.max_images,
                           seed=self.cfg.seed, method=self.method)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        from adaslot.evaluate import evaluate_model

        if self.dataset is None:
            self._setup()
        assert self.features is not None
        options = self.options()
        result = evaluate_model(model, self.features, self.dataset, options)
        summary = result["protocols"][options.protocols[0]]
        return {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
