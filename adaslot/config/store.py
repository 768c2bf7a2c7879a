"""Settings of the feature-store commands: cache-features, cache-info, cache-verify, export."""

from __future__ import annotations

from dataclasses import dataclass

from adaslot.config.base import Settings, setting
from adaslot.config.data import DataSpec
from adaslot.errors import AdaslotError

DEVICE_HELP = "auto, cpu, cuda or cuda:N (under torchrun: the rank's GPU)"
WORKERS_HELP = "data-loading worker processes (default: one per spare CPU core, at most 4; 0 = main process)"


@dataclass
class CacheConfig(Settings):
    """`adaslot cache-features`: run the frozen encoder once over a dataset into a feature store.

    views None = 2 (image + hflip) for split "train", else 1. Chunk and shard sizes count samples."""

    out: str = setting("", "store path: DIR.zarr or any fsspec URL zarr understands (s3://...)",
                       required=True)
    data: DataSpec = setting(default_factory=DataSpec)
    encoder: str = setting("dino-vitb-16", "frozen encoder name (adaslot.encoders)")
    encoder_weights: str | None = setting(None, "encoder weights file (timm or DINO release format)")
    image_size: int | None = setting(None, "network input side (default: the encoder's native side)", min=1)
    views: int | None = setting(None, "stored views: 2 = image + hflip (train default), 1 (other splits)",
                                choices=(1, 2))
    antialias: bool = setting(False, "antialiased resize (the official pipeline: off)")
    decoder: str = setting("pil", "JPEG decoder: pil (the reference) or torchvision "
                                  "(torchvision.io.decode_jpeg; on the GPU with a CUDA --device; other files "
                                  "still through PIL; "
                                  "docs/method.md#decoders); a non-default decoder is recorded in the store",
                           choices=("pil", "torchvision"))
    precision: str = setting("fp32", "fp32 (reference) or bf16 (autocast); recorded in the store",
                             choices=("fp32", "bf16"))
    batch_size: int = setting(64, "images per encoder batch", min=1)
    workers: int | None = setting(None, WORKERS_HELP, min=0)
    device: str = setting("auto", DEVICE_HELP)
    # named as the store records them (attrs["settings"]["layout"]); the flags keep their first spelling,
    # which scripts use (the config layer has one flag name per field)
    chunk_samples: int = setting(64, "samples per loader block: the unit whose order the training loader "
                                     "shuffles and that it splits between ranks", min=1, flag="chunk-size")
    shard_samples: int = setting(512, "samples per shard file (a multiple of --chunk-size); the unit of "
                                      "writing, resume and repair", min=1, flag="shard-size")
    overwrite: bool = setting(False, "replace a store made with other settings")
    repair: bool = setting(False, "check every checksum of the existing store and re-encode exactly its "
                                  "damaged shards (same bytes as an undamaged store)")
    progress: bool = setting(True, "progress bar and summary")

    def check(self) -> None:
        if not self.out:
            raise AdaslotError("give the store path: --out PATH (a folder ending in .zarr, or an fsspec URL)")
        if self.repair and self.overwrite:
            raise AdaslotError("--repair keeps the store and --overwrite replaces it: give one of them")
        if self.shard_samples % self.chunk_samples:
            raise AdaslotError(f"--shard-size ({self.shard_samples}) must be a multiple of --chunk-size "
                               f"({self.chunk_samples})")

    @property
    def num_views(self) -> int:
        if self.data.dataset == "movi":  # the official MOVi protocol has no flip (docs/method.md#movi)
            return 1 if self.views is None else self.views
        return self.views if self.views is not None else (2 if self.data.split == "train" else 1)


@dataclass
class InfoConfig(Settings):
    """`adaslot cache-info`."""

    store: str = setting("", "feature store (zarr path/URL or .h5)", argument=True, required=True)


@dataclass
class VerifyConfig(Settings):
    """`adaslot cache-verify`: recompute a random sample online and compare it with the stored features.
    The dataset defaults to the location recorded in the store; give --root or --images/--annotations if
    it moved. `full`: check every stored checksum instead (adaslot/store/checksums.py)."""

    store: str = setting("", "feature store (zarr path/URL or .h5)", argument=True, required=True)
    sample: int = setting(64, "number of random stored images to recompute", min=1)
    seed: int = setting(0, "seed of the sample")
    encoder_weights: str | None = setting(None, "encoder weights file, if not in the hub cache")
    data: DataSpec = setting(default_factory=DataSpec)
    device: str = setting("auto", DEVICE_HELP)
    full: bool = setting(False, "instead: read every chunk and check its checksum (no encoder, no images) "
                                "and list the damaged files")


@dataclass
class ExportConfig(Settings):
    """`adaslot export`: the store's arrays and attributes as one HDF5 file."""

    store: str = setting("", "complete zarr feature store", argument=True, required=True)
    out: str = setting("", "output .h5 file", argument=True, required=True)
    overwrite: bool = setting(False, "replace OUT if it exists")
