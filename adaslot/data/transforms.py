"""Image loading, the image transforms (docs/method.md#transforms), and the geometry between network input
and original pixels.

Train and val: to tensor -> resize shorter side to S (bicubic) -> clamp [0, 1] -> center crop S.
Flip is a separate step (`hflip`) so a feature cache can store both views; normalisation is NOT done here
(the frozen encoder normalises with its own mean/std).

Resize choice, checked against the official code: ocl's COCO preprocessing
(`_preprocessing_coco_dino_feature_recon_ccrop.yaml`) applies torchvision `ToTensor` -> `Resize(224, BICUBIC)`
-> clamp -> `CenterCrop(224)` to a *tensor*, with torchvision 0.13 pinned. There, tensor resize defaults to
`antialias=False` (the default only became True in torchvision 0.17). So `antialias=False` is the faithful
default; `antialias=True` is available (PIL-like, less aliasing when shrinking large photos) and is recorded
in the feature contract via `describe_transform`. Output sizes follow torchvision exactly: the long side is
`int(S * long / short)` (truncated) and the crop offset is `int(round((resized - S) / 2))` (Python round).

Coordinates: continuous pixel coordinates, pixel i covers [i, i + 1) (its centre is i + 0.5). Bicubic /
bilinear with `align_corners=False` map continuous coordinates linearly: u_resized = u_original * scale, where
scale = resized / original per axis (slightly different for x and y because of the truncation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from adaslot.errors import AdaslotError

EXIF_ORIENTATION = 0x0112


class ImageLoadError(AdaslotError):
    """An image that cannot be used. `reason` is one short word for summaries: missing, unreadable,
    truncated, too-large, size-mismatch."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class LoadedImage:
    """A decoded RGB image plus what had to be done to it (for the data summary)."""

    image: Image.Image  # mode RGB, in the frame of the annotations
    source_mode: str  # PIL mode of the file (L, CMYK, RGBA, P, I;16, ...)
    format: str | None  # PIL's detected format (content, not the file extension: PNG-in-.jpg is fine)
    exif_transposed: bool  # EXIF orientation was applied


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha is dropped (as `convert("RGB")` in the official pipeline does)."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":  # palette (possibly with a transparency entry): via RGBA, then drop alpha
        return im.convert("RGBA").convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit greyscale: PIL's own conversion clips at 255, so rescale to 8 bit ourselves.
        a = np.asarray(im).astype(np.float64)
        top = a.max() if a.size else 0.0
        if top > 255:
            a = a / (65535.0 if top <= 65535 else top) * 255.0
        elif im.mode == "F" and top <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")  # L, LA, RGBA, CMYK (PIL undoes Adobe's inverted CMYK), YCbCr, 1, ...


def load_image(path: str | Path, expected_wh: tuple[int, int] | None = None,
               exif: str = "auto", data: bytes | None = None) -> LoadedImage:
    """Decode `path` into an RGB image in the frame of its annotations, or raise ImageLoadError.

    exif: "auto" applies the EXIF orientation unless `expected_wh` (width, height from the annotation file)
    matches only the raw, un-rotated pixels (annotations made on raw pixels, as for tools that ignore EXIF);
    "transpose" always applies it; "raw" never does. After this, a size different from `expected_wh` is a
    "size-mismatch" error: the annotations would not line up with the pixels. `data`: the file's bytes
    (read from a tar shard); `path` then only names the image in messages.
    """
    import io

    path = Path(path)
    if data is None and not path.is_file():
        raise ImageLoadError(path, "missing", "no such file")
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            im.load()  # decode now: truncated data raises here, not later in a worker
            fmt, mode = im.format, im.mode
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            transpose = orientation not in (1, None) and exif != "raw"
            if transpose and exif == "auto" and expected_wh is not None:
                raw_wh = im.size
                rot_wh = raw_wh[::-1] if orientation in (5, 6, 7, 8) else raw_wh
                if tuple(raw_wh) == tuple(expected_wh) and tuple(rot_wh) != tuple(expected_wh):
                    transpose = False
            out = ImageOps.exif_transpose(im) if transpose else im.copy()
            out = to_rgb(out)
    except Image.DecompressionBombError as e:
        raise ImageLoadError(path, "too-large", str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(path, "unreadable", "not an image Pillow can identify") from e
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        reason = "truncated" if "truncated" in msg.lower() else "unreadable"
        raise ImageLoadError(path, reason, msg) from e
    if expected_wh is not None and tuple(out.size) != tuple(expected_wh):
        raise ImageLoadError(
            path, "size-mismatch", f"decoded {out.size[0]}x{out.size[1]}, annotations say "
            f"{expected_wh[0]}x{expected_wh[1]}"
        )
    return LoadedImage(out, mode, fmt, transpose)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [0, 1] (x / 255, as torchvision ToTensor)."""
    a = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


@dataclass(frozen=True)
class Geometry:
    """Where the network input sits in the original image.

    original (orig_h, orig_w) -> resize to (resized_h, resized_w) -> crop rows [crop_top, crop_top + out_h)
    and columns [crop_left, crop_left + out_w) -> network input [out_h, out_w]. Without a crop, crop_top =
    crop_left = 0 and out = resized. All coordinates are continuous pixel coordinates (see module doc).
    """

    orig_h: int
    orig_w: int
    resized_h: int
    resized_w: int
    crop_top: int
    crop_left: int
    out_h: int
    out_w: int

    @property
    def scale_x(self) -> float:
        return self.resized_w / self.orig_w

    @property
    def scale_y(self) -> float:
        return self.resized_h / self.orig_h

    def to_original(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Network-input coordinates (x, y) -> original-image coordinates."""
        return (np.asarray(x, np.float64) + self.crop_left) / self.scale_x, \
               (np.asarray(y, np.float64) + self.crop_top) / self.scale_y

    def to_input(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Original-image coordinates (x, y) -> network-input coordinates (may fall outside the crop)."""
        return np.asarray(x, np.float64) * self.scale_x - self.crop_left, \
               np.asarray(y, np.float64) * self.scale_y - self.crop_top

    def crop_box_original(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): the network input's extent in original continuous coordinates."""
        x0, y0 = self.to_original(0.0, 0.0)
        x1, y1 = self.to_original(float(self.out_w), float(self.out_h))
        return float(x0), float(y0), float(x1), float(y1)

    def crop_region_original(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) integer pixel bounds (exclusive end) of the original pixels whose
        centres fall inside the network input: `orig[top:bottom, left:right]` is what the model saw."""
        x0, y0, x1, y1 = self.crop_box_original()

        def first(v: float) -> int:  # first pixel index i with centre i + 0.5 >= v
            return max(0, math.ceil(v - 0.5 - 1e-9))

        return (first(y0), first(x0), min(self.orig_h, first(y1)), min(self.orig_w, first(x1)))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def compute_geometry(orig_h: int, orig_w: int, size: int, crop: bool = True) -> Geometry:
    """Geometry of "resize shorter side to `size`, then center crop `size` x `size`" (torchvision rules)."""
    if orig_h <= 0 or orig_w <= 0:
        raise AdaslotError(f"image has an empty size {orig_w}x{orig_h}")
    if orig_w <= orig_h:
        rw, rh = size, int(size * orig_h / orig_w)
    else:
        rh, rw = size, int(size * orig_w / orig_h)
    if not crop:
        return Geometry(orig_h, orig_w, rh, rw, 0, 0, rh, rw)
    top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
    return Geometry(orig_h, orig_w, rh, rw, top, left, size, size)


def resize_crop(x: torch.Tensor, geom: Geometry, antialias: bool = False) -> torch.Tensor:
    """The image transform (docs/method.md#transforms) on x [C, H, W] or [B, C, H, W], float in [0, 1]:
    bicubic resize to the geometry's resized size, clamp [0, 1], crop. Returns [C, out_h, out_w]."""
    squeeze = x.dim() == 3
    xb = x[None] if squeeze else x
    if (xb.shape[-2], xb.shape[-1]) != (geom.resized_h, geom.resized_w):
        xb = F.interpolate(xb, size=(geom.resized_h, geom.resized_w), mode="bicubic", align_corners=False,
                           antialias=antialias)
    xb = xb.clamp(0.0, 1.0)  # bicubic overshoots
    xb = xb[..., geom.crop_top:geom.crop_top + geom.out_h, geom.crop_left:geom.crop_left + geom.out_w]
    return xb[0] if squeeze else xb


def transform_image(image: Image.Image, size: int = 224, antialias: bool = False,
                    crop: bool = True) -> tuple[torch.Tensor, Geometry]:
    """RGB PIL image -> (float tensor [3, size, size] in [0, 1], not normalised; its Geometry)."""
    geom = compute_geometry(image.height, image.width, size, crop=crop)
    return resize_crop(to_tensor(image), geom, antialias=antialias), geom


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of [..., H, W] (view 1 of the cache = hflip(view 0))."""
    return x.flip(-1)


def describe_transform(size: int, antialias: bool = False, crop: bool = True) -> dict[str, object]:
    """The image transform as plain data, for the feature contract of a cache."""
    return {
        "to_tensor": "uint8 / 255",
        "resize": f"shorter side {size}, bicubic, align_corners=False, antialias={antialias}",
        "clamp": [0.0, 1.0],
        "crop": f"center {size}x{size}" if crop else "none",
        "normalise": "inside the encoder",
    }


def resize_masks_nearest_exact(masks: torch.Tensor | np.ndarray, size: int,
                               crop: bool = True) -> torch.Tensor:
    """GT for the published protocols: masks [..., H, W] (bool/int) -> shorter side `size` with mode
    nearest-exact (ocl's ResizeNearestExact) -> center crop `size`. Returns the input dtype, [..., S, S].

    AdaSlot configs: size 224; DINOSAUR paper: size 320."""
    t = torch.as_tensor(masks)
    dtype = t.dtype
    h, w = t.shape[-2:]
    geom = compute_geometry(int(h), int(w), size, crop=crop)
    lead = t.shape[:-2]
    flat = t.reshape(1, -1, h, w).float()
    if flat.shape[1] == 0:
        return torch.zeros(*lead, geom.out_h, geom.out_w, dtype=dtype)
    if (h, w) != (geom.resized_h, geom.resized_w):
        flat = F.interpolate(flat, size=(geom.resized_h, geom.resized_w), mode="nearest-exact")
    flat = flat[..., geom.crop_top:geom.crop_top + geom.out_h, geom.crop_left:geom.crop_left + geom.out_w]
    out = flat.reshape(*lead, geom.out_h, geom.out_w)
    return out > 0.5 if dtype == torch.bool else out.round().to(dtype)


def maps_to_original(maps: torch.Tensor, geom: Geometry, mode: str = "bilinear", full_image: bool = False,
                     rows: tuple[int, int] | None = None) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Resample per-slot maps [K, h, w] covering the network input (any h, w: 14x14 alpha or 224x224) onto
    original pixels. Each original pixel centre is mapped exactly through the geometry (grid_sample,
    align_corners=False, so at the input resolution this equals F.interpolate).

    full_image=False: returns ([K, bottom - top, right - left], region) for region =
    `geom.crop_region_original()`. full_image=True: every original pixel ([K, orig_h, orig_w], region = the
    whole image); pixels outside the crop take the nearest border value (the model never saw them).
    rows=(r0, r1): only original rows r0..r1-1 of that region (the same values, computed in row blocks)."""
    k, h, w = maps.shape
    if full_image:
        region = (0, 0, geom.orig_h, geom.orig_w)
    else:
        region = geom.crop_region_original()
    if rows is not None:
        region = (max(region[0], rows[0]), region[1], min(region[2], rows[1]), region[3])
    top, left, bottom, right = region
    ys = torch.arange(top, bottom, dtype=torch.float64) + 0.5
    xs = torch.arange(left, right, dtype=torch.float64) + 0.5
    xi, yi = geom.to_input(xs.numpy(), ys.numpy())  # input coordinates of original pixel centres
    gx = torch.from_numpy(2.0 * xi / geom.out_w - 1.0).float()
    gy = torch.from_numpy(2.0 * yi / geom.out_h - 1.0).float()
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]  # [1, H', W', 2] (x, y)
    out = F.grid_sample(maps[None].float(), grid.to(maps.device), mode=mode, padding_mode="border",
                        align_corners=False)
    return out[0], region
