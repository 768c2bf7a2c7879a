"""The slot model's settings (`ModelConfig`) and named presets (coco, movi-c, movi-e, demo).

Defaults are the reference model of docs/method.md; presets give its published sizes and scaled variants.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from adaslot.config.base import Settings, parse_value, setting
from adaslot.errors import AdaslotError

SELECTORS = ("adaslot", "quality")
MERGE_ON = ("slots", "features")


@dataclass
class ModelConfig(Settings):
    """Slot model after the frozen encoder: features [B, T, feature_dim] -> slots [B, K, slot_dim]."""

    FLAG_PREFIX = "--model "

    feature_dim: int = setting(768, "D of the encoder tokens (input and reconstruction target)", min=1,
                               axis="it comes from the input")
    num_tokens: int = setting(196, "T, e.g. 14 x 14 patches", min=1, axis="it comes from the input")
    slot_dim: int = setting(256, "slot size S", min=1)
    # warmstart_free: a stage-2 model may differ from the stage-1 checkpoint it warm-starts from in K, every
    # selector setting (stage 1 has no selector; docs/method.md#training) and the exact speed-ups.
    num_slots: int = setting(7, "K (K_max in stage 2)", min=1, warmstart_free=True)
    num_iterations: int = setting(3, "slot-attention iterations", min=1)
    input_mlp_hidden: int = setting(768, "hidden size of LN -> Linear -> ReLU -> Linear(S)", min=1)
    slot_mlp_hidden: int = setting(1024, "hidden size of the residual MLP inside slot attention", min=1)
    decoder_hidden: tuple[int, ...] = setting((2048, 2048, 2048), "decoder MLP hidden sizes, e.g. 512x512",
                                              min=1)
    adaptive: bool = setting(False, "stage 2: a keep/drop decision per slot masks the decoder",
                             warmstart_free=True, axis=False)  # follows from the stage
    # Stage 2's keep/drop decision (docs/method.md#selector, docs/method.md#quality-selection).
    selector: str = setting("adaslot", "stage 2: adaslot (learned Gumbel selector + sparsity penalty) or "
                                       "quality (greedy selection by slot quality; no parameters, no "
                                       "penalty)", choices=SELECTORS, warmstart_free=True,
                            method="keep")
    selector_hidden: int = setting(1024, "hidden size of the Gumbel score network", min=1,
                                   warmstart_free=True)
    quality_tau: float = setting(0.5, "quality selector: a token is covered when the selected slots' "
                                      "attention on it sums to >= tau", above=0, warmstart_free=True,
                                 method="keep")
    quality_rho: float = setting(0.8, "quality selector: add slots until this fraction of tokens is "
                                      "covered", min=0, max=1, warmstart_free=True,
                                 method="keep")
    quality_alpha: float = setting(0.3, "quality selector: skip a slot whose novelty (share of its attention "
                                        "on uncovered tokens) is below alpha", min=0, max=1,
                                  warmstart_free=True, method="keep")
    quality_k_min: int = setting(2, "quality selector: slots always kept (the best by quality)", min=1,
                                 warmstart_free=True, method="keep")
    # Slot merging (docs/method.md#slot-merging): part of the inference method, recorded in the checkpoint.
    merge_slots: float = setting(0.0, "merge slots closer than this cosine distance (complete linkage; "
                                      "SOLV's 0.12) into one segment; 0: no merging", min=0, max=2,
                                 warmstart_free=True, method="merge")
    merge_on: str = setting("slots", "what merging compares: slots (the slot vectors, after SOLV) or "
                                     "features (each slot's alpha-weighted mean input feature, ours)",
                            choices=MERGE_ON, warmstart_free=True, method="merge")
    # Options that make the count in training (docs/method.md#count-options); off = the reference.
    merge_in_training: bool = setting(False, "merge slots inside the model in training too: the decoder "
                                             "rebuilds from each group's mean slot (SOLV); needs merge_slots",
                                      warmstart_free=True, method="trained")
    reassign_kept: bool = setting(False, "stage 2: after the keep decision, run the last slot-attention "
                                         "iteration again over the kept slots only (after MetaSlot)",
                                  warmstart_free=True)
    selector_context: bool = setting(False, "stage 2, adaslot selector: the score network sees each slot "
                                            "with its image's mean slot (ours, not AdaSlot's)",
                                     warmstart_free=True)
    eps: float = setting(1e-8, "slot-attention renormalisation epsilon", above=0)
    # Options only a non-reference preset changes; the defaults are the reference (docs/method.md#deviations).
    slot_init_scale: float = setting(1.0, "multiplies exp(log sigma) of the slot initialisation", above=0)
    attention_temperature: float = setting(1.0, "logits = q k^T / (sqrt(S) * temperature)", above=0)
    # Exact speed-ups (docs/method.md#deviations); False gives the official computation.
    sparse_decoding: bool = setting(True, "stage 2: decode dropped slots without autograd",
                                    warmstart_free=True)
    split_first_layer: bool = setting(True, "decoder: W(slot + pos) computed as W slot + W pos",
                                      warmstart_free=True)

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict()

    def check(self) -> None:
        if self.merge_in_training and not self.merge_slots:
            raise AdaslotError("merge_in_training needs a merge threshold (--merge-slots T, T > 0)")
        if self.merge_in_training and self.merge_on != "slots":
            raise AdaslotError("merge_in_training merges slot vectors (SOLV); it needs --merge-on slots")

    @property
    def method(self) -> dict[str, Any]:
        """The inference method (the fields declared `method=`, docs/adaptive.md) with the values this config
        holds; a stage-1 model keeps every slot, so its keep fields are left out."""
        kinds = ("keep", "merge", "trained") if self.adaptive else ("merge", "trained")
        return {name: getattr(self, name) for name in method_fields(*kinds)}

    def with_method(self, overrides: dict[str, Any], what: str = "the checkpoint") -> ModelConfig:
        """This config with inference-method `overrides` (an `overridable_method_fields()` name -> value;
        None: keep the recorded value) applied and checked: keep settings need a stage-2 model, and the
        adaslot keep rule needs the score network that only a model trained with it has (one-line
        AdaslotError)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        overridable = overridable_method_fields()
        unknown = sorted(set(given) - set(overridable))
        if unknown:
            raise AdaslotError(f"{unknown[0]!r} is not an inference-method setting (those are "
                               f"{', '.join(overridable)})")
        keep = [k for k in method_fields("keep") if k in given]
        if keep and not self.adaptive:
            raise AdaslotError(f"--{keep[0].replace('_', '-')} is a keep setting, but {what} is a stage-1 "
                               "model (every slot is kept); drop it")
        if given.get("selector") == "adaslot" and self.selector != "adaslot":
            raise AdaslotError(f"--selector adaslot needs the Gumbel score network, which {what} lacks (it "
                               f"was trained with the {self.selector} selector)")
        if given.get("merge_slots") == 0:  # --merge-slots 0: no merging at all, however it was trained
            given["merge_in_training"] = False
        return dataclasses.replace(self, **given).validate()

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = True) -> ModelConfig:
        return super().from_dict(d, strict=strict)

    @classmethod
    def parse_overrides(cls, items: list[str], flag: str = "--model",
                        names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """["slot_dim=64", "decoder_hidden=512x512"] -> {"slot_dim": 64, "decoder_hidden": (512, 512)};
        KEY one of `names` (default: every field), else one line naming `flag`."""
        names = names or tuple(f.name for f in dataclasses.fields(cls))
        out: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in names:
                raise AdaslotError(f"{flag} expects KEY=VALUE with KEY one of {', '.join(names)}; "
                                   f"got {item!r}")
            try:
                out[key] = parse_value(cls, key, value)
            except AdaslotError as e:
                raise AdaslotError(f"{flag} {e}") from None
        return out


def method_fields(*kinds: str) -> tuple[str, ...]:
    """ModelConfig's fields declared `method=` one of `kinds` ("keep", "merge", "trained"), in declaration
    order."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata["method"] in kinds)


def overridable_method_fields() -> tuple[str, ...]:
    """The inference-method settings a command may override (eval, segment, the API, sweep scoring): the keep
    rule and slot merging; a checkpoint records them in its model config (docs/adaptive.md)."""
    return method_fields("keep", "merge")


def model_alias(name: str, default: Any = None, help: str | None = None, **meta: Any) -> Any:
    """A field of another config that sets ModelConfig's `name`: same help, range and choices, its own
    default (None: the model's / the checkpoint's value). The one declaration stays ModelConfig's."""
    f = next(f for f in dataclasses.fields(ModelConfig) if f.name == name)
    m = f.metadata
    return setting(default, help or m["help"], min=m["min"], max=m["max"], above=m["above"],
                   choices=m["choices"], alias=name, **meta)


@dataclass
class MethodOverrides(Settings):
    """The inference method as a command may override it (eval, segment): each field sets the ModelConfig
    field of its name; None keeps what the checkpoint recorded (docs/adaptive.md)."""

    selector: str | None = model_alias("selector", help="keep rule of a stage-2 model: adaslot (the score "
                                                        "network) or quality; default: the checkpoint's")
    quality_tau: float | None = model_alias("quality_tau")
    quality_rho: float | None = model_alias("quality_rho")
    quality_alpha: float | None = model_alias("quality_alpha")
    quality_k_min: int | None = model_alias("quality_k_min")
    merge_slots: float | None = model_alias("merge_slots", help="merge slots closer than this cosine "
                                            "distance (complete linkage; SOLV's 0.12); 0: no merging; "
                                            "default: the checkpoint's")
    merge_on: str | None = model_alias("merge_on")

    def given(self) -> dict[str, Any]:
        """{field: value} of the overrides set (not None)."""
        return {k: v for k, v in self.to_dict().items() if v is not None}

    @classmethod
    def parse(cls, items: list[str], flag: str = "--score-method") -> dict[str, Any]:
        """["merge_slots=0.25", "merge_on=features"] -> {"merge_slots": 0.25, "merge_on": "features"}, checked
        (one line naming `flag` and the key)."""
        out = ModelConfig.parse_overrides(items, flag, overridable_method_fields())
        try:
            cls(**out).validate()
        except AdaslotError as e:
            raise AdaslotError(f"{flag} {str(e).lstrip('-')}") from None
        return out


@dataclass
class Preset:
    """A named model size plus the encoder it expects and its stage-1 / stage-2 slot counts."""

    name: str
    encoder: str
    model: ModelConfig
    num_slots_stage1: int
    num_slots_stage2: int
    notes: str = ""
    num_iters: tuple[int, int] | None = None  # default steps of stage 1 / 2 (None: train's DEFAULT_NUM_ITERS)


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    PRESETS[preset.name] = preset
    return preset


register_preset(Preset("coco", "dino-vitb-16", ModelConfig(), 7, 33, "reference: DINO ViT-B/16, COCO"))
# MOVi (docs/method.md#presets): slot dim 128, decoder [1024]x3; only K_max is published, stage 1 uses it too.
_MOVI: dict[str, Any] = dict(slot_dim=128, slot_mlp_hidden=512, selector_hidden=512,
                             decoder_hidden=(1024, 1024, 1024))
# Steps of the official configs: MOVi-C 500k / 500k, MOVi-E 100k / 500k (docs/method.md#movi).
register_preset(Preset("movi-c", "dino-vitb-16", ModelConfig(num_slots=11, **_MOVI), 11, 11, "MOVi-C",
                       num_iters=(500_000, 500_000)))
register_preset(Preset("movi-e", "dino-vitb-16", ModelConfig(num_slots=24, **_MOVI), 24, 24, "MOVi-E",
                       num_iters=(100_000, 500_000)))
# The demo (docs/method.md#demo): 64-px shapes, the demo-colour-pos encoder (8 x 8 tokens of 128 dims, which
# model_config_for derives from the encoder, like every preset's D and T), a
# scaled-down model; attention_temperature 0.5 sharpens slot competition at init, so the slots leave the
# collapsed state (all equal, alpha = 1/K) sooner.
register_preset(Preset(
    "demo", "demo-colour-pos",
    ModelConfig(slot_dim=64, num_slots=8, input_mlp_hidden=128,
                slot_mlp_hidden=128, decoder_hidden=(128, 128), selector_hidden=128,
                attention_temperature=0.5),
    8, 8, "demo: 64-px synthetic shapes (1-6 objects), demo-colour-pos encoder, K=8, K_max=8",
))


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise AdaslotError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def model_config_for(preset: str, stage: int, encoder: str | None = None, image_size: int | None = None,
                     **overrides: Any) -> ModelConfig:
    """The model config of `preset` for `stage` (1: fixed K, 2: adaptive), with non-None overrides applied.

    D and T (feature_dim, num_tokens) follow the encoder (default: the preset's) at `image_size` (default:
    the encoder's side): 224 px gives 196 tokens with a /16 ViT, 256 with a /14, 784 with a /8; given
    overrides (the input's actual D and T, see config.run.RunSpec.resolve) win."""
    from adaslot.config.encoders import get_encoder_spec

    if stage not in (1, 2):
        raise AdaslotError(f"--stage must be 1 or 2, got {stage}")
    p = get_preset(preset)
    spec = get_encoder_spec(encoder or p.encoder)
    cfg = dataclasses.replace(p.model, num_slots=p.num_slots_stage1 if stage == 1 else p.num_slots_stage2,
                              adaptive=stage == 2, feature_dim=spec.embed_dim,
                              num_tokens=spec.num_tokens(image_size))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise AdaslotError(f"unknown model setting {sorted(unknown)[0]!r}")
    return dataclasses.replace(cfg, **overrides)
