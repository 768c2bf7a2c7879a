"""The Python API: `adaslot.load(CKPT)` gives a `Segmenter` (frozen encoder + slot model, feature contract
checked); `Segmenter.segment(images)` gives a `Segmentation` per image.

    model = adaslot.load("runs/stage2/checkpoints/last.pt", encoder_weights="dino_vitbase16_pretrain.pth")
    result = model.segment("photo.jpg")  # labels [H, W], slots [K, D], kept [K], groups [K], region

Images go through the reference transform (docs/method.md#transforms: shorter side to the encoder's side,
bicubic, center crop); labels and alpha come back at the image's original size through the mask path of
`adaslot eval --save-masks` (evaluate/masks.py), so both give the same label map for the same image.
Deterministic: every image starts from the same slot-initialisation noise (`seed`), and stage-2 models keep
a slot when its keep logit beats its drop logit, as the model's forward decides in eval mode. Slots are kept
and merged by the inference method the checkpoint recorded (docs/adaptive.md); `load(..., merge_slots=0)`
and the other inference-method keywords override it, as the flags of `adaslot eval` and `segment` do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from PIL import Image

from adaslot.data.transforms import Geometry, compute_geometry, load_image, resize_crop, to_rgb, to_tensor
from adaslot.errors import AdaslotError
from adaslot.evaluate.masks import alpha_full_image, alpha_grids, labels_full_image

if TYPE_CHECKING:
    from adaslot.encoders import FrozenEncoder
    from adaslot.features import LiveFeatures
    from adaslot.model import AdaSlot, ModelOutput

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]  # noqa: UP007 (a runtime alias)

__all__ = ["ImageLike", "Segmentation", "Segmenter", "load", "prepare_image"]


@dataclass
class Segmentation:
    """One image's result. H, W: the original image size; K: the model's slots; D: the slot size.

    labels: [H, W] int64 segment id of every pixel: the lowest slot index of the pixel's group of merged
            slots (its slot id when nothing merged); the PNGs of `adaslot segment` / `eval --save-masks`.
            Pixels outside `region` take the segment of the nearest crop-border point.
    slots: [K, D] float32 slot vectors.
    kept: [K] bool, the stage-2 keep decision (all True for a stage-1 model); a dropped slot owns no pixel.
    groups: [K] int64, the segment (group) each slot belongs to: groups[k] = the lowest slot index of k's
            group; groups[k] == k for a slot merged with no other (and for every slot without merging).
    region: (top, left, bottom, right) the original pixels the network saw (`image[top:bottom, left:right]`).
    alpha: [K, H, W] float32 per-segment masks at the original size (a group's slot masks summed into its
            lowest slot, the others 0; only with `alpha=True`: it is large). labels = argmax over K.
    source: the file path when the image was given as one.
    method: the inference method that ran (keep rule and merging; ModelConfig.method).
    """

    labels: np.ndarray
    slots: np.ndarray
    kept: np.ndarray
    region: tuple[int, int, int, int]
    alpha: np.ndarray | None = None
    source: str | None = None
    groups: np.ndarray = None  # type: ignore[assignment]  # None = unmerged: __post_init__ sets arange(K)
    method: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.groups is None:
            self.groups = np.arange(len(self.kept))

    @property
    def num_kept(self) -> int:
        """Slots kept by the keep rule (before merging)."""
        return int(self.kept.sum())

    @property
    def segments(self) -> np.ndarray:
        """[K] bool: the kept slots that head a group (one per segment)."""
        return self.kept & (self.groups == np.arange(len(self.groups)))

    @property
    def num_segments(self) -> int:
        """Segments after merging: the number `adaslot eval` counts (mean_kept_slots, kept_vs_objects_r)."""
        return int(self.segments.sum())


def _channels_last_to_rgb(a: np.ndarray) -> torch.Tensor:
    """Float array [H, W] / [H, W, 1|3|4] in [0, 1] -> [3, H, W] (gray repeated, alpha dropped)."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise AdaslotError(f"an image array must be [H, W] or [H, W, 1|3|4], got shape {tuple(a.shape)}")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise AdaslotError(f"float images must hold values in [0, 1], got [{lo:g}, {hi:g}] (uint8 arrays are "
                           "read as 0..255)")
    x = torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1)
    return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def image_tensor(image: ImageLike) -> tuple[torch.Tensor, str | None]:
    """Any supported image -> (float tensor [3, H, W] in [0, 1] on the CPU, its path or None).

    Paths: decoded as the data layer does (`data.transforms.load_image`: grayscale, palette, RGBA, CMYK,
    16-bit, EXIF orientation). PIL images: any mode, used as they are (no EXIF rotation). Numpy arrays:
    [H, W] or [H, W, C] (C = 1, 3, 4; alpha dropped), uint8 (0..255), other integer types only as [H, W]
    grayscale (16-bit: rescaled as a 16-bit file is), float / bool in [0, 1]. Tensors: [C, H, W] or [H, W],
    uint8 or float in [0, 1]. Raises AdaslotError (ImageLoadError for files) with one readable line.
    """
    if isinstance(image, str | os.PathLike):
        return to_tensor(load_image(Path(image)).image), str(image)
    if isinstance(image, Image.Image):
        return to_tensor(to_rgb(image)), None
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        return image_tensor(t.numpy())
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            a = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
            if a.ndim == 3 and a.shape[2] == 4:
                a = a[..., :3]  # drop alpha, as the file loader does
            if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
                raise AdaslotError("an image array must be [H, W] or [H, W, 1|3|4], got "
                                   f"{tuple(image.shape)}")
            return to_tensor(to_rgb(Image.fromarray(np.ascontiguousarray(a)))), None
        if np.issubdtype(image.dtype, np.integer):
            if image.ndim != 2:
                raise AdaslotError(f"{image.dtype} images must be [H, W] grayscale; pass RGB as uint8 or "
                                   f"float in [0, 1] (got shape {tuple(image.shape)})")
            return to_tensor(to_rgb(Image.fromarray(image.astype(np.int32), "I"))), None
        if np.issubdtype(image.dtype, np.floating) or image.dtype == np.bool_:
            return _channels_last_to_rgb(image), None
        raise AdaslotError(f"cannot read an image from an array of dtype {image.dtype}")
    raise AdaslotError(f"cannot read an image from a {type(image).__name__}: pass a path, a PIL image, a "
                       "numpy array or a tensor")


def prepare_image(image: ImageLike, side: int) -> tuple[torch.Tensor, Geometry, str | None]:
    """An image -> (network input [3, side, side], its Geometry, its path or None), by the reference
    transform."""
    x, source = image_tensor(image)
    geom = compute_geometry(int(x.shape[1]), int(x.shape[2]), side)
    return resize_crop(x, geom), geom, source


def _is_batch(images: Any) -> bool:
    if isinstance(images, list | tuple):
        return True
    if isinstance(images, np.ndarray | torch.Tensor):
        return images.ndim == 4  # numpy [N, H, W, C], torch [N, C, H, W]
    return False


class Segmenter:
    """A trained slot model with its frozen encoder, ready for images (see `load`).

    features: the live feature source (adaslot.features.LiveFeatures, or a FrozenEncoder used at its own
    side): images [B, 3, S, S] -> features [B, T, D]; model: the AdaSlot; seed: slot-initialisation noise;
    image_size: S; num_slots: K; slot_dim: the slot size; info: the checkpoint's stage, step, encoder, path.
    """

    def __init__(self, model: AdaSlot, features: LiveFeatures | FrozenEncoder, seed: int = 0,
                 info: dict[str, Any] | None = None) -> None:
        from adaslot.features import LiveFeatures

        self.model, self.seed = model.eval(), seed
        self.device = next(model.parameters()).device
        self.features = features if isinstance(features, LiveFeatures) else LiveFeatures(features,
                                                                                           device=self.device)
        self.image_size = self.features.image_size
        self.num_slots, self.slot_dim = model.cfg.num_slots, model.cfg.slot_dim
        self.info = dict(info or {})

    @property
    def encoder(self) -> FrozenEncoder:
        """The frozen encoder the features come from."""
        return self.features.encoder

    def __repr__(self) -> str:
        stage = self.info.get("stage", "?")
        return (f"Segmenter(stage {stage}, K={self.num_slots}, encoder {self.features.encoder_name}, "
                f"{self.image_size} px, device {self.device}, seed {self.seed}, method {self.method})")

    @property
    def method(self) -> dict[str, Any]:
        """The inference method the model runs (ModelConfig.method)."""
        return self.model.cfg.method

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> ModelOutput:
        """Network inputs [B, 3, S, S] in [0, 1] -> the model's output (slots [B, K, D], alpha [B, K, T], keep
        [B, K] or None, groups [B, K] or None), every image from the same slot-initialisation noise; kept and
        merged as the model's inference method decides."""
        features = self.features.encode(images)
        init = self.model.slot_attention.fixed_init(len(images), self.num_slots, self.seed)
        return self.model(features, slots_init=init)

    def postprocess(self, out: ModelOutput, geometries: Sequence[Geometry],
                    sources: Sequence[str | None] = (), alpha: bool = False) -> list[Segmentation]:
        """The model's output for a batch -> one Segmentation per image (labels at the original size)."""
        grids = alpha_grids(out.segment_alpha)
        slots = out.slots.float().cpu().numpy()
        kept = (out.keep > 0.5).cpu().numpy() if out.keep is not None else np.ones(slots.shape[:2], bool)
        k = slots.shape[1]
        no_merge = np.tile(np.arange(k), (len(slots), 1))
        groups = out.groups.cpu().numpy() if out.groups is not None else no_merge
        results = []
        for i, geom in enumerate(geometries):
            full = alpha_full_image(grids[i], geom).cpu().numpy() if alpha else None
            source = sources[i] if i < len(sources) else None
            labels = labels_full_image(grids[i], geom)
            results.append(Segmentation(labels=labels, slots=slots[i], kept=kept[i],
                                        region=geom.crop_region_original(), alpha=full, source=source,
                                        groups=groups[i].astype(np.int64), method=dict(self.method)))
        return results

    def segment(self, images: ImageLike | Sequence[ImageLike], *, alpha: bool = False,
                batch_size: int = 32) -> Segmentation | list[Segmentation]:
        """Segment one image (-> a Segmentation) or a batch (a list / tuple, a numpy array [N, H, W, C] or a
        tensor [N, C, H, W]; -> a list). Images may differ in size and mode (see `image_tensor`); they run
        through the network `batch_size` at a time. alpha=True also returns the per-slot masks [K, H, W]."""
        batch = _is_batch(images)
        items: list[Any] = list(images) if batch else [images]  # type: ignore[arg-type]  # _is_batch: iterable
        results: list[Segmentation] = []
        for lo in range(0, len(items), batch_size):
            prepared = [prepare_image(im, self.image_size) for im in items[lo:lo + batch_size]]
            out = self.forward(torch.stack([p[0] for p in prepared]))
            results += self.postprocess(out, [p[1] for p in prepared], [p[2] for p in prepared], alpha)
        return results if batch else results[0]


def load(checkpoint: str | os.PathLike, encoder_weights: str | os.PathLike | None = None,
         device: str | torch.device = "auto", seed: int = 0, **method: Any) -> Segmenter:
    """An adaslot checkpoint (`adaslot train`, or `adaslot convert-official` for the official ones) with the
    frozen encoder it was trained with: weights from `encoder_weights` (e.g. the DINO release file) or the
    local caches (none needed for the demo encoder). Refuses, with one line, encoder weights whose feature
    contract differs from the checkpoint's. device: "auto" (a GPU if visible), "cpu", "cuda", "cuda:N".
    method: inference-method keywords overriding the checkpoint's (docs/adaptive.md): merge_slots (0: no
    merging), merge_on, selector, quality_tau, quality_rho, quality_alpha, quality_k_min."""
    from adaslot.checkpoint import load_model
    from adaslot.config.model import MethodOverrides
    from adaslot.device import resolve_device
    from adaslot.features import LiveFeatures, checkpoint_features

    names = list(MethodOverrides().to_dict())
    unknown = sorted(set(method) - set(names))
    if unknown:
        raise AdaslotError(f"adaslot.load() got the keyword {unknown[0]!r}; the inference-method keywords "
                           f"are {', '.join(names)}")
    overrides = MethodOverrides(**method).validate().given()
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model, payload = load_model(checkpoint, dev, overrides)
    features = checkpoint_features(payload, dev, weights=encoder_weights)
    assert isinstance(features, LiveFeatures)  # no store given: the live encoder
    info = {"checkpoint": str(Path(checkpoint)), "stage": payload.get("stage"), "step": payload.get("step"),
            "encoder": payload.get("encoder")}
    return Segmenter(model, features, seed=seed, info=info)
