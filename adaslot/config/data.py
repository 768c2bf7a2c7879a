"""Input settings: `DataSpec` (which COCO-format dataset a command reads) and `SyntheticConfig` (the built-in
shapes dataset of `adaslot make-synthetic`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adaslot.config.base import Settings, setting
from adaslot.errors import AdaslotError

# coco, synthetic: the COCO 2017 layout; movi, coco-wds (ocl's COCO shards): docs/movi.md
DATASETS = ("coco", "synthetic", "movi", "coco-wds")


@dataclass
class DataSpec(Settings):
    """A COCO-format dataset: `--root R` (COCO 2017 layout: R/{split}2017/ + R/annotations/
    instances_{split}2017.json) or `--images DIR --annotations FILE`; or with `--dataset movi` / `coco-wds`
    a MOVi root or ocl's COCO shards (`--root R`, docs/movi.md). `strict` is the policy of the loops that
    read it: stop at the first missing/unreadable image or malformed annotation instead of skipping.
    `adaslot.data.datasets.open_dataset(spec, size)` opens it."""

    dataset: str = setting("coco", "layout of --root: coco, synthetic (a root written by make-synthetic), or "
                                   "movi (TFDS folder, webdataset shards or PNG folders, found by itself), "
                                   "or coco-wds (ocl's COCO webdataset shards)",
                           choices=DATASETS)
    root: str | None = setting(None, "dataset root in the COCO 2017 layout (movi, coco-wds: docs/movi.md)")
    split: str = setting("train", "split under --root (train2017/, val2017/, ...; movi: train, val or test)")
    images: str | None = setting(None, "image folder of a COCO-format dataset (with --annotations)")
    annotations: str | None = setting(None, "COCO-format annotation json (with --images)")
    strict: bool = setting(False, "stop at the first missing or unreadable image or malformed annotation "
                                  "(default: skip it and list it in the outputs)", resumable=True,
                           axis=False)

    @property
    def given(self) -> bool:
        return bool(self.root or self.images or self.annotations)

    def check(self) -> None:
        if self.images or self.annotations:
            if not (self.images and self.annotations):
                raise AdaslotError("--images and --annotations go together")
            if self.root:
                raise AdaslotError("give either --root R or --images/--annotations, not both")

    def paths(self) -> tuple[Path, Path]:
        """(image folder, annotation file) this spec names."""
        self.check()
        if self.images:
            return Path(self.images), Path(str(self.annotations))
        if not self.root:
            raise AdaslotError("no input data: pass --root R (COCO 2017 layout) or --images DIR "
                               "--annotations FILE")
        root = Path(self.root)
        if not root.is_dir():
            raise AdaslotError(f"dataset root {root} not found (expected {self.split}2017/ and annotations/)")
        ann = root / "annotations" / f"instances_{self.split}2017.json"
        if not ann.is_file():
            raise AdaslotError(f"{ann} not found: is {root} a COCO 2017 root and '{self.split}' a split "
                               "in it?")
        return root / f"{self.split}2017", ann


BACKGROUNDS = ("plain", "gradient", "stripes", "noise")
CATEGORIES = ("circle", "square", "triangle", "diamond", "hexagon", "star")  # ids 1..6 in this order


@dataclass
class SyntheticConfig(Settings):
    """`adaslot make-synthetic`: shape scenes written as a COCO 2017 dataset. Sizes are fractions of the image
    side, so they scale with `image_size`; every image is a function of (seed, split, index)."""

    out: str = setting("", "output folder (COCO 2017 layout: train2017/, val2017/, annotations/)",
                       argument=True, required=True)
    num_train: int = setting(1000, "number of train images", min=0)
    num_val: int = setting(200, "number of val images", min=0)
    image_size: int = setting(224, "square image side in pixels", min=32)
    seed: int = setting(0, "seed; the dataset is a deterministic function of it and the settings")
    min_objects: int = setting(1, "fewest objects drawn per image", min=0)
    max_objects: int = setting(6, "most objects drawn per image (crowded scenes may get fewer)", min=0)
    min_radius: float = setting(0.134, "smallest radius / side (0.134 = 30 px at 224)", above=0, max=0.5)
    max_radius: float = setting(0.25, "largest radius / side (0.25 = 56 px at 224)", above=0, max=0.5)
    texture: bool = setting(True, "textured objects (else solid colours)")
    background: str = setting("varied", "plain, gradient, stripes, noise, or varied (random per image)",
                              choices=(*BACKGROUNDS, "varied"))
    categories: tuple[str, ...] = setting(CATEGORIES, "shape categories drawn", cli=False)
    # An object whose visible fraction after occlusion falls below this is re-placed (then dropped).
    min_visible: float = setting(0.5, "minimum visible fraction of each object after occlusion", min=0, max=1)
    crowd_prob: float = setting(0.0, "chance that an annotation is marked iscrowd=1", min=0, max=1)
    jpeg_quality: int = setting(95, "JPEG quality", min=1, max=100)
    format: str = setting("coco", "coco (COCO 2017 layout) or movi (videos of moving shapes in MOVi's TFDS "
                                  "and webdataset layouts, docs/movi.md)", choices=("coco", "movi"))
    frames: int = setting(24, "movi: frames per video", min=2)
    video_size: int = setting(128, "movi: square frame side in pixels", min=16)
    shard_videos: int = setting(8, "movi: videos per TFRecord / tar shard", min=1)
    movi_background: str = setting("gradient", "movi: gradient (vertical gradient of two random colours, the "
                                                "default) or plain (one colour per video: what the movi demo "
                                                "trains on, docs/movi.md)", choices=("gradient", "plain"))
    workers: int = setting(1, "coco: processes rendering images (1 = in this process); the same bytes for "
                                 "any number", min=1)
    overwrite: bool = setting(False, "replace OUT if it exists")
    progress: bool = setting(True, "show a progress bar")

    def check(self) -> None:
        if self.num_train + self.num_val == 0:
            raise AdaslotError("--num-train and --num-val must not both be 0")
        if self.min_objects > self.max_objects:
            raise AdaslotError(f"need --min-objects <= --max-objects, got {self.min_objects} and "
                               f"{self.max_objects}")
        if self.min_radius > self.max_radius:
            raise AdaslotError(f"need --min-radius <= --max-radius, got {self.min_radius} and "
                               f"{self.max_radius}")
        bad = [c for c in self.categories if c not in CATEGORIES]
        if bad or not self.categories:
            raise AdaslotError(f"unknown categories {bad}; choose from {', '.join(CATEGORIES)}")
