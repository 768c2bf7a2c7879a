"""Frozen image encoders: a registry of names -> (timm ViT or custom module, tap point, normalisation).

`build_encoder(name, weights=None)` returns a `FrozenEncoder`: images [B, 3, H, W] in [0, 1] (not normalised)
-> tokens [B, T, D] = output of the last transformer block BEFORE the final LayerNorm, prefix tokens (CLS,
registers) dropped (docs/method.md#encoder). The module is frozen, always in eval mode, and runs under
no_grad.

Weights never come from the network. In order: `weights=FILE` (a timm state dict, the original DINO /
DINOv2 release file, a DINO full training checkpoint, or any of these wrapped in 'model'/'state_dict'),
then the local Hugging Face hub cache (timm's `timm/<model>` repos), then torch hub's checkpoint directory.
If none is found, an `AdaslotError` says where to download the file and how to pass it.

The feature contract (`FrozenEncoder.contract(side)`) identifies the features a cache stores: encoder name,
timm model + version, a checksum of the weights actually used (format independent), tap point, input
resolution, normalisation, dtype. Stores and trainers compare it to refuse mismatches.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaslot.errors import AdaslotError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TAP_POINT = "last transformer block output, before the final LayerNorm, prefix tokens (CLS/registers) dropped"
# Parameters the tap point never uses: a weights file may lack them, and they are not part of the checksum.
_UNUSED_PREFIXES = ("norm.", "fc_norm.", "head.", "head_drop.", "attn_pool.")


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one named encoder.

    Exactly one of `timm_name` (a timm ViT, pretrained tag included) or `builder` (a custom module) is set.
    `builder()` must return an `nn.Module` mapping NORMALISED images [B, 3, H, W] -> tokens [B, T, D];
    `FrozenEncoder` adds the normalisation, freezing and eval mode around it.
    """

    name: str
    embed_dim: int
    patch_size: int
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    timm_name: str | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    builder: Callable[[], nn.Module] | None = None
    random_init_seed: int | None = None  # set: random weights from this seed, no file needed
    download_url: str | None = None  # the original release file, for the "missing weights" message
    hf_hub_id: str | None = None  # repo in the HF hub cache holding timm-format weights
    tap_point: str = TAP_POINT
    description: str = ""

    def num_tokens(self, side: int) -> int:
        return (side // self.patch_size) ** 2


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


_DINO = "https://dl.fbaipublicfiles.com/dino"
register_encoder(name="dino-vitb-16", timm_name="vit_base_patch16_224.dino", embed_dim=768, patch_size=16,
                 download_url=f"{_DINO}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
                 hf_hub_id="timm/vit_base_patch16_224.dino", description="DINO ViT-B/16 (the reference)")
register_encoder(name="dino-vits-16", timm_name="vit_small_patch16_224.dino", embed_dim=384, patch_size=16,
                 download_url=f"{_DINO}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
                 hf_hub_id="timm/vit_small_patch16_224.dino", description="DINO ViT-S/16")
register_encoder(name="dino-vitb-8", timm_name="vit_base_patch8_224.dino", embed_dim=768, patch_size=8,
                 download_url=f"{_DINO}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
                 hf_hub_id="timm/vit_base_patch8_224.dino", description="DINO ViT-B/8")
# DINOv2 was trained at 518; at 224 timm resamples its position embedding (bicubic) to the 16x16 grid.
register_encoder(name="dinov2-vitb-14", timm_name="vit_base_patch14_dinov2.lvd142m", embed_dim=768,
                 patch_size=14, timm_kwargs={"img_size": 224},
                 download_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
                 hf_hub_id="timm/vit_base_patch14_dinov2.lvd142m", description="DINOv2 ViT-B/14")
register_encoder(name="random-vit-tiny", timm_name="vit_tiny_patch16_224", embed_dim=192, patch_size=16,
                 random_init_seed=0, description="timm ViT-Tiny/16, random init (seed 0): tests, benchmarks")


class _TimmTap(nn.Module):
    """Wraps a timm VisionTransformer: normalised images -> last-block tokens without prefix tokens."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # indices=1 -> the last block; norm=False -> before the final LayerNorm; prefix tokens are split off.
        (tokens,) = self.vit.forward_intermediates(x, indices=1, norm=False, output_fmt="NLC",
                                                   intermediates_only=True)
        return tokens


class FrozenEncoder(nn.Module):
    """images [B, 3, H, W] float in [0, 1] -> tokens [B, T, D] (T = (H/patch)^2), frozen, eval, no grad."""

    def __init__(self, spec: EncoderSpec, backbone: nn.Module, weights_source: str):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.embed_dim = spec.embed_dim
        self.patch_size = spec.patch_size
        self.image_size = spec.image_size
        self.weights_source = weights_source
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        # For timm taps, parameters after the tap point (final norm, head) are not part of the checksum.
        exclude = tuple("vit." + p for p in _UNUSED_PREFIXES) if isinstance(backbone, _TimmTap) else ()
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


def build_encoder(name: str, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
                  ) -> FrozenEncoder:
    """Build the named frozen encoder on `device`. No network access, ever (see module docstring)."""
    spec = get_encoder_spec(name)
    if spec.builder is not None:
        backbone = spec.builder()
        source = "builder"
        if weights is not None:
            backbone.load_state_dict(_unwrap(load_weights_file(weights)))
            source = str(weights)
    else:
        backbone, source = _build_timm(spec, weights)
    return FrozenEncoder(spec, backbone, source).to(device)


def _build_timm(spec: EncoderSpec, weights: str | os.PathLike | None) -> tuple[nn.Module, str]:
    import timm

    assert spec.timm_name is not None
    # dynamic_img_size: other input sides work (pos_embed resampled on the fly; identical at the native side).
    kwargs = {"num_classes": 0, "dynamic_img_size": True, **spec.timm_kwargs}
    # weight_init="skip": the init is overwritten by the weights anyway (and costs seconds for ViT-B);
    # fork_rng: layer constructors still draw random numbers, keep the caller's RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        vit = timm.create_model(spec.timm_name, pretrained=False, weight_init="skip", **kwargs)
    if spec.random_init_seed is not None and weights is None:
        vit.load_state_dict(_random_init_state(spec, kwargs))
        return _TimmTap(vit), f"random init (seed {spec.random_init_seed})"
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise AdaslotError(f"encoder weights file {path} not found")
    else:
        path = _find_cached_weights(spec)
    load_into_vit(vit, load_weights_file(path), source=str(path))
    return _TimmTap(vit), str(path)


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


def _find_cached_weights(spec: EncoderSpec) -> Path:
    """Look for weights in the local HF hub cache, then torch hub's checkpoints dir; never downloads."""
    tried = []
    if spec.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(spec.hf_hub_id, fname)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
        tried.append(f"{constants.HF_HUB_CACHE}/models--{spec.hf_hub_id.replace('/', '--')}")
    if spec.download_url:
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / spec.download_url.rsplit("/", 1)[-1]
        if hub_file.is_file():
            return hub_file
        tried.append(str(hub_file))
    how = f"download {spec.download_url} and pass --encoder-weights FILE" if spec.download_url else (
        "pass --encoder-weights FILE")
    if spec.hf_hub_id:
        how += f", or put the timm weights (huggingface.co/{spec.hf_hub_id}) in the HF hub cache"
    raise AdaslotError(f"no weights for encoder {spec.name!r} (looked in {'; '.join(tried) or 'nowhere'}); "
                       f"{how}")


def load_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a .safetensors or torch pickle (.pth/.pt/.bin) file without executing arbitrary code."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # DINO full checkpoints carry their argparse.Namespace of training args; allow just that type.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / foreign file: one readable line
        first_line = f"{type(e).__name__}: {e}".splitlines()[0]
        raise AdaslotError(f"cannot read encoder weights {path}: {first_line}") from e


def _unwrap(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Peel known wrappers down to a flat {name: tensor} dict.

    DINO full checkpoint: {'teacher': {'backbone.*', 'head.*'}, 'student': {'module.backbone.*'}, ...} -> the
    teacher (what DINO releases and evaluates). Lightning/ocl: 'state_dict' with 'models.feature_extractor.
    model.' prefixes; generic 'model' / 'state_dict' / 'module' nesting.
    """
    for key in ("teacher", "model", "state_dict", "module"):
        if isinstance(obj.get(key), dict):
            return _unwrap(obj[key])
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


_PREFIXES = ("", "module.", "backbone.", "module.backbone.", "encoder.", "feature_extractor.model.",
             "models.feature_extractor.model.", "vit.")


def load_into_vit(vit: nn.Module, obj: dict[str, Any], source: str = "weights") -> None:
    """Load timm- or DINO/DINOv2-release-format weights into a timm VisionTransformer (strict on used keys).

    Key facts (timm's `checkpoint_filter_fn`): the DINO v1 backbone release already uses timm's names
    (`blocks.N.attn.qkv`, `norm1`, `mlp.fc1`, ...) and only differs by wrapping/prefixes and the DINO
    projection head; DINOv2 adds `mask_token` (dropped) and trains at 518 px (pos_embed resampled).
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    flat = _unwrap(obj)
    prefix = next((p for p in _PREFIXES if f"{p}patch_embed.proj.weight" in flat), None)
    if prefix is None:
        raise AdaslotError(f"{source} does not look like ViT weights (no patch_embed.proj.weight key)")
    flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    flat = {k: v for k, v in flat.items() if not k.startswith("head.")}  # DINO projection head / classifier
    flat = checkpoint_filter_fn(flat, vit)
    own = vit.state_dict()
    wrong = [k for k, v in flat.items() if k in own and own[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise AdaslotError(f"{source} does not match the encoder architecture ({k}: {tuple(flat[k].shape)} "
                           f"vs {tuple(own[k].shape)}); wrong encoder name?")
    if getattr(vit, "norm", None) is not None and hasattr(vit.norm, "reset_parameters"):
        vit.norm.reset_parameters()  # after the tap point; defined values in case the file lacks it
    missing, unexpected = vit.load_state_dict(flat, strict=False)
    missing = [k for k in missing if not k.startswith(_UNUSED_PREFIXES)]
    if missing or unexpected:
        raise AdaslotError(f"{source} does not match the encoder architecture "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]}); wrong encoder name?")


def _demo_encoder() -> nn.Module:
    from adaslot.demo_encoder import PatchColourPositionEncoder

    return PatchColourPositionEncoder()


# The demo's encoder (`adaslot demo`, preset `demo`): 8-px patches on 64-px images -> 8 x 8 = 64 tokens of
# 128 dims. mean/std = 0/1: the module sees the [0, 1] pixels themselves.
register_encoder(
    name="demo-colour-pos", embed_dim=128, patch_size=8, image_size=64, mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0), builder=_demo_encoder,
    tap_point="per-pixel fixed random Fourier colour features, patch mean (96) + 2-D sin-cos position code "
              "(32, norm 0.1)",
    description="demo: fixed random colour features + position code (no weights file)",
)
