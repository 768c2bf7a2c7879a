"""Settings of `adaslot train` (docs/method.md#training gives the reference values used as defaults)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from adaslot.config.base import Settings, setting
from adaslot.config.data import DataSpec
from adaslot.config.model import PRESETS, ModelConfig, get_preset, model_alias
from adaslot.config.store import DEVICE_HELP, WORKERS_HELP
from adaslot.errors import AdaslotError

DEFAULT_NUM_ITERS = {1: 200_000, 2: 500_000}  # steps per stage when --num-iters is not given
SCHEDULES = ("adaslot", "dinosaur", "constant")
PRECISIONS = ("fp32", "tf32", "bf16")
# A setting that changes neither the math nor the input: a rerun may change it, results do not show it
BOOKKEEPING: dict[str, Any] = {"resumable": True, "axis": False}


@dataclass
class TrainConfig(Settings):
    """`adaslot train`. One input: `from_cache` (a feature store) or images (`data`) through the frozen
    encoder. None means "the default for this stage / preset" (`resolved()`)."""

    stage: int = setting(1, "1: fixed K (DINOSAUR-style); 2: adaptive K (warm start from stage 1)",
                         choices=(1, 2), warmstart_free=True)
    out: str = setting("", "run folder (config, metrics.jsonl, checkpoints/); rerun to resume", required=True,
                       resumable=True, axis="--out is the sweep folder", per_variant=True)
    from_cache: str | None = setting(None, "feature store (zarr folder or .h5) to train from", input=True)
    data: DataSpec = setting(default_factory=DataSpec, input=True)
    encoder: str | None = setting(None, "online mode: frozen encoder name (default: the preset's)",
                                  input=True)
    encoder_weights: str | None = setting(None, "encoder weights file (online mode, validation)", input=True)
    image_size: int | None = setting(None, "online mode: network input side (default: the encoder's)", min=1,
                                     input=True)
    preset: str = setting("coco", "model preset: coco (reference), movi-c, movi-e, demo",
                          choices=tuple(PRESETS), input=True)
    num_slots: int | None = model_alias("num_slots", help="K (default: the preset's stage-1 K, or its K_max "
                                                          "in stage 2)")
    selector: str | None = model_alias("selector", help="stage 2: adaslot (Gumbel keep/drop + sparsity "
                                       "penalty, the reference) or quality (greedy selection by slot "
                                       "quality, no gradient); default: the preset's")
    merge_slots: float | None = model_alias("merge_slots", help="record slot merging below this cosine "
                                            "distance (SOLV's 0.12) as the model's inference method (eval, "
                                            "segment and the API run it); 0: no merging (the presets')")
    merge_on: str | None = model_alias("merge_on")
    model_overrides: dict[str, Any] = setting(
        default_factory=dict, flag="model", parser=ModelConfig.parse_overrides,
        help="override a model setting: KEY=VALUE, repeatable (e.g. --model decoder_hidden=512x512)",
        axis="give model settings as model.KEY")
    num_iters: int | None = setting(None, "optimiser steps (default 200k stage 1, 500k stage 2; movi-c "
                                          "500k / 500k, movi-e 100k / 500k)", min=1,
                                    resumable=True, warmstart_free=True)
    batch_size: int = setting(64, "global batch size (split over torchrun ranks)", min=1, input=True)
    max_train_images: int | None = setting(None, "train on the first N images of the store or dataset only "
                                                 "(in its own order; default: all): quick ablations", min=1,
                                           input=True)
    lr: float = setting(4e-4, "peak learning rate (Adam)", above=0)
    lr_schedule: str = setting("adaslot", "adaslot (decay from step 0), dinosaur (decay after the warm-up), "
                                          "or constant", choices=SCHEDULES)
    warmup_steps: int = setting(10_000, "linear warm-up steps", min=0)
    lr_half_life: int = setting(100_000, "steps per halving of the learning rate", min=1)
    grad_clip: float = setting(1.0, "gradient-norm clipping (0: off)", min=0)
    warmstart: str | None = setting(None, "stage 2: the stage-1 checkpoint to start from",
                                    warmstart_free=True,
                                    axis="give one checkpoint, or --warmstart auto with --stage1-sweep")
    sparsity_weight: float = setting(0.1, "stage 2: weight of the mean-kept-fraction penalty (adaslot "
                                          "selector only)", min=0, warmstart_free=True)
    quadratic_weight: float = setting(0.0, "stage 2: weight of the official penalty's quadratic term "
                                           "(mean kept fraction - quadratic_bias)^2; 0 in every released "
                                           "config", min=0, warmstart_free=True)
    quadratic_bias: float = setting(0.5, "stage 2: the kept fraction the quadratic term pulls towards",
                                    min=0, max=1, warmstart_free=True)
    sparsity_ramp: int = setting(0, "stage 2: raise the sparsity weights linearly from 0 over the first N "
                                    "steps (0: full weight from the start, the reference)", min=0,
                                warmstart_free=True)
    selection_warmup: int = setting(0, "stage 2: first steps without slot selection (every slot decodes, as "
                                       "in stage 1); QASA trains its quality selector after a warm-up",
                                    min=0, warmstart_free=True)
    precision: str = setting("fp32", "fp32 (reference), tf32, or bf16 (autocast)", choices=PRECISIONS,
                             input=True)
    compile: bool = setting(False, "torch.compile the slot model and loss", **BOOKKEEPING)
    seed: int = setting(0, "seed of init, data order and noise", input=True, axis="use --seeds",
                        per_variant=True)
    val_every: int = setting(0, "validate every N steps (0: never)", min=0, **BOOKKEEPING)
    val_root: str | None = setting(None, "COCO root whose val split validates (default: --root)",
                                   **BOOKKEEPING)
    val_from_cache: str | None = setting(None, "validate on this cached val store instead (fast proxy)",
                                         **BOOKKEEPING)
    val_max_images: int = setting(64, "validation subset size", min=1, **BOOKKEEPING)
    ckpt_every: int = setting(5_000, "checkpoint every N steps (and at the end)", min=1, **BOOKKEEPING)
    keep_last: int = setting(3, "checkpoints kept (older ones deleted; 0 keeps all)", min=0, **BOOKKEEPING)
    log_every: int = setting(50, "write metrics.jsonl every N steps", min=1, **BOOKKEEPING)
    # the in-memory loader draws its own order, so it is an input setting and a rerun keeps it
    cache_in_memory: bool = setting(False, "load the store into memory first", input=True, axis=False)
    device: str = setting("auto", DEVICE_HELP, resumable=True, axis="use --devices",
                          per_variant=True)
    threads: int | None = setting(None, "torch CPU threads (default: torch's choice); a run's losses repeat "
                                        "bit for bit at the same number", min=1, resumable=True,
                                  axis="use --threads", per_variant=True)
    workers: int | None = setting(None, WORKERS_HELP, min=0, input=True, **BOOKKEEPING)
    wandb: bool = setting(False, "also log to Weights & Biases", **BOOKKEEPING)
    wandb_project: str = setting("adaslot", "Weights & Biases project", **BOOKKEEPING)
    progress: bool = setting(True, "show the progress bar", resumable=True,
                            axis="not a setting of the runs", per_variant=True)

    def check(self) -> None:
        if not self.out:
            raise AdaslotError("--out is required (the run folder, e.g. cache/runs/NAME)")
        if self.from_cache and self.data.given:
            raise AdaslotError("give one input: --from-cache STORE, or images (--root R or --images/"
                               "--annotations), not both")
        if not self.from_cache and not self.data.given:
            raise AdaslotError("give one input: --from-cache STORE, --root R, or --images DIR "
                               "--annotations FILE")
        if self.warmstart and self.stage != 2:
            raise AdaslotError("--warmstart is for stage 2 (it loads a stage-1 checkpoint)")
        if self.selector and self.stage != 2:
            raise AdaslotError("--selector is for stage 2 (stage 1 keeps every slot)")
        if self.val_every and not (self.val_source()):
            raise AdaslotError("--val-every needs val data: --val-root R (a COCO root with val2017/) or "
                               "--val-from-cache STORE")

    def model_settings(self) -> dict[str, Any]:
        """The model overrides of this run: --model KEY=VALUE, then the model settings that have their own
        flag (--num-slots, --selector, --merge-slots, --merge-on) on top."""
        own = {f.metadata["alias"]: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.metadata.get("alias") and getattr(self, f.name) is not None}
        return {**self.model_overrides, **own}

    def val_source(self) -> str | None:
        """The val store or COCO root periodic validation reads (None: no validation data)."""
        return self.val_from_cache or self.val_root or self.data.root

    def total_steps(self) -> int:
        """num_iters, or the preset's / stage's default when unset (what `resolved()` fills in)."""
        return int(self.resolved().num_iters or 0)

    def resolved(self) -> TrainConfig:
        """A copy with stage defaults filled in (num_iters)."""
        steps = get_preset(self.preset).num_iters if self.preset in PRESETS else None
        default = steps[self.stage - 1] if steps else DEFAULT_NUM_ITERS[self.stage]
        n = self.num_iters if self.num_iters is not None else default
        return self.replace(num_iters=n)

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = False) -> TrainConfig:
        """Also reads the flat layout of older run folders: dataset/root/... beside the other keys, and
        `dense_decoding: true` (the model setting `sparse_decoding: false`)."""
        d = dict(d)
        old_data = {k: d.pop(k) for k in ("dataset", "root", "images", "annotations", "strict") if k in d}
        if old_data and "data" not in d:
            d["data"] = {**old_data, "dataset": old_data.get("dataset") or "coco"}
        if d.pop("dense_decoding", False):
            d["model_overrides"] = {**d.get("model_overrides", {}), "sparse_decoding": False}
        # JSON turns tuples (decoder_hidden) into lists; the model settings want them back
        d["model_overrides"] = {k: tuple(v) if isinstance(v, list) else v
                                for k, v in d.get("model_overrides", {}).items()}
        return super().from_dict(d, strict=strict)

