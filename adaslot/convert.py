"""Convert an official AdaSlot / DINOSAUR checkpoint (PyTorch Lightning, `ocl` framework) into an adaslot
checkpoint, without the official stack.

The official `state_dict` keys are `models.<module>...`; our module names were chosen so the mapping is a
prefix rename (table `RENAMES`). The frozen encoder (`models.feature_extractor.*`) is ignored: adaslot takes
the encoder from its registry. The model config is read off the tensor shapes; only the slot count K is not
stored in any tensor (the slot init is shared by all slots), so it comes from the matching preset or
`num_slots`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaslot.config import PRESETS, ModelConfig, model_config_for
from adaslot.errors import AdaslotError

# official prefix -> adaslot prefix; most specific first (the first match wins).
RENAMES: list[tuple[str, str]] = [
    ("models.conditioning.", "slot_attention."),  # slots_mu, slots_logsigma
    ("models.perceptual_grouping.positional_embedding.layers.1.", "input_mlp."),
    ("models.perceptual_grouping.slot_attention.ff_mlp.module.", "slot_attention.mlp."),
    ("models.perceptual_grouping.slot_attention.single_gumbel_score_network.", "selector.net."),
    ("models.perceptual_grouping.slot_attention.", "slot_attention."),
    ("models.object_decoder.decoder.", "decoder.mlp."),
    ("models.object_decoder.", "decoder."),  # pos_embed
]
# Not part of the slot model: the frozen encoder (from the registry instead) and metric states.
IGNORED_PREFIXES = ("models.feature_extractor.", "training_metrics.", "evaluation_metrics.")
SCORE_NET = "models.perceptual_grouping.slot_attention.single_gumbel_score_network."
_IN = "models.perceptual_grouping.positional_embedding.layers.1."
_FF = "models.perceptual_grouping.slot_attention.ff_mlp.module."
_DEC = "models.object_decoder.decoder."


@dataclass
class Conversion:
    """Result of `convert_state_dict`: our state dict plus what was mapped and ignored."""

    stage: int
    preset: str | None
    encoder: str | None
    model_config: ModelConfig
    state: dict[str, torch.Tensor]
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (official key, adaslot key)
    ignored: list[str] = field(default_factory=list)
    step: int | None = None


def to_adaslot_key(key: str) -> str | None:
    """The adaslot name of an official key, or None if no rename applies."""
    for old, new in RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def to_official_key(key: str) -> str:
    """Inverse of `to_adaslot_key` for our model's keys (used to name missing tensors in errors)."""
    for old, new in RENAMES:
        if key.startswith(new) and to_adaslot_key(old + key[len(new):]) == key:
            return old + key[len(new):]
    return key


def read_official(path: str | os.PathLike,
                  allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], int | None]:
    """Read a Lightning checkpoint (or a bare state dict) -> (state_dict, global_step or None).

    Loads with `weights_only=True` (no code from the file runs); `allow_pickle=True` lifts that for trusted
    files whose extra entries hold arbitrary Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise AdaslotError(f"official checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise AdaslotError(
            f"{path} holds Python objects that the safe loader refuses ({first}); if you trust the file, "
            "rerun with --allow-pickle") from None
    except Exception as e:  # torch raises several types for foreign/corrupt files
        raise AdaslotError(f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: "
                           f"{str(e).strip()[:160]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        step = obj.get("global_step")
        return dict(obj["state_dict"]), int(step) if isinstance(step, int) else None
    if isinstance(obj, dict) and any(str(k).startswith("models.") for k in obj):
        return dict(obj), None
    if isinstance(obj, dict) and obj.get("format") == "adaslot-checkpoint":
        raise AdaslotError(f"{path} is already an adaslot checkpoint; use it directly")
    raise AdaslotError(f"{path} is not an official AdaSlot checkpoint (no 'state_dict' with 'models.*' keys)")


def _get(sd: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise AdaslotError(f"official checkpoint lacks {key!r}; is this an AdaSlot/DINOSAUR feature-"
                           "reconstruction checkpoint with an MLP decoder?")
    return sd[key]


def infer_config(sd: dict[str, torch.Tensor], stage: int, num_slots: int | None = None,
                 preset: str | None = None) -> tuple[ModelConfig, str | None, str | None]:
    """ModelConfig from the tensor shapes -> (config, matching preset name or None, its encoder or None)."""
    slot_dim = _get(sd, "models.conditioning.slots_mu").shape[-1]
    n_dec = sum(1 for k in sd if k.startswith(_DEC) and k.endswith(".weight"))
    if n_dec < 1:
        raise AdaslotError(f"official checkpoint lacks {_DEC + '0.weight'!r} (MLP decoder layers)")
    dec = [_get(sd, f"{_DEC}{2 * i}.weight").shape[0] for i in range(n_dec)]
    # The settings the weights' shapes give, compared with the presets (num_slots and adaptive are not in the
    # weights).
    shape: dict[str, Any] = dict(
        feature_dim=_get(sd, _IN + "0.weight").shape[0],
        num_tokens=_get(sd, "models.object_decoder.pos_embed").shape[1],
        slot_dim=slot_dim,
        input_mlp_hidden=_get(sd, _IN + "1.weight").shape[0],
        slot_mlp_hidden=_get(sd, _FF + "1.weight").shape[0],
        decoder_hidden=tuple(dec[:-1]),
    )
    cfg = ModelConfig(**shape, adaptive=stage == 2)
    if stage == 2:
        cfg = dataclasses.replace(cfg, selector_hidden=_get(sd, SCORE_NET + "1.weight").shape[0])
    if dec[-1] != cfg.feature_dim + 1:
        raise AdaslotError(f"{_DEC}{2 * (n_dec - 1)}.weight has {dec[-1]} outputs, expected feature dim + 1"
                           f" = {cfg.feature_dim + 1}")
    if preset is not None:
        if preset not in PRESETS:
            raise AdaslotError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        candidates = [preset]
        want = model_config_for(preset, stage)  # D and T follow the preset's encoder
        bad = {f: (getattr(want, f), v) for f, v in shape.items() if getattr(want, f) != v}
        if bad:
            raise AdaslotError(f"checkpoint shapes do not fit preset {preset!r}: "
                               + ", ".join(f"{f} {v} (preset {p})" for f, (p, v) in bad.items()))
    else:
        candidates = [n for n in PRESETS
                      if all(getattr(model_config_for(n, stage), f) == v for f, v in shape.items())]
    name = candidates[0] if len(candidates) == 1 else None
    if num_slots is None:
        ks = {PRESETS[n].num_slots_stage1 if stage == 1 else PRESETS[n].num_slots_stage2 for n in candidates}
        if len(ks) != 1:
            which = f"presets {', '.join(candidates)} fit" if candidates else "no preset fits these shapes"
            raise AdaslotError(f"the slot count K is not stored in the weights and {which}; pass "
                               "--num-slots K (and --preset NAME)")
        num_slots = ks.pop()
    if stage == 1 and name is not None:  # no score network in the weights: keep the preset's size
        cfg = dataclasses.replace(cfg, selector_hidden=PRESETS[name].model.selector_hidden)
    cfg = dataclasses.replace(cfg, num_slots=int(num_slots))
    return cfg, name, PRESETS[name].encoder if name else None


def convert_state_dict(sd: dict[str, Any], stage: int | None = None, num_slots: int | None = None,
                       preset: str | None = None) -> Conversion:
    """Map an official state dict onto a freshly built AdaSlot; every check happens here, before any write.

    stage None: 2 if the Gumbel score network is present, else 1. stage 1 on a stage-2 checkpoint drops the
    score network (reported as ignored); stage 2 on a stage-1 checkpoint is an error (use train --warmstart).
    """
    from adaslot.model import AdaSlot

    has_score = any(k.startswith(SCORE_NET) for k in sd)
    if stage is None:
        stage = 2 if has_score else 1
    if stage not in (1, 2):
        raise AdaslotError(f"--stage must be 1 or 2, got {stage}")
    if stage == 2 and not has_score:
        raise AdaslotError("this is a fixed-K (stage-1 / DINOSAUR) checkpoint without "
                           f"{SCORE_NET + '*'!r}; convert it with --stage 1 and warm-start stage 2 from it")
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise AdaslotError(f"official state_dict entry {key!r} is not a tensor")
    cfg, name, encoder = infer_config(sd, stage, num_slots, preset)
    model = AdaSlot(cfg)
    own = model.state_dict()
    conv = Conversion(stage=stage, preset=name, encoder=encoder, model_config=cfg, state={})
    for key, value in sd.items():
        if key.startswith(IGNORED_PREFIXES) or (stage == 1 and key.startswith(SCORE_NET)):
            conv.ignored.append(key)
            continue
        new = to_adaslot_key(key)
        if new is None or new not in own:
            raise AdaslotError(f"official checkpoint has a tensor adaslot does not know: {key!r} (a "
                               "different model variant?); nothing was written")
        if tuple(value.shape) != tuple(own[new].shape):
            raise AdaslotError(f"{key!r} has shape {tuple(value.shape)}, the inferred model expects "
                               f"{tuple(own[new].shape)} (as {new!r}); nothing was written")
        conv.state[new] = value.detach().to(own[new].dtype).contiguous().clone()
        conv.mapped.append((key, new))
    missing = [k for k in own if k not in conv.state]
    if missing:
        raise AdaslotError(f"official checkpoint lacks {to_official_key(missing[0])!r} "
                           f"({len(missing)} tensor(s) missing); nothing was written")
    model.load_state_dict(conv.state, strict=True)  # cannot fail after the checks above
    return conv


def convert_official(ckpt: str | os.PathLike, out: str | os.PathLike, stage: int | None = None,
                     num_slots: int | None = None, preset: str | None = None, encoder: str | None = None,
                     allow_pickle: bool = False) -> Conversion:
    """Read `ckpt`, convert, and write an adaslot checkpoint to `out` (atomically; nothing on error)."""
    from adaslot.checkpoint import make_payload, save_checkpoint

    sd, step = read_official(ckpt, allow_pickle)
    conv = convert_state_dict(sd, stage, num_slots, preset)
    conv.step = step
    conv.encoder = encoder or conv.encoder
    if conv.encoder is None:
        raise AdaslotError("no preset matches these shapes, so the encoder is unknown; pass --encoder NAME")
    payload = make_payload(
        stage=conv.stage, model_config=conv.model_config, encoder=conv.encoder, model_state=conv.state,
        feature_contract=None,
        converted_from={"path": str(Path(ckpt).resolve()), "format": "ocl-lightning", "global_step": step,
                        "preset": conv.preset, "ignored": len(conv.ignored)},
    )
    save_checkpoint(out, payload)
    return conv
