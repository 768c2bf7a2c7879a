"""Periodic validation during training: the `adaslot` protocol on the first val images, scored by the same
code as `adaslot eval` (deterministic keep, seeded slot noise; the global RNG is left untouched)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adaslot.config import DataSpec, EvalConfig, TrainConfig
from adaslot.config.model import MethodOverrides
from adaslot.data.datasets import open_dataset


class Validator:
    """`validator(model) -> {fg_ari, mbo_i, ...}` (the scalars of the eval summary) on the first `max_images`
    val images (default `cfg.val_max_images`; 0: all): re-running the encoder on a COCO root's val split
    (--val-root, or --root online), or reading a cached val store (--val-from-cache, the fast proxy; its
    ground truth comes from the dataset recorded in the store). `source` gives the run's feature contract and
    encoder name; the model runs its own inference method (docs/adaptive.md), `method` overrides it as
    eval's flags do."""

    def __init__(self, cfg: TrainConfig, source: Any, device: torch.device, max_images: int | None = None,
                 method: dict[str, Any] | None = None) -> None:
        self.cfg, self.source, self.device, self.method = cfg, source, device, dict(method or {})
        self.max_images = cfg.val_max_images if max_images is None else max_images or None
        self.dataset: Any = None
        self.encoder: Any = None
        self.features_fn: Any = None

    def _setup(self) -> None:
        from adaslot.encoders import build_encoder
        from adaslot.evaluate import cache_reader

        cfg = self.cfg
        side = (self.source.contract or {}).get("input_size", [None])[0]
        if cfg.val_from_cache:
            from adaslot.store import open_store

            store = open_store(cfg.val_from_cache)
            store.check_compatible(self.source.contract)
            src = store.attrs.get("source", {})
            if src.get("dataset") == "movi" or cfg.data.dataset == "movi":
                root = cfg.val_root or cfg.data.root or src.get("images")  # the cached split's MOVi folder
                data = DataSpec(dataset="movi", root=root, split="val")
            else:
                data = (DataSpec(root=cfg.val_root, split="val") if cfg.val_root else
                        DataSpec(images=src.get("images"), annotations=src.get("annotations")))
            self.dataset = open_dataset(data, int(store.contract["input_size"][0]))
            self.features_fn, indices = cache_reader(store, self.dataset, self.device)
            self.indices: list[int] | None = indices
            return
        self.encoder = getattr(self.source, "encoder", None)
        if self.encoder is None:  # a run from a store: the encoder of its contract, at the contract's side
            from adaslot.checkpoint import ENCODER_FIX
            from adaslot.contract import check_contract

            self.encoder = build_encoder(self.source.encoder_name, cfg.encoder_weights, device=self.device,
                                         image_size=side)
            what = (f"--encoder-weights {cfg.encoder_weights}" if cfg.encoder_weights
                    else "the encoder weights found")
            check_contract(self.source.contract, self.encoder.contract(side), what,
                           "the features this run trained on", ENCODER_FIX)
        val = DataSpec(dataset=cfg.data.dataset, root=cfg.val_root or cfg.data.root, split="val")
        self.dataset = open_dataset(val, side or self.encoder.image_size)
        self.indices = None

    def __call__(self, model: nn.Module) -> dict[str, float]:
        from adaslot.evaluate import EvalDataset, evaluate_model

        if self.dataset is None:
            self._setup()
        protocol = getattr(self.dataset, "protocol", "adaslot")  # MOVi data: "movi"
        ecfg = EvalConfig(protocol=protocol, batch_size=16, workers=0, max_images=self.max_images,
                          seed=self.cfg.seed, method=MethodOverrides(**self.method))
        data = EvalDataset(self.dataset, with_images=self.features_fn is None, indices=self.indices)
        result = evaluate_model(model, self.encoder, data, ecfg, features_fn=self.features_fn)
        summary = result["protocols"][protocol]
        return {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
