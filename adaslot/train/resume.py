"""What a run folder's config allows: the model config of a run, and which settings changed on resume."""

from __future__ import annotations

from typing import Any

from adaslot.config import ModelConfig, TrainConfig, model_config_for
from adaslot.config.base import cli_fields, flag_of, names_where
from adaslot.config.train import flat_settings
from adaslot.contract import check_contract


def resolve_model_config(cfg: TrainConfig, feature_dim: int, num_tokens: int) -> ModelConfig:
    """Preset + stage defaults, then --model, --num-slots, --selector; D and T come from the input."""
    overrides = {**cfg.model_settings(), "feature_dim": feature_dim, "num_tokens": num_tokens}
    return model_config_for(cfg.preset, cfg.stage, **overrides).validate()


def changed_settings(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """`--flag old -> new` for every setting that differs from a saved run's config, those declared
    `resumable` apart. A setting missing from `saved` (a run from an older adaslot) counts as its default."""
    old, new = flat_settings(TrainConfig.from_dict(saved).to_dict()), flat_settings(cfg.to_dict())
    resumable = names_where(TrainConfig, "resumable")
    flags = {f.name: flag_of(f) for f, _t, _path in cli_fields(TrainConfig)}
    return [f"{flags.get(k, k)} {old[k]!r} -> {v!r}" for k, v in new.items()
            if k not in resumable and old[k] != v]


def check_warmstart_features(payload: dict[str, Any], contract: dict[str, Any] | None, encoder_name: str,
                             what: str) -> None:
    """Refuse a warm-start checkpoint trained on other features (encoder, weights, tap point, resolution)."""
    theirs = payload.get("feature_contract") or {"encoder": payload.get("encoder")}
    check_contract(theirs, contract or {"encoder": encoder_name}, "this run's features",
                   f"those --warmstart {what} was trained on", "train stage 2 on the features of stage 1")
