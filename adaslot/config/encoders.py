"""The encoder registry: names -> how to build each frozen encoder (timm model or builder, patch size, D,
normalisation, weights sources). Plain data, no torch: settings (presets) read D and T from it, and
`adaslot.encoders` builds the modules (docs/encoders.md lists them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adaslot.errors import AdaslotError

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TAP_POINT = "last transformer block output, before the final LayerNorm, prefix tokens (CLS/registers) dropped"


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one named encoder.

    Exactly one of `timm_name` (a timm ViT, pretrained tag included) or `builder` (a custom module) is set.
    `builder()` must return an `nn.Module` mapping NORMALISED images [B, 3, H, W] -> tokens [B, T, D];
    `FrozenEncoder` adds the normalisation, freezing and eval mode around it. `image_size` is the default
    input side (any other works); `pos_offset` / `pos_antialias`: how the position embedding is
    interpolated to another grid (docs/method.md#encoders): the release code's way for the DINO / DINOv2
    encoders, timm's (`resample_abs_pos_embed`: by size, antialiased) otherwise.
    """

    name: str
    embed_dim: int
    patch_size: int
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    timm_name: str | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    builder: Callable[[], nn.Module] | str | None = None  # or "module:attribute" of such a callable
    random_init_seed: int | None = None  # set: random weights from this seed, no file needed
    download_url: str | None = None  # the original release file, for the "missing weights" message
    hf_hub_id: str | None = None  # repo in the HF hub cache holding timm-format weights
    tap_point: str = TAP_POINT
    pos_offset: float = 0.0  # the defaults are timm's own resampling; the release encoders set theirs
    pos_antialias: bool = True
    description: str = ""

    def num_tokens(self, side: int | None = None) -> int:
        return ((side or self.image_size) // self.patch_size) ** 2

    @property
    def release_file(self) -> str | None:
        return self.download_url.rsplit("/", 1)[-1] if self.download_url else None

    def pos_interpolation(self) -> str | None:
        """The contract's text for the position-embedding interpolation (None: no timm ViT)."""
        if self.timm_name is None:
            return None
        how = f"scale (n + {self.pos_offset:g}) / N" if self.pos_offset else "size n"
        return f"bicubic from the weights' N x N grid to n x n, {how}, antialias {self.pos_antialias}"


ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec | None = None, /, **kwargs: Any) -> EncoderSpec:
    """Register an encoder by spec or by EncoderSpec keyword arguments; re-registering a name replaces it.

    Custom (non-timm) frozen encoders: `register_encoder(name="my-enc", embed_dim=64, patch_size=8,
    builder=lambda: MyModule(), mean=..., std=...)`; the builder must be deterministic (same weights every
    call), since the weights checksum in the feature contract is computed from what it returns.
    """
    if spec is None:
        spec = EncoderSpec(**kwargs)
    elif kwargs:
        raise TypeError("pass either an EncoderSpec or keyword arguments, not both")
    if (spec.timm_name is None) == (spec.builder is None):
        raise ValueError(f"encoder {spec.name!r}: set exactly one of timm_name or builder")
    ENCODERS[spec.name] = spec
    return spec


def available_encoders() -> list[str]:
    return sorted(ENCODERS)


def get_encoder_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise AdaslotError(f"unknown encoder {name!r}; known: {', '.join(available_encoders())}")
    return ENCODERS[name]


# The table in docs/encoders.md lists these with their release files and token counts. DINO and DINOv2
# interpolate their position embedding with scale factors (n + 0.1) / N, no antialias
# (docs/method.md#encoders); their register models by output size, antialiased.
_RELEASE = dict(pos_offset=0.1, pos_antialias=False)
_DINO = "https://dl.fbaipublicfiles.com/dino"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"


def _register_dino(size: str, patch: int, note: str = "") -> None:
    """DINO ViT-S or ViT-B (`size` "s" or "b") with `patch`-px patches, as released."""
    timm_name = f"vit_{'small' if size == 's' else 'base'}_patch{patch}_224.dino"
    release = f"dino_{'deitsmall' if size == 's' else 'vitbase'}{patch}_pretrain"
    register_encoder(name=f"dino-vit{size}-{patch}", timm_name=timm_name,
                     embed_dim=384 if size == "s" else 768, patch_size=patch,
                     download_url=f"{_DINO}/{release}/{release}.pth",
                     hf_hub_id=f"timm/{timm_name}", **_RELEASE,
                     description=f"DINO ViT-{size.upper()}/{patch}{note}")


_register_dino("b", 16, " (the reference)")
_register_dino("s", 16)
_register_dino("s", 8, " (DINOSAUR's MOVi configs)")
_register_dino("b", 8)
# DINOv2 was trained at 518 px (37 x 37 grid): the weights keep that grid, and any other side (224 by
# default: 16 x 16) interpolates it at run time as the release does. Its register models interpolate with
# antialias and by output size (the release's `interpolate_antialias=True, interpolate_offset=0.0`).
_REG = dict(pos_offset=0.0, pos_antialias=True)


def _register_dinov2(size: str, embed_dim: int, registers: bool) -> None:
    """DINOv2 ViT-S/14 or ViT-B/14 (`size` "s" or "b"), with 4 registers or without, as released."""
    reg = "_reg4" if registers else ""
    timm_name = f"vit_{'small' if size == 's' else 'base'}_patch14{reg}_dinov2.lvd142m"
    register_encoder(name=f"dinov2-vit{size}-14" + ("-reg" if registers else ""), timm_name=timm_name,
                     embed_dim=embed_dim, patch_size=14,
                     download_url=f"{_DINOV2}/dinov2_vit{size}14/dinov2_vit{size}14{reg}_pretrain.pth",
                     hf_hub_id=f"timm/{timm_name}", **(_REG if registers else _RELEASE),
                     description=f"DINOv2 ViT-{size.upper()}/14" + (" with 4 registers" if registers else ""))


for _registers in (False, True):
    _register_dinov2("s", 384, _registers)
    _register_dinov2("b", 768, _registers)

register_encoder(name="random-vit-tiny", timm_name="vit_tiny_patch16_224", embed_dim=192, patch_size=16,
                 random_init_seed=0, description="timm ViT-Tiny/16, random init (seed 0): tests, benchmarks")


# The demo's encoder (`adaslot demo`, preset `demo`): 8-px patches on 64-px images -> 8 x 8 = 64 tokens of
# 128 dims. mean/std = 0/1: the module sees the [0, 1] pixels themselves.
register_encoder(
    name="demo-colour-pos", embed_dim=128, patch_size=8, image_size=64, mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0), builder="adaslot.demo_encoder:PatchColourPositionEncoder",
    tap_point="per-pixel fixed random Fourier colour features, patch mean (96) + 2-D sin-cos position code "
              "(32, norm 0.1)",
    description="demo: fixed random colour features + position code (no weights file)",
)
