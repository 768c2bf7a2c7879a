"""Decoding images by the batch for the loaders (docs/method.md#decoders).

Each file is decoded on its own into uint8 pixels [H, W, 3]; the transform (docs/method.md#transforms) then
runs once per group of same-size images of the batch instead of once per image (same values: every output
pixel of the resize is computed from its own inputs, tests/test_decode.py). Two decoders:

- "pil" (the reference): `transforms.load_image`, which handles every format and mode Pillow reads.
- "torchvision": `torchvision.io.decode_jpeg` for the JPEGs it decodes as the reference does (1 or 3
  components, no EXIF rotation to apply); everything else (PNG, CMYK, EXIF-rotated, unreadable or truncated
  data) goes through the reference, so a bad file gets the same skip reason and message. Both use
  libjpeg-turbo: the pixels are the same where the two libraries agree (checked by the parity test). On a
  GPU (`decode_on_device`), nvJPEG decodes in the main process from the bytes the workers read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from adaslot.data.transforms import (
    EXIF_ORIENTATION,
    Geometry,
    ImageLoadError,
    compute_geometry,
    load_image,
    resize_crop,
)

DECODERS = ("pil", "torchvision")
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # frame headers


@dataclass
class Decoded:
    """One decoded image: pixels uint8 [H, W, 3] (a numpy array or a tensor), or, when the decode is left to
    the device, `data` (the file's bytes as a uint8 tensor) and no pixels yet."""

    pixels: np.ndarray | torch.Tensor | None
    notes: list[str] = field(default_factory=list)
    data: torch.Tensor | None = None


def load_notes(path: Path, source_mode: str, fmt: str | None, transposed: bool) -> list[str]:
    """The data-summary notes of one decoded image: "exif-transposed", "converted-from-CMYK", "PNG-in-jpg"."""
    notes = ["exif-transposed"] if transposed else []
    if source_mode != "RGB":
        notes.append(f"converted-from-{source_mode}")
    if fmt and path.suffix.lower() in (".jpg", ".jpeg") and fmt != "JPEG":
        notes.append(f"{fmt}-in-jpg")
    return notes


def decode_reference(path: Path, expected_wh: tuple[int, int] | None, exif: str,
                     data: bytes | None = None) -> Decoded:
    """The reference (PIL) decode -> Decoded with pixels [H, W, 3] uint8, or raise ImageLoadError."""
    loaded = load_image(path, expected_wh=expected_wh, exif=exif, data=data)
    return Decoded(np.asarray(loaded.image, dtype=np.uint8),
                   load_notes(path, loaded.source_mode, loaded.format, loaded.exif_transposed))


def jpeg_kind(data: bytes) -> str:
    """"plain" (a 1- or 3-component JPEG without EXIF), "exif" (the same with an EXIF block), or "other"
    (not a JPEG, CMYK, or a marker structure this scan does not follow): which decoder may take it."""
    if data[:2] != b"\xff\xd8":
        return "other"
    i, n, kind = 2, len(data), "plain"
    while i + 4 <= n:
        if data[i] != 0xFF:
            return "other"
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0xDA or m == 0xD9:  # a scan or the end before any frame header
            return "other"
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if m == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            kind = "exif"
        if m in _SOF:
            return kind if i + 9 < n and data[i + 9] in (1, 3) else "other"
        i += 2 + length
    return "other"


def _torchvision_ok(path: Path, data: bytes, exif: str) -> bool:
    kind = jpeg_kind(data)
    if kind == "exif" and exif != "raw":  # the reference decides whether to rotate: let it decode
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:  # headers only
                return im.getexif().get(EXIF_ORIENTATION, 1) in (1, None)
        except Exception:  # noqa: BLE001  (the reference decode reports it properly)
            return False
    return kind != "other"


def decode_file(path: Path, expected_wh: tuple[int, int] | None, exif: str = "auto", decoder: str = "pil",
                on_device: bool = False, data: bytes | None = None) -> Decoded:
    """Decode one image with `decoder` (module doc) -> Decoded, or raise ImageLoadError (the reference's
    reason and message). on_device: return the bytes of a JPEG the device may decode instead of pixels."""
    if decoder == "pil":
        return decode_reference(path, expected_wh, exif, data)
    if data is None:
        if not path.is_file():
            raise ImageLoadError(path, "missing", "no such file")
        data = path.read_bytes()
    if not _torchvision_ok(path, data, exif):
        return decode_reference(path, expected_wh, exif, data)
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if on_device:
        return Decoded(None, [], raw)
    try:
        chw = _decode_jpeg(raw)
    except RuntimeError:  # bad data: the reference gives the reason (or decodes what libjpeg-turbo refused)
        return decode_reference(path, expected_wh, exif, data)
    return _checked(path, chw.permute(1, 2, 0), expected_wh, exif, data)


def _decode_jpeg(data: Any, device: torch.device | str = "cpu") -> Any:
    """torchvision.io.decode_jpeg to RGB of one uint8 tensor of bytes -> [3, H, W] uint8, or of a list of
    them -> a list. torchvision 0.29 deprecates its image codecs in favour of TorchCodec, with a warning on
    every call: silenced here (docs/method.md#decoders)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message="The image decoding and encoding capabilities of TorchVision")
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _checked(path: Path, hwc: torch.Tensor, expected_wh: tuple[int, int] | None, exif: str,
             data: bytes) -> Decoded:
    """Pixels decoded by torchvision, or the reference's verdict when their size is not the annotated one."""
    if expected_wh is not None and (hwc.shape[1], hwc.shape[0]) != tuple(expected_wh):
        return decode_reference(path, expected_wh, exif, data)  # raises the size-mismatch error
    return Decoded(hwc, ["converted-from-L"] if _gray(data) else [])


def _gray(data: bytes) -> bool:
    """Whether a JPEG that `jpeg_kind` accepted has one component (grayscale: the reference notes it)."""
    i = 2
    while True:
        m, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if m == 0xFF:
            i += 1
            continue
        if m in _SOF:
            return data[i + 9] == 1
        i += 2 + length


def decode_on_device(items: list[Decoded], files: list[Path], expected: list[tuple[int, int] | None],
                     exif: str, device: torch.device) -> list[Decoded | ImageLoadError]:
    """Decode the items the workers left as bytes (`decode_file(on_device=True)`) with nvJPEG on `device`
    (on the CPU: the same torchvision decode), all in one call; a file it refuses goes through the
    reference on the CPU, whose ImageLoadError (the skip reason) takes the item's place in the list."""
    out: list[Decoded | ImageLoadError] = list(items)
    todo = [j for j, it in enumerate(items) if it.data is not None]
    if not todo:
        return out
    datas = [items[j].data for j in todo]
    decoded: list[torch.Tensor | None]
    try:
        decoded = list(_decode_jpeg(datas, device))
    except RuntimeError:  # one bad file fails the whole call: decode one by one to find it
        decoded = []
        for d in datas:
            try:
                decoded.append(_decode_jpeg(d, device))
            except RuntimeError:
                decoded.append(None)
    for j, chw in zip(todo, decoded, strict=True):
        data = bytes(items[j].data.numpy())  # type: ignore[union-attr]  # todo: data is set
        try:
            if chw is None:
                out[j] = decode_reference(files[j], expected[j], exif, data)
            else:
                out[j] = _checked(files[j], chw.permute(1, 2, 0), expected[j], exif, data)
        except ImageLoadError as e:
            out[j] = e
    return out


def finish_on_device(batch: dict[str, Any], size: int, antialias: bool, crop: bool, views: int, exif: str,
                     device: torch.device) -> dict[str, Any]:
    """A collated batch whose images the workers left undecoded (`batch["decoded"]`, CocoDataset with
    `decode_on_device`) -> the same batch with image [B, (V,) 3, S, S] on `device` and geometry; an image
    that cannot be decoded moves to batch["skipped"] with the reference's reason."""
    decoded = batch.pop("decoded")
    files = [Path(f) for f in batch["file"]]
    done = decode_on_device(decoded, files, batch.pop("expected"), exif, device)
    keep = [j for j, d in enumerate(done) if isinstance(d, Decoded)]
    for j, d in enumerate(done):
        if isinstance(d, ImageLoadError):
            batch["skipped"].append({"image_id": int(batch["image_id"][j]), "file": batch["file"][j],
                                     "reason": d.reason, "detail": d.detail, "index": int(batch["index"][j])})
    pixels = [cast(Decoded, done[j]).pixels for j in keep]
    xs, geoms = transform_batch(cast(list[np.ndarray | torch.Tensor], pixels), size, antialias, crop, views,
                                device)
    rows = torch.as_tensor(keep, dtype=torch.int64)
    batch.update(index=batch["index"][rows], image_id=batch["image_id"][rows],
                 file=[batch["file"][j] for j in keep], geometry=geoms,
                 notes=[n for j in keep for n in cast(Decoded, done[j]).notes],
                 image=torch.stack(xs) if xs else torch.zeros(0))
    return batch


def transform_batch(pixels: list[np.ndarray | torch.Tensor], size: int, antialias: bool = False,
                    crop: bool = True, views: int = 1, device: torch.device | None = None
                    ) -> tuple[list[torch.Tensor], list[Geometry]]:
    """The image transform (docs/method.md#transforms) of uint8 images [H, W, 3] -> per image [3, S, S]
    (views=1) or [2, 3, S, S] (views=2: the image and its horizontal flip), float in [0, 1], and its Geometry.
    Images of the same size are transformed together (one resize per group); the values are those of
    `transforms.transform_image` image by image."""
    out: list[torch.Tensor | None] = [None] * len(pixels)
    geoms: list[Geometry | None] = [None] * len(pixels)
    groups: dict[tuple[int, int], list[int]] = {}
    for j, p in enumerate(pixels):
        groups.setdefault((int(p.shape[0]), int(p.shape[1])), []).append(j)
    for (h, w), members in groups.items():
        geom = compute_geometry(h, w, size, crop=crop)
        if all(isinstance(pixels[j], np.ndarray) for j in members):
            u8 = torch.from_numpy(np.stack([pixels[j] for j in members])).to(device or "cpu")
        else:  # some decoded on the device, some by the reference on the CPU
            u8 = torch.stack([(torch.from_numpy(np.array(p)) if isinstance(p := pixels[j], np.ndarray) else p)
                              .to(device or "cpu") for j in members])
        # [B, H, W, 3] -> [B, 3, H, W] as a strided view: the memory layout the per-image reference resizes
        x = resize_crop(u8.permute(0, 3, 1, 2).float().div_(255.0), geom, antialias=antialias)
        # one contiguous [B, V, 3, S, S] block: collate passes it on without a copy (coco._stacked) and the
        # encoder sees the memory layout the per-image path gave it
        if views == 2:
            y = torch.empty((len(members), 2, *x.shape[1:]), dtype=x.dtype, device=x.device)
            y[:, 0].copy_(x)
            y[:, 1].copy_(x.flip(-1))
            x = y
        else:
            x = x.contiguous()
        for r, j in enumerate(members):
            out[j], geoms[j] = x[r], geom
    return [o for o in out if o is not None], [g for g in geoms if g is not None]
