"""Config dataclasses and named presets. The only thing passed from the CLI into the library.

`ModelConfig` describes everything after the frozen encoder; presets give the reference numbers of
SPEC (`coco`) and scaled variants. Command configs (cache, train, eval, demo) live below, one dataclass each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field  # noqa: F401  (field: used by command configs)
from typing import Any

from adaslot.errors import AdaslotError


@dataclass
class ModelConfig:
    """Slot model after the frozen encoder: features [B, T, feature_dim] -> slots [B, K, slot_dim]."""

    feature_dim: int = 768  # D of the encoder tokens (input and reconstruction target)
    num_tokens: int = 196  # T, e.g. 14 x 14 patches
    slot_dim: int = 256
    num_slots: int = 7  # K
    num_iterations: int = 3
    input_mlp_hidden: int = 768  # LN(D) -> Linear(D, hidden) -> ReLU -> Linear(hidden, slot_dim)
    slot_mlp_hidden: int = 1024  # residual MLP inside slot attention
    decoder_hidden: tuple[int, ...] = (2048, 2048, 2048)
    adaptive: bool = False  # stage 2: Gumbel keep/drop selector on the final slots
    selector_hidden: int = 1024
    eps: float = 1e-8
    # Options that only a non-reference preset changes; the defaults keep SPEC exactly.
    slot_init_scale: float = 1.0  # multiplies exp(log sigma) of the learned Gaussian slot init
    attention_temperature: float = 1.0  # logits = q k^T / (sqrt(slot_dim) * temperature)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["decoder_hidden"] = list(self.decoder_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise AdaslotError(f"unknown model config keys {sorted(unknown)}")
        d = dict(d)
        if "decoder_hidden" in d:
            d["decoder_hidden"] = tuple(d["decoder_hidden"])
        return cls(**d)


@dataclass
class Preset:
    """A named model size plus the encoder it expects and its stage-1 / stage-2 slot counts."""

    name: str
    encoder: str
    model: ModelConfig
    num_slots_stage1: int
    num_slots_stage2: int
    notes: str = ""


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    PRESETS[preset.name] = preset
    return preset


register_preset(Preset("coco", "dino-vitb-16", ModelConfig(), 7, 33, "SPEC reference: DINO ViT-B/16, COCO"))
# MOVi (SPEC "other datasets"): slot dim 128, decoder [1024]x3. SPEC gives only K_max, so stage 1 uses it too.
register_preset(Preset(
    "movi-c", "dino-vitb-16",
    ModelConfig(slot_dim=128, slot_mlp_hidden=512, selector_hidden=512, decoder_hidden=(1024, 1024, 1024),
                num_slots=11),
    11, 11, "MOVi-C: K_max 11",
))
register_preset(Preset(
    "movi-e", "dino-vitb-16",
    ModelConfig(slot_dim=128, slot_mlp_hidden=512, selector_hidden=512, decoder_hidden=(1024, 1024, 1024),
                num_slots=24),
    24, 24, "MOVi-E: K_max 24",
))


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise AdaslotError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def model_config_for(preset: str, stage: int, **overrides: Any) -> ModelConfig:
    """The model config of `preset` for `stage` (1: fixed K, 2: adaptive), with non-None overrides applied."""
    if stage not in (1, 2):
        raise AdaslotError(f"--stage must be 1 or 2, got {stage}")
    p = get_preset(preset)
    cfg = dataclasses.replace(
        p.model,
        num_slots=p.num_slots_stage1 if stage == 1 else p.num_slots_stage2,
        adaptive=stage == 2,
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **overrides)


# ---- command configs: one dataclass per command; each helper edits only its own section ----

# == section: CacheConfig (cache-features) ==


@dataclass
class CacheConfig:
    """`adaslot cache-features`: run the frozen encoder once over a dataset into a feature store.

    Input: `dataset="coco"` + `root` (root/{split}2017 + annotations), or `images` + `annotations`.
    views None = 2 (image + hflip) for split "train", else 1. chunk/shard sizes are in samples."""

    out: str = ""
    dataset: str | None = None
    root: str | None = None
    split: str = "train"
    images: str | None = None
    annotations: str | None = None
    encoder: str = "dino-vitb-16"
    encoder_weights: str | None = None
    image_size: int | None = None  # None: the encoder's native side
    views: int | None = None
    antialias: bool = False  # resize antialias (see adaslot.data.transforms); False = official pipeline
    precision: str = "fp32"  # fp32 | bf16 (autocast), recorded in the contract
    batch_size: int = 64
    workers: int = 4
    device: str = "auto"
    chunk_samples: int = 64
    shard_samples: int = 512
    overwrite: bool = False
    progress: bool = True
    strict: bool = False  # an unusable image (missing, truncated, unreadable) stops the run instead of a skip

# == section: TrainConfig (train) ==

# SPEC "Training": steps per stage when --num-iters is not given.
DEFAULT_NUM_ITERS = {1: 200_000, 2: 500_000}


@dataclass
class TrainConfig:
    """`adaslot train`. Exactly one input: `from_cache` (a store), or online images (`dataset="coco"` +
    `root`, or `images` + `annotations`). None means "the SPEC default for this stage/preset" (`resolved`)."""

    stage: int = 1
    out: str = ""
    from_cache: str | None = None
    dataset: str | None = None  # "coco" with `root` (train2017/ + annotations/instances_train2017.json)
    root: str | None = None
    images: str | None = None  # or an image folder + a COCO-format annotation file
    annotations: str | None = None
    encoder: str | None = None  # online mode; default: the preset's encoder
    encoder_weights: str | None = None  # online mode; weights file for the encoder (see adaslot.encoders)
    image_size: int | None = None  # online mode; default: the encoder's native side
    preset: str = "coco"
    num_slots: int | None = None  # default: preset K (stage 1), 33-style K_max (stage 2)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # other ModelConfig fields (--model k=v)
    num_iters: int | None = None  # default DEFAULT_NUM_ITERS[stage]
    batch_size: int = 64  # global batch (split over DDP ranks)
    lr: float = 4e-4
    lr_schedule: str = "adaslot"  # adaslot | dinosaur | constant
    warmup_steps: int = 10_000
    lr_half_life: int = 100_000
    grad_clip: float = 1.0  # gradient-norm clipping; <= 0: off
    warmstart: str | None = None  # stage-1 checkpoint for stage 2
    sparsity_weight: float = 0.1
    precision: str = "fp32"  # fp32 | tf32 | bf16
    compile: bool = False
    # Stage 2 decodes kept slots with autograd and dropped ones without (issue 8: forward identical,
    # gradients within 1e-5 relative of dense, the official 1e-5 renormaliser); True = official dense path.
    dense_decoding: bool = False
    seed: int = 0
    val_every: int = 0  # 0 = no periodic validation
    val_root: str | None = None  # COCO root whose val split validates (default: --root in online coco mode)
    val_max_images: int = 64  # size of the val subset used by periodic validation
    ckpt_every: int = 5_000
    keep_last: int = 3
    log_every: int = 50
    cache_in_memory: bool = False
    device: str = "auto"
    workers: int = 4
    wandb: bool = False
    wandb_project: str = "adaslot"
    strict: bool = False  # online mode: an unusable image stops the run instead of a recorded skip

    def resolved(self) -> TrainConfig:
        """A copy with stage defaults filled in (num_iters)."""
        n = self.num_iters if self.num_iters is not None else DEFAULT_NUM_ITERS.get(self.stage)
        return dataclasses.replace(self, num_iters=n)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# == section: EvalConfig (eval) ==


@dataclass
class EvalConfig:
    """`adaslot eval` (and `evaluate.evaluate_model` for in-memory models: only protocols, batch_size,
    workers, max_images, gumbel_eval and seed matter there). Data: `dataset="coco"` + `root`, or `images` +
    `annotations`. protocols: "all" or a comma list of adaslot, dinosaur, fullres."""

    checkpoint: str = ""
    dataset: str = "coco"
    root: str | None = None
    images: str | None = None
    annotations: str | None = None
    split: str = "val"
    out: str | None = None  # default: <checkpoint folder>/eval-<split>
    protocols: str = "all"
    save_masks: bool = False
    num_vis: int = 16
    from_cache: str | None = None  # fast proxy: cached val features instead of re-running the encoder
    gumbel_eval: int | None = None  # stage 2: official stochastic keep decision with this seed
    encoder_weights: str | None = None
    device: str = "auto"
    batch_size: int = 32
    workers: int = 2
    max_images: int | None = None
    seed: int = 0  # slot-initialisation noise (sampled in eval too, as official)
    strict: bool = False  # an unusable image stops the run (nothing written) instead of a recorded skip


# == section: DemoConfig (demo) ==

# The demo (`adaslot demo`): 64-px synthetic shapes, the `demo-colour-pos` encoder (8-px patches -> 8 x 8
# tokens of 128 dims, adaslot.encoders), a scaled-down model. Deviations from SPEC (README "demo"):
# smaller sizes everywhere, and attention_temperature 0.5 (sharper slot competition at init: with the SPEC
# temperature the slots stayed collapsed, alpha = 1/K, for longer than a demo can wait).
register_preset(Preset(
    "demo", "demo-colour-pos",
    ModelConfig(feature_dim=128, num_tokens=64, slot_dim=64, num_slots=5, input_mlp_hidden=128,
                slot_mlp_hidden=128, decoder_hidden=(128, 128), selector_hidden=128,
                attention_temperature=0.5),
    5, 6, "demo: 64-px synthetic shapes, demo-colour-pos encoder, K=5 (2-4 objects + background), K_max=6",
))


@dataclass
class DemoConfig:
    """`adaslot demo`: make-synthetic -> cache-features -> train stage 1 -> stage 2 (warm start) -> eval.

    `demo_config(profile)` gives the three profiles (normal: < 10 min on 2 CPU cores; long: the run whose
    checkpoint ships in adaslot/assets; quick: seconds, for tests). Everything is fixed by `seed`; the run is
    defined by step counts, never by wall time, so it is reproducible.
    """

    out: str = "cache/demo"
    profile: str = "normal"
    seed: int = 0
    # data (adaslot.data.synthetic): plain background, solid colours, 2-4 objects of radius 12-20 px at 64 px
    num_train: int = 2000
    num_val: int = 200
    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 4
    min_radius: float = 0.1875
    max_radius: float = 0.3125
    categories: tuple[str, ...] = ("circle", "square")
    min_visible: float = 0.8
    # training (both stages from the cache; stage 2 warm-starts from stage 1)
    stage1_steps: int = 5000
    stage2_steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 200
    lr_half_life: int = 100_000
    # SPEC's 0.1: it keeps all 6 slots here. Probes from a 15k-step stage 1 (train split, val FG-ARI, 1 500
    # stage-2 steps): 0.1 keeps 6/6 at FG-ARI 0.736; 0.3 keeps 4.1 (r 0.44 against the object count) at 0.677;
    # 0.5 keeps 4.0 (r 0.37) at 0.690, and 3.5 (r 0.37) at 0.604 after 4 000 steps. Dropping more costs FG-ARI
    # and follows the object count only weakly, so the demo keeps the reference; --sparsity-weight changes it.
    sparsity_weight: float = 0.1
    # timing of one step online (encoder on images) vs from the cache
    ratio_steps: int = 10
    shipped: str | None = None  # None: the checkpoint in adaslot/assets; "" skips it
    export_assets: bool = True  # long profile only: write the shipped files into adaslot/assets
    # torch threads. 1: the demo's matrices are tiny, and on a busy 2-core machine 2 threads ran ~10x slower
    # (0.9 vs ~10 steps/s, OpenMP threads waiting on each other); None = torch's default.
    threads: int | None = 1
    progress: bool = True


DEMO_PROFILES: dict[str, dict[str, Any]] = {
    "normal": {},
    "long": {"num_train": 5000, "stage1_steps": 30_000, "stage2_steps": 4000, "lr_half_life": 15_000},
    "quick": {"num_train": 64, "num_val": 16, "stage1_steps": 4, "stage2_steps": 3, "batch_size": 8,
              "ratio_steps": 2},
}


def demo_config(profile: str = "normal", **overrides: Any) -> DemoConfig:
    """The DemoConfig of `profile` (normal, long, quick) with non-None overrides applied."""
    if profile not in DEMO_PROFILES:
        raise AdaslotError(f"unknown demo profile {profile!r}; choose one of {', '.join(DEMO_PROFILES)}")
    values = {**DEMO_PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None}}
    return DemoConfig(profile=profile, **values)
