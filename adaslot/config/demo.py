"""Settings of `adaslot demo` (docs/method.md#demo) and its three profiles."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaslot.config.base import Settings, setting
from adaslot.config.data import SyntheticConfig
from adaslot.config.eval import EvalConfig
from adaslot.config.store import CacheConfig
from adaslot.config.sweep import warmstart_free_keys
from adaslot.config.train import TrainConfig
from adaslot.errors import AdaslotError

PROFILES = ("normal", "long", "quick")
DEMO_DATASETS = ("synthetic", "movi")
# The settings of the demo's base train config that it fills in per stage run (DemoConfig.stage_config)
PER_STAGE = ("stage", "out", "from_cache", "num_iters", "warmstart", "seed", "progress")
# The settings of the nested cache and eval configs that the demo fills in (checked when it runs them)
PER_RUN = ("out", "data", "encoder", "image_size", "checkpoint", "seed", "progress")
# The base train config's settings that are flags of `adaslot demo` (the stage-2 method)
TRAIN_FLAGS = ("selector", "sparsity_weight", "merge_slots")


def demo_train() -> TrainConfig:
    """The base of both stage runs of the demo (docs/method.md#demo): the demo preset from its feature
    store, in memory, on the CPU; stage 2 with the adaslot selector and its checkpoint recording slot merging
    at SOLV's 0.12 (the inference method eval, segment and the API then run). The demo fills in PER_STAGE;
    stage 1 takes TrainConfig's defaults of every setting a warm start may change (no selector)."""
    return TrainConfig(preset="demo", batch_size=32, lr=2e-3, lr_schedule="adaslot", warmup_steps=200,
                       lr_half_life=100_000, selector="adaslot", sparsity_weight=0.1, merge_slots=0.12,
                       ckpt_every=10**9, keep_last=1, log_every=50, cache_in_memory=True, device="cpu",
                       workers=0)


def demo_cache() -> CacheConfig:
    """The demo's one cache-features pass over its train split (the demo fills in out, data, encoder, side;
    the movi demo stores one view: its frames are never flipped, docs/movi.md)."""
    return CacheConfig(views=2, batch_size=256, workers=0, device="cpu", chunk_samples=64, shard_samples=512,
                       overwrite=True)


def demo_eval() -> EvalConfig:
    """The demo's eval of its stage-2 checkpoint (and of the shipped one) on the val split, with the
    checkpoint's own inference method; the demo fills in checkpoint, data, out, seed and progress."""
    return EvalConfig(protocol="adaslot,fullres", num_vis=8, device="cpu", workers=0)


def demo_data() -> SyntheticConfig:
    """The demo's shapes: 64 px, plain background, solid circles and squares, 1-6 objects of radius 10-16 px,
    each >= 80 % visible: counts spread wide enough for kept-vs-objects correlations to mean something, and
    objects span several 8-px patches, so the patch grid caps FG-ARI high (docs/method.md#demo)."""
    return SyntheticConfig(num_train=2000, num_val=200, image_size=64, min_objects=1, max_objects=6,
                           min_radius=0.15, max_radius=0.25, texture=False, background="plain",
                           categories=("circle", "square"), min_visible=0.8)


def movi_demo_data() -> SyntheticConfig:
    """The movi demo's videos (`make-synthetic --format movi`): 24 frames of 128 px, 2-5 moving circles and
    squares of radius 17-32 px, each video on one plain colour (`movi_background="plain"`): on the default
    vertical gradient the demo's colour encoder splits the background into bands (docs/movi.md)."""
    return SyntheticConfig(format="movi", num_train=100, num_val=8, min_objects=2, max_objects=5,
                           categories=("circle", "square"), movi_background="plain",
                           image_size=64)  # the frames' side at the encoder (128 -> 64, as the shape demo's)


@dataclass
class DemoConfig(Settings):
    """`adaslot demo`: make-synthetic -> cache-features -> train stage 1 -> stage 2 (warm start) -> eval.

    Profiles (`demo_config`): normal (< 10 min on 2 CPU cores), long (the run whose checkpoint ships in
    adaslot/assets), quick (seconds, for tests). A run is defined by step counts, never by wall time, and
    fixed by `seed`, so it is reproducible."""

    out: str = setting("cache/demo", "output folder (data, features, runs, eval, results.json; "
                                     "--dataset movi: cache/movi-demo)")
    profile: str = setting("normal", "normal (< 10 min on 2 cores), long (the run whose checkpoint ships, "
                                     "<= 1 h), quick (tiny, seconds; numbers meaningless)",
                           choices=PROFILES, shortcuts={"long": "long", "quick": "quick"})
    dataset: str = setting("synthetic", "synthetic (shape images, COCO layout) or movi (videos of moving "
                                        "shapes in MOVi's layouts, movi protocol; docs/movi.md)",
                           choices=DEMO_DATASETS)
    seed: int = setting(0, "seed of data, model init and noise (the run is a function of it)")
    data: SyntheticConfig = setting(default_factory=demo_data, cli=False)
    train: TrainConfig = setting(default_factory=demo_train, omit=PER_STAGE, flags=TRAIN_FLAGS)
    cache: CacheConfig = setting(default_factory=demo_cache, cli=False, omit=PER_RUN)
    eval: EvalConfig = setting(default_factory=demo_eval, cli=False, omit=PER_RUN)
    stage1_steps: int = setting(2200, "stage-1 steps", min=1, cli=False)
    stage2_steps: int = setting(500, "stage-2 steps", min=1, cli=False)
    ratio_steps: int = setting(10, "steps timed online vs from the cache", min=1, cli=False)
    shipped: str | None = setting(None, "checkpoint to evaluate as 'shipped' (default: adaslot/assets; '' "
                                        "skips it)")
    export_assets: bool = setting(True, "long profile: write the shipped files to OUT/assets and copy them "
                                        "into adaslot/assets", cli=False)
    # 1 thread: the demo's matrices are tiny, and on a busy 2-core machine 2 threads ran ~10x slower.
    threads: int = setting(1, "torch threads (0 = torch's default)", min=0)
    progress: bool = setting(True, "progress bars", cli=False)

    @classmethod
    def cli_base(cls, given: dict[str, Any]) -> DemoConfig:
        return demo_config(given.get("profile") or "normal", dataset=given.get("dataset"))

    def check(self) -> None:
        out = Path(self.out or ".")
        for stage in (1, 2):  # the stage runs' settings, checked before anything runs
            warmstart = "stage1.pt" if stage == 2 else None
            self.stage_config(stage, out / f"stage{stage}", out / "features", warmstart).validate()

    def stage_config(self, stage: int, out: Path, store: Path, warmstart: str | None) -> TrainConfig:
        """The train config of the demo's stage `stage`: the base `train` with PER_STAGE filled in. Stage 1
        has no selector: it keeps TrainConfig's defaults of every setting a warm start may change
        (warmstart_free), so a change of the stage-2 method reuses stage 1."""
        base = self.train
        if stage == 1:
            free, default = warmstart_free_keys(), TrainConfig()
            names = {f.name for f in dataclasses.fields(TrainConfig)} & free
            base = base.replace(**{n: getattr(default, n) for n in names}, model_overrides={
                k: v for k, v in base.model_overrides.items() if f"model.{k}" not in free})
        steps = self.stage1_steps if stage == 1 else self.stage2_steps
        return base.replace(stage=stage, out=str(out), from_cache=str(store), warmstart=warmstart,
                            num_iters=steps, seed=self.seed + stage, progress=self.progress)


PROFILE_CHANGES: dict[str, dict[str, Any]] = {
    "normal": {},
    "long": {"data": {"num_train": 5000}, "stage1_steps": 15_000, "stage2_steps": 3000,
             "train": {"lr_half_life": 7500, "ckpt_every": 2000}},
    "quick": {"data": {"num_train": 64, "num_val": 16}, "stage1_steps": 4, "stage2_steps": 3,
              "train": {"batch_size": 8}, "ratio_steps": 2},
}
# the movi demo's data per profile (videos: 9 training frames each, all 24 frames of a val video scored)
# (quick: 10-frame videos, so that eval scores 10 frames, not 24)
MOVI_PROFILE_DATA: dict[str, dict[str, Any]] = {"normal": {}, "long": {"num_train": 300}, "quick": {
    "num_train": 2, "num_val": 1, "frames": 10}}


def demo_config(profile: str = "normal", **overrides: Any) -> DemoConfig:
    """The DemoConfig of `profile` with its changes, then non-None `overrides`, applied."""
    if profile not in PROFILE_CHANGES:
        raise AdaslotError(f"unknown demo profile {profile!r}; choose one of {', '.join(PROFILES)}")
    changes = dict(PROFILE_CHANGES[profile])
    data = demo_data().replace(**changes.pop("data", {}))
    train = demo_train().replace(**changes.pop("train", {}))
    dataset = overrides.pop("dataset", None) or "synthetic"
    if dataset == "movi":  # its own data, protocol (GT at 128) and default folder (never the shape demo's)
        data = movi_demo_data().replace(**MOVI_PROFILE_DATA[profile])
        changes["out"] = "cache/movi-demo"
        changes["cache"] = demo_cache().replace(views=1)
        changes["eval"] = demo_eval().replace(protocol="movi")
    cfg = DemoConfig(profile=profile, data=data, train=train, dataset=dataset, **changes)
    return cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
