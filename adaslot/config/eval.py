"""Settings of `adaslot eval` and `adaslot convert-official`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adaslot.config.base import Settings, setting
from adaslot.config.data import DataSpec
from adaslot.config.model import MethodOverrides, model_alias
from adaslot.config.store import DEVICE_HELP, WORKERS_HELP
from adaslot.errors import AdaslotError

PROTOCOLS = ("adaslot", "dinosaur", "fullres")  # docs/method.md#protocols; "all" means these (COCO)
MOVI_PROTOCOLS = ("movi",)  # docs/method.md#movi: the only protocol of --dataset movi


def resolve_protocols(protocols: str | Sequence[str]) -> tuple[str, ...]:
    """"all" | "adaslot,fullres" | a sequence -> tuple of known protocol names (one-line error otherwise)."""
    if isinstance(protocols, str):
        names = protocols.split(",")
        protocols = PROTOCOLS if protocols == "all" else tuple(p.strip() for p in names if p.strip())
    protocols = tuple(protocols)
    bad = [p for p in protocols if p not in PROTOCOLS + MOVI_PROTOCOLS]
    if bad or not protocols:
        raise AdaslotError(f"unknown --protocol {','.join(bad) or '(empty)'}; choose from "
                           f"{', '.join(PROTOCOLS + MOVI_PROTOCOLS)} or all")
    return protocols


@dataclass
class EvalConfig(Settings):
    """`adaslot eval`; `evaluate.EvalOptions.from_config` turns it into the options of
    `evaluate.evaluate_model` (in-memory models)."""

    checkpoint: str = setting("", "an adaslot checkpoint (.pt) written by `adaslot train`", argument=True,
                              required=True)
    data: DataSpec = setting(default_factory=lambda: DataSpec(split="val"))
    out: str | None = setting(None, "output folder (default: <checkpoint folder>/eval-<split>)")
    protocol: str = setting("all", "adaslot (224, crowd kept), dinosaur (320, no crowd), fullres (original "
                                   "pixels), a comma list, or all; movi (128, each frame an image) for "
                                   "--dataset movi")
    save_masks: bool = setting(False, "write a PNG slot-id map per image at its original size (OUT/masks/)")
    num_vis: int = setting(16, "number of picture grids to write (OUT/vis/)", min=0)
    from_cache: str | None = setting(None, "fast proxy: read cached val features from this store instead of "
                                           "re-running the encoder")
    gumbel_eval: int | None = setting(None, "stage 2: sample the keep decision with Gumbel noise of this "
                                            "seed (the official, stochastic protocol); default: keep-logit "
                                            "> drop-logit")
    # the inference method: the checkpoint's, each flag given overrides it (--merge-slots 0: no merging)
    method: MethodOverrides = setting(default_factory=MethodOverrides)
    encoder_weights: str | None = setting(None, "encoder weights file (default: local caches)")
    device: str = setting("auto", DEVICE_HELP)
    batch_size: int = setting(32, "images per forward pass", min=1)
    workers: int | None = setting(None, WORKERS_HELP, min=0)
    max_images: int | None = setting(None, "evaluate only the first N images", min=1)
    seed: int = setting(0, "seed of the slot-initialisation noise, one draw shared by every image (with "
                           "--gumbel-eval SEED: sampled per image, as official, from SEED)")
    progress: bool = setting(True, "show the progress bar")

    @property
    def protocols(self) -> tuple[str, ...]:
        if self.data.dataset == "movi" and self.protocol == "all":
            return MOVI_PROTOCOLS
        if self.data.dataset == "coco-wds" and self.protocol == "all":  # no iscrowd in the shards
            return tuple(p for p in PROTOCOLS if p != "dinosaur")
        return resolve_protocols(self.protocol)

    def check(self) -> None:
        protocols = self.protocols
        movi = self.data.dataset == "movi"
        if any((p in MOVI_PROTOCOLS) != movi for p in protocols):
            raise AdaslotError(f"--protocol {','.join(protocols)} does not apply to --dataset "
                               f"{self.data.dataset}: movi data is scored with the movi protocol, "
                               f"COCO-format data with {', '.join(PROTOCOLS)}")
        if self.data.dataset == "coco-wds" and "dinosaur" in protocols:
            raise AdaslotError("--protocol dinosaur drops crowd annotations, but COCO webdataset shards do "
                               "not record iscrowd: read the COCO json (--dataset coco) for it")


@dataclass
class ConvertConfig(Settings):
    """`adaslot convert-official`: an official AdaSlot (ocl / Lightning) checkpoint -> an adaslot one."""

    ckpt: str = setting("", "official AdaSlot/DINOSAUR Lightning checkpoint (.ckpt)", argument=True,
                        required=True)
    out: str = setting("", "adaslot checkpoint to write (for eval and train --warmstart)", argument=True,
                       required=True)
    stage: int | None = setting(None, "1 or 2 (default: 2 if the checkpoint has the Gumbel score network; 1 "
                                      "on a stage-2 checkpoint drops the selector)", choices=(1, 2))
    num_slots: int | None = model_alias("num_slots", None, "K; not in the weights (default: the matching "
                                                           "preset's)")
    preset: str | None = setting(None, "preset the shapes must match (tells movi-c from movi-e)")
    encoder: str | None = setting(None, "encoder name to record (default: the matching preset's)")
    allow_pickle: bool = setting(False, "load with full pickle (runs code from the file): trusted files only")


