"""The options of `evaluate_model`: how to score, apart from any command's settings. `adaslot eval` turns its
EvalConfig into them (`EvalOptions.from_config`), training validation and sweep scoring build them from the
run's TrainConfig (train/validate.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adaslot.config.eval import PROTOCOLS, resolve_protocols

if TYPE_CHECKING:
    from adaslot.config import EvalConfig


@dataclass(frozen=True)
class EvalOptions:
    """protocols: the protocols to score (docs/method.md#protocols); batch_size: images per forward pass (a
    score does not depend on it); workers: loader worker processes (None: one per spare core); max_images:
    score only the first N images (None: all); gumbel_eval: sample the stage-2 keep decision with Gumbel
    noise of this seed (the official protocol; None: keep-logit > drop-logit); seed: the slot-initialisation
    noise, one draw shared by every image; method: inference-method overrides (ModelConfig inference fields
    -> value; docs/adaptive.md); strict: stop at the first unusable image or annotation instead of skipping
    it."""

    protocols: tuple[str, ...] = PROTOCOLS
    batch_size: int = 32
    workers: int | None = None
    max_images: int | None = None
    gumbel_eval: int | None = None
    seed: int = 0
    method: dict[str, Any] = field(default_factory=dict)
    strict: bool = False

    def __post_init__(self) -> None:
        protocols: str | Sequence[str] = self.protocols
        object.__setattr__(self, "protocols", resolve_protocols(protocols))
        if self.batch_size < 1:
            raise ValueError(f"EvalOptions.batch_size must be >= 1, got {self.batch_size}")

    @classmethod
    def from_config(cls, cfg: EvalConfig) -> EvalOptions:
        """The options `adaslot eval` scores with (validated EvalConfig -> EvalOptions)."""
        return cls(protocols=cfg.protocols, batch_size=cfg.batch_size, workers=cfg.workers,
                   max_images=cfg.max_images, gumbel_eval=cfg.gumbel_eval, seed=cfg.seed,
                   method=cfg.method.given(), strict=cfg.data.strict)
