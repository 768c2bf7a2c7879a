"""Encoder weights files -> a timm VisionTransformer: reading, unwrapping, release key layouts, local caches.

Accepted (docs/encoders.md#weights-files): timm state dicts (.safetensors / .pth, the HF hub cache's
`model.safetensors`), the DINO v1 backbone releases (`dino_*_pretrain.pth`: timm's key names already), DINO
full training checkpoints (teacher taken), and the DINOv2 releases (`dinov2_vit*14[_reg4]_pretrain.pth`),
whose layout differs from timm's: an extra `mask_token` (masked-image training only), `register_tokens`
(timm: `reg_token`) and, for the register models, a position embedding that still covers the CLS token
(timm folds that position into `cls_token`, since its register models add no position to prefix tokens).
Every failure is one `AdaslotError` line naming the encoder and the file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaslot.errors import AdaslotError

# Parameters after the tap point: a weights file may lack them, and they are not part of the checksum.
UNUSED_PREFIXES = ("norm.", "fc_norm.", "head.", "head_drop.", "attn_pool.")
# Wrappers around the backbone's own names: DDP, DINO's teacher/student, ocl/Lightning, adaslot's tap.
_PREFIXES = ("", "module.", "backbone.", "module.backbone.", "encoder.", "feature_extractor.model.",
             "models.feature_extractor.model.", "vit.")


def load_weights_file(path: str | os.PathLike, encoder: str | None = None) -> dict[str, Any]:
    """Read a .safetensors or torch pickle (.pth/.pt/.bin) file without executing arbitrary code."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # DINO full checkpoints carry their argparse.Namespace of training args; allow just that type.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or foreign file: one readable line
        first_line = f"{type(e).__name__}: {e}".splitlines()[0]
        who = f"encoder {encoder!r}: " if encoder else ""
        raise AdaslotError(f"{who}cannot read encoder weights {path}: {first_line}") from e


def unwrap(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Peel known wrappers down to a flat {name: tensor} dict.

    DINO full checkpoint: {'teacher': {'backbone.*', 'head.*'}, 'student': {'module.backbone.*'}, ...} -> the
    teacher (what DINO releases and evaluates). Lightning/ocl: 'state_dict' with 'models.feature_extractor.
    model.' prefixes; generic 'model' / 'state_dict' / 'module' nesting.
    """
    if not isinstance(obj, dict):
        return {}
    for key in ("teacher", "model", "state_dict", "module"):
        if isinstance(obj.get(key), dict):
            return unwrap(obj[key])
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def from_dinov2_release(flat: dict[str, torch.Tensor], vit: nn.Module) -> dict[str, torch.Tensor]:
    """DINOv2 release key layout -> timm's (a no-op on timm / DINO v1 dicts).

    The release model (its `prepare_tokens_with_masks`): tokens = [CLS, patches] + pos_embed (interpolated),
    then the registers are inserted after CLS without a position. timm's register models
    (`no_embed_class`) add pos_embed to the patches only and concatenate [CLS, registers, patches]; so the
    CLS position moves into `cls_token` (the same sum the release computes, so the tokens are bit-equal).
    """
    out = {k: v for k, v in flat.items() if k != "mask_token"}  # masked-image training only
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        if getattr(vit, "no_embed_class", False) and "pos_embed" in out and "cls_token" in out:
            pos = out.pop("pos_embed")
            out["cls_token"] = out["cls_token"] + pos[:, :1]
            out["pos_embed"] = pos[:, 1:]
    return out


def load_into_vit(vit: nn.Module, obj: dict[str, Any], source: str = "weights", encoder: str = "?") -> None:
    """Load timm- or DINO/DINOv2-release-format weights into a timm VisionTransformer, strict on every key
    the tap point uses and on every shape (no silent resampling: the position embedding must have the
    grid of the release, which `encoders._TimmTap` interpolates at run time as the release code does)."""
    who = f"encoder {encoder!r}: weights file {source}"
    flat = unwrap(obj)
    prefix = next((p for p in _PREFIXES if f"{p}patch_embed.proj.weight" in flat), None)
    if prefix is None:
        some = ", ".join(list(flat)[:2]) or "no tensors"
        raise AdaslotError(f"{who} does not look like ViT weights in timm or DINO/DINOv2 release layout (no "
                           f"patch_embed.proj.weight key; it has {some})")
    flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    flat = {k: v for k, v in flat.items() if not k.startswith("head.")}  # DINO projection head / classifier
    flat = from_dinov2_release(flat, vit)
    own = vit.state_dict()
    wrong = [k for k, v in flat.items() if k in own and own[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise AdaslotError(f"{who} does not match the architecture ({k}: {tuple(flat[k].shape)} in the file, "
                           f"{tuple(own[k].shape)} expected); wrong encoder name?")
    norm: Any = getattr(vit, "norm", None)
    if norm is not None and hasattr(norm, "reset_parameters"):
        norm.reset_parameters()  # after the tap point; defined values in case the file lacks it
    missing, unexpected = vit.load_state_dict(flat, strict=False)
    missing = [k for k in missing if not k.startswith(UNUSED_PREFIXES)]
    if missing or unexpected:
        raise AdaslotError(f"{who} does not match the architecture (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}); wrong encoder name?")


def find_cached_weights(name: str, hf_hub_id: str | None, download_url: str | None) -> Path:
    """Look for weights in the local HF hub cache, then torch hub's checkpoints dir; never downloads."""
    tried = []
    if hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(hf_hub_id, fname)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
        tried.append(f"{constants.HF_HUB_CACHE}/models--{hf_hub_id.replace('/', '--')}")
    if download_url:
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / download_url.rsplit("/", 1)[-1]
        if hub_file.is_file():
            return hub_file
        tried.append(str(hub_file))
    how = f"download {download_url} and pass --encoder-weights FILE" if download_url else (
        "pass --encoder-weights FILE")
    if hf_hub_id:
        how += f", or put the timm weights (huggingface.co/{hf_hub_id}) in the HF hub cache"
    raise AdaslotError(f"no weights for encoder {name!r} (looked in {'; '.join(tried) or 'nowhere'}); {how}")
