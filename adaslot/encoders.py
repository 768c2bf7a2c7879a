"""Frozen image encoders: a registry of names -> (timm ViT or custom module, tap point, normalisation).

`build_encoder(name, weights=None, image_size=None)` returns a `FrozenEncoder`: images [B, 3, H, W] in [0, 1]
(not normalised) -> tokens [B, T, D] = output of the last transformer block BEFORE the final LayerNorm,
prefix tokens (CLS, registers) dropped (docs/method.md#encoder). Any input side works: the position
embedding is interpolated from the release's grid as the release code does (docs/method.md#encoders). The
module is frozen, always in eval mode, and runs under no_grad.

Weights never come from the network. In order: `weights=FILE` (a timm state dict, the original DINO /
DINOv2 release file, a DINO full training checkpoint, or any of these wrapped in 'model'/'state_dict'; see
`adaslot.encoder_weights`), then the local Hugging Face hub cache (timm's `timm/<model>` repos), then torch
hub's checkpoint directory. If none is found, an `AdaslotError` says where to download the file.

The feature contract (`FrozenEncoder.contract(side)`) identifies the features a cache stores: encoder name,
timm model + version, a checksum of the weights actually used (format independent), tap point, position-
embedding interpolation, input resolution, normalisation, dtype. Stores and trainers compare it.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adaslot.config.encoders import (  # noqa: F401  (re-exported: the registry lives with the settings)
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TAP_POINT,
    EncoderSpec,
    available_encoders,
    get_encoder_spec,
    register_encoder,
)
from adaslot.encoder_weights import (
    UNUSED_PREFIXES,
    find_cached_weights,
    load_into_vit,
    load_weights_file,
    unwrap,
)
from adaslot.errors import AdaslotError


def interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int], offset: float, antialias: bool
                          ) -> torch.Tensor:
    """Patch position embedding [1, N, D] on an M x M grid -> [1, h * w, D] on grid (h, w), bicubic, as
    DINO / DINOv2's `interpolate_pos_encoding`: offset > 0 gives scale factors (h + offset) / M (the release's
    guard against rounding the output size down), offset 0 the output size itself; computed in float32.
    Unchanged when the grid is M x M."""
    n, dim = pos.shape[1], pos.shape[2]
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"position embedding of {n} tokens is not a square grid")
    if grid == (m, m):
        return pos
    h, w = grid
    size_or_scale: dict[str, Any] = ({"scale_factor": ((h + offset) / m, (w + offset) / m)} if offset
                                     else {"size": (h, w)})
    out = F.interpolate(pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic",
                        antialias=antialias, **size_or_scale)
    if tuple(out.shape[-2:]) != (h, w):
        raise ValueError(f"position embedding interpolated to {tuple(out.shape[-2:])}, expected {(h, w)}")
    return out.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos.dtype)


class _TimmTap(nn.Module):
    """Wraps a timm VisionTransformer: normalised images -> last-block tokens without prefix tokens.

    The forward is timm's (patch embedding, prefix tokens, blocks) except for the position embedding, which
    is interpolated to the input's grid by `interpolate_pos_embed` as the release code does (timm's own
    resampling uses other settings for DINO and non-register DINOv2)."""

    def __init__(self, vit: nn.Module, offset: float, antialias: bool):
        super().__init__()
        self.vit = vit
        self.offset, self.antialias = offset, antialias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit: Any = self.vit  # a timm VisionTransformer: its parts are looked up by their timm names
        tokens = vit.patch_embed(x)  # dynamic_img_size: [B, h, w, D]
        grid = (int(tokens.shape[1]), int(tokens.shape[2]))
        tokens = tokens.flatten(1, 2)
        b = tokens.shape[0]
        prefix = [t.expand(b, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        n_pos_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens  # prefix tokens with a position
        pos = vit.pos_embed
        patch_pos = interpolate_pos_embed(pos[:, n_pos_prefix:], grid, self.offset, self.antialias)
        if vit.no_embed_class:  # register models: positions on the patches only
            tokens = torch.cat([*prefix, tokens + patch_pos], dim=1)
        else:
            tokens = torch.cat([*prefix, tokens], dim=1) + torch.cat([pos[:, :n_pos_prefix], patch_pos], 1)
        tokens = vit.norm_pre(vit.patch_drop(vit.pos_drop(tokens)))
        tokens = vit.blocks(tokens)  # the tap point: the last block, before the final norm
        return tokens[:, vit.num_prefix_tokens:]


class FrozenEncoder(nn.Module):
    """images [B, 3, H, W] float in [0, 1] -> tokens [B, T, D] (T = (H/patch)^2), frozen, eval, no grad.

    `image_size`: the side this encoder is used at (the default of `contract()`, `num_tokens()` and of the
    images a Segmenter prepares); the spec's default unless `build_encoder(image_size=...)` says otherwise."""

    mean: torch.Tensor  # buffers [1, 3, 1, 1]
    std: torch.Tensor

    def __init__(self, spec: EncoderSpec, backbone: nn.Module, weights_source: str,
                 image_size: int | None = None):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.embed_dim = spec.embed_dim
        self.patch_size = spec.patch_size
        self.image_size = int(image_size or spec.image_size)
        if self.image_size < spec.patch_size:
            raise AdaslotError(f"encoder {spec.name!r}: image size {self.image_size} is smaller than one "
                               f"{spec.patch_size}-px patch")
        self.weights_source = weights_source
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        # For timm taps, parameters after the tap point (final norm, head) are not part of the checksum.
        exclude = tuple("vit." + p for p in UNUSED_PREFIXES) if isinstance(backbone, _TimmTap) else ()
        self.weights_sha256 = weights_checksum(backbone, exclude)

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Frozen: stays in eval mode whatever the caller asks (dropout/droppath must never switch on)."""
        return super().train(False)

    def num_tokens(self, side: int | None = None) -> int:
        return self.spec.num_tokens(side or self.image_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> tokens [B, T, D] (fp32 unless the caller uses autocast)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        return self.backbone(x)

    def contract(self, side: int | None = None) -> dict[str, Any]:
        """The feature contract for inputs of `side` x `side` pixels (JSON-serialisable)."""
        side = side or self.image_size
        timm_version = None
        if self.spec.timm_name:  # importing timm takes seconds: not for the demo encoder
            import timm

            timm_version = timm.__version__
        return {
            "encoder": self.name,
            "timm_model": self.spec.timm_name,
            "timm_version": timm_version,
            "weights_sha256": self.weights_sha256,
            "tap_point": self.spec.tap_point,
            "pos_interpolation": self.spec.pos_interpolation(),
            "input_size": [side, side],
            "patch_size": self.patch_size,
            "num_tokens": self.num_tokens(side),
            "feature_dim": self.embed_dim,
            "normalisation": {"mean": list(self.spec.mean), "std": list(self.spec.std)},
            "dtype": "float32",
        }


def weights_checksum(module: nn.Module, exclude: tuple[str, ...] = ()) -> str:
    """sha256 over (name, dtype, shape, bytes) of the module's tensors in name order, minus `exclude`.

    Independent of the file format the weights came from; excluding the parameters after the tap point
    (final norm, head) makes a file without them give the same checksum.
    """
    h = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        if exclude and key.startswith(exclude):
            continue
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def build_encoder(name: str, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  image_size: int | None = None) -> FrozenEncoder:
    """Build the named frozen encoder on `device`, used at `image_size` (default: the spec's). No network
    access, ever (see module docstring)."""
    spec = get_encoder_spec(name)
    if spec.builder is not None:
        builder = spec.builder
        if isinstance(builder, str):  # "module:attribute", imported only when the encoder is built
            module, _, attr = builder.partition(":")
            builder = getattr(importlib.import_module(module), attr)
        backbone = builder()
        source = "builder"
        if weights is not None:
            backbone.load_state_dict(unwrap(load_weights_file(weights, name)))
            source = str(weights)
    else:
        backbone, source = _build_timm(spec, weights)
    return FrozenEncoder(spec, backbone, source, image_size).to(device)


def _build_timm(spec: EncoderSpec, weights: str | os.PathLike | None) -> tuple[nn.Module, str]:
    import timm

    assert spec.timm_name is not None
    # dynamic_img_size: the patch embedding takes any side (the tap interpolates the position embedding).
    kwargs = {"num_classes": 0, "dynamic_img_size": True, **spec.timm_kwargs}
    path = None  # the weights file, found before the ViT is built: a missing one fails at once
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise AdaslotError(f"encoder {spec.name!r}: weights file {path} not found")
    elif spec.random_init_seed is None:
        path = find_cached_weights(spec.name, spec.hf_hub_id, spec.download_url)
    # weight_init="skip": the init is overwritten by the weights anyway (and costs seconds for ViT-B);
    # fork_rng: layer constructors still draw random numbers, keep the caller's RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        vit = timm.create_model(spec.timm_name, pretrained=False, weight_init="skip", **kwargs)
    tap = _TimmTap(vit, spec.pos_offset, spec.pos_antialias)
    if path is None:
        vit.load_state_dict(_random_init_state(spec, kwargs))
        return tap, f"random init (seed {spec.random_init_seed})"
    load_into_vit(vit, load_weights_file(path, spec.name), source=str(path), encoder=spec.name)
    return tap, str(path)


_RANDOM_INIT_CACHE: dict[tuple[str, int], dict[str, torch.Tensor]] = {}


def _random_init_state(spec: EncoderSpec, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """timm's own init under a fixed seed, computed once per process (tests build this encoder often)."""
    import timm

    assert spec.timm_name is not None and spec.random_init_seed is not None
    key = (spec.timm_name, spec.random_init_seed)
    if key not in _RANDOM_INIT_CACHE:
        # fork_rng: a fixed seed for timm's init without disturbing the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.random_init_seed)
            vit = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
        _RANDOM_INIT_CACHE[key] = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    return _RANDOM_INIT_CACHE[key]
