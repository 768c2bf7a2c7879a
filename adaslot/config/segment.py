"""Settings of `adaslot segment`: a trained checkpoint on any images, no annotations."""

from __future__ import annotations

from dataclasses import dataclass

from adaslot.config.base import Settings, setting
from adaslot.config.model import MethodOverrides
from adaslot.config.store import DEVICE_HELP, WORKERS_HELP
from adaslot.errors import AdaslotError

# Files a folder is searched for (files named on the command line or matched by a glob are always tried).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class SegmentConfig(Settings):
    """`adaslot segment CKPT INPUT... --out DIR`: label PNGs (and optionally pictures and slots) per image."""

    checkpoint: str = setting("", "an adaslot checkpoint (.pt) from `adaslot train` or `adaslot "
                                  "convert-official`", argument=True, required=True)
    inputs: list[str] = setting(default_factory=list, help="image files, folders (searched for image files, "
                                "recursively unless --no-recursive) or glob patterns (quote them: "
                                "'photos/**/*.jpg')", argument=True, required=True)
    out: str = setting("", "output folder (rerunning the same command continues where it stopped)",
                       required=True)
    vis: bool = setting(False, "also write a picture per image (OUT/vis/): network input | slots | overlay | "
                               "one alpha tile per slot")
    save_slots: bool = setting(False, "also write OUT/slots.npz: slots [N, K, D], kept [N, K], the image "
                                      "paths (numpy.load)")
    recursive: bool = setting(True, "search folders recursively")
    strict: bool = setting(False, "stop at the first unreadable or missing image instead of skipping it "
                                  "(skipped ones are listed in OUT/manifest.json)")
    overwrite: bool = setting(False, "start over in an OUT written with another checkpoint, encoder or seed "
                                     "(without it, such an OUT is refused)")
    encoder_weights: str | None = setting(None, "encoder weights file (default: local caches; none for the "
                                                "demo encoder)")
    device: str = setting("auto", DEVICE_HELP)
    batch_size: int = setting(32, "images per forward pass", min=1)
    workers: int | None = setting(None, WORKERS_HELP, min=0)
    seed: int = setting(0, "seed of the slot-initialisation noise (one draw shared by every image, as in "
                           "eval)")
    # the inference method: the checkpoint's, each flag given overrides it (--merge-slots 0: no merging)
    method: MethodOverrides = setting(default_factory=MethodOverrides)
    progress: bool = setting(True, "show the progress bar")

    def check(self) -> None:
        if not self.inputs:
            raise AdaslotError("no INPUT given: name image files, folders or glob patterns")
