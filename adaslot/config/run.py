"""A run, resolved once: `RunSpec` holds a run's TrainConfig and the ModelConfig it trains, with the input's
encoder name, feature contract and world size (docs/training.md#the-run-folder).

`adaslot train` resolves the spec once and writes it to the run folder (`RunSpec.file`: config.json) and
into every checkpoint; resume, sweep planning, sweep results, warm-start matching, sweep scoring and the demo
read it back (`RunSpec.load`, `RunSpec.from_payload`) and never resolve a model config themselves.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaslot.config.model import ModelConfig, get_preset, model_config_for
from adaslot.config.train import TrainConfig
from adaslot.errors import AdaslotError

CONFIG_FILE = "config.json"
# config.json's keys -> the checkpoint payload's keys for the same parts of the spec
PAYLOAD_KEYS = {"train": "train_config", "model": "model_config", "encoder": "encoder",
                "feature_contract": "feature_contract", "world_size": "world_size"}


@dataclass(frozen=True)
class RunSpec:
    """What a run is: `train` (stage defaults filled in), `model` (the model config it builds:
    preset + stage defaults + the run's model settings, D and T of its input), `encoder` (the input's encoder
    name), `feature_contract` (the input's, None for an older run), `world_size` (ranks it trained on)."""

    train: TrainConfig
    model: ModelConfig
    encoder: str
    feature_contract: dict[str, Any] | None = None
    world_size: int = 1

    @classmethod
    def resolve(cls, train: TrainConfig, feature_dim: int | None = None, num_tokens: int | None = None, *,
                encoder: str | None = None, feature_contract: dict[str, Any] | None = None,
                world_size: int = 1) -> RunSpec:
        """The one resolution of a run: preset + stage defaults, then --model, --num-slots, --selector,
        --merge-slots, --merge-on. D and T (feature_dim, num_tokens) are the input's when given (training);
        otherwise (planning a sweep) they follow the encoder (default: the preset's) at its side.
        `encoder`: the input's encoder name (default: train.encoder, else the preset's)."""
        train = train.resolved()  # its own checks are the caller's (train: checked_settings)
        from_input = feature_dim is not None and num_tokens is not None
        overrides = {**train.model_settings(), "feature_dim": feature_dim, "num_tokens": num_tokens}
        model = model_config_for(train.preset, train.stage, None if from_input else train.encoder,
                                 None if from_input else train.image_size, **overrides).validate()
        name = encoder or train.encoder or get_preset(train.preset).encoder
        contract = None if feature_contract is None else json.loads(json.dumps(feature_contract))  # as saved
        return cls(train, model, name, contract, world_size)

    def flat(self) -> dict[str, Any]:
        """The run's settings under one flat name each (how resume, sweep planning and sweep results compare
        runs): train settings bare (its DataSpec's too), model settings as model.X in place of the --model
        overrides; tuples stay tuples."""
        train = self.train.to_dict()
        flat = {k: v for k, v in train.items() if k not in ("data", "model_overrides")}
        flat |= train["data"]
        flat |= {f"model.{k}": v for k, v in self.model.to_dict().items()}
        return {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}

    def to_dict(self) -> dict[str, Any]:
        """config.json's content: {"train", "model", "encoder", "feature_contract", "world_size"}."""
        return {"train": self.train.to_dict(), "model": self.model.to_dict(), "encoder": self.encoder,
                "feature_contract": self.feature_contract, "world_size": self.world_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """From `to_dict()` output, also of an older or newer adaslot: a missing key takes its default
        (encoder: "unknown"), an unknown model setting is ignored."""
        train = TrainConfig.from_dict(d.get("train") or {})
        model = ModelConfig.from_dict(d.get("model") or {}, strict=False)
        return cls(train, model, d.get("encoder") or "unknown", d.get("feature_contract"),
                   int(d.get("world_size") or 1))

    def payload(self) -> dict[str, Any]:
        """The spec as a checkpoint records it (keys train_config, model_config, encoder, ...)."""
        return {PAYLOAD_KEYS[k]: v for k, v in self.to_dict().items()}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RunSpec:
        """The spec a checkpoint recorded (`payload()`), missing keys as in `from_dict`."""
        return cls.from_dict({k: payload.get(p) for k, p in PAYLOAD_KEYS.items()})

    @staticmethod
    def file(run_dir: str | Path) -> Path:
        """Where a run folder keeps its spec: run_dir/config.json (train writes `to_dict()` there atomically;
        settings code imports no file helpers)."""
        return Path(run_dir) / CONFIG_FILE

    @classmethod
    def load(cls, run_dir: str | Path) -> RunSpec:
        """The spec of a run folder (its config.json); one line if it is missing or unreadable."""
        path = cls.file(run_dir)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise AdaslotError(f"{run_dir} is not a run folder (no {CONFIG_FILE})") from None
        except (OSError, ValueError) as e:
            raise AdaslotError(f"{path} cannot be read: {e}") from None
        if not isinstance(d, dict):
            raise AdaslotError(f"{path} is not a run's config (a JSON object)")
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)
