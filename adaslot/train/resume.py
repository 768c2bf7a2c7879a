"""What a rerun of a run folder may change, and which checkpoints a stage-2 run may warm-start from."""

from __future__ import annotations

from typing import Any

from adaslot.config import RunSpec, TrainConfig
from adaslot.config.base import cli_fields, flag_of, names_where
from adaslot.contract import check_contract


def changed_settings(saved: RunSpec, new: RunSpec) -> list[str]:
    """`--flag old -> new` for every setting (RunSpec.flat: train settings and model.X) in which `new`
    differs from the `saved` spec of a run, those declared `resumable` apart."""
    old, now = saved.flat(), new.flat()
    resumable = names_where(TrainConfig, "resumable")
    flags = {f.name: flag_of(f) for f, _t, _path in cli_fields(TrainConfig)}

    def flag(key: str) -> str:
        return f"--model {key.removeprefix('model.')}" if key.startswith("model.") else flags.get(key, key)

    return [f"{flag(k)} {old.get(k)!r} -> {v!r}" for k, v in now.items()
            if k not in resumable and old.get(k) != v]


def check_warmstart_features(payload: dict[str, Any], contract: dict[str, Any] | None, encoder_name: str,
                             what: str) -> None:
    """Refuse a warm-start checkpoint trained on other features (encoder, weights, tap point, resolution)."""
    theirs = payload.get("feature_contract") or {"encoder": payload.get("encoder")}
    check_contract(theirs, contract or {"encoder": encoder_name}, "this run's features",
                   f"those --warmstart {what} was trained on", "train stage 2 on the features of stage 1")
