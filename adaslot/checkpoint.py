"""Checkpoints: atomic save, checked load, model loading, keep-last-N rotation, RNG capture, warm start.

A checkpoint is one `torch.save`d dict (the payload):
  format="adaslot-checkpoint", version=1, stage (1|2), model_config (ModelConfig.to_dict()), encoder (name),
  feature_contract (dict or None), model (state_dict); optional: optimizer (the optimiser's state: the key
  keeps PyTorch's spelling, as in every checkpoint written so far), step, train_config, rng, loader.
Files are written to a temporary name in the same folder, fsynced and renamed, so a kill or a full disk never
leaves a half-written checkpoint under the real name. Payloads hold only tensors and plain Python values, so
they load with `torch.load(weights_only=True)` (no arbitrary pickle code runs on load). Loading checks the
CRC-32 that torch's zip format stores per entry (torch.load does not), so changed bytes are caught, and
`resume_point` steps back past damaged files of a run folder.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from adaslot.config import ModelConfig
from adaslot.config.base import names_where
from adaslot.errors import AdaslotError
from adaslot.files import atomic_path

if TYPE_CHECKING:
    from adaslot.model import AdaSlot

FORMAT = "adaslot-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("stage", "model_config", "encoder", "model")
LAST_NAME = "last.pt"  # -> the newest step checkpoint of a run folder
DAMAGED_SUFFIX = ".damaged"  # an unreadable step checkpoint, moved out of the run's rotation by resume_point
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def make_payload(
    *,
    stage: int,
    model_config: ModelConfig | dict[str, Any],
    encoder: str,
    model_state: dict[str, torch.Tensor],
    feature_contract: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A payload with the required keys filled in; `extra` adds optional keys (optimizer, step, ...)."""
    cfg = model_config.to_dict() if isinstance(model_config, ModelConfig) else dict(model_config)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "stage": int(stage),
        "model_config": cfg,
        "encoder": encoder,
        "feature_contract": feature_contract,
        "model": model_state,
    }
    payload.update(extra)
    return payload


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically (temp file in the same folder + fsync + rename)."""
    path = Path(path)
    if payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise ValueError("payload must carry format='adaslot-checkpoint' and version=1 (use make_payload)")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    with atomic_path(path, sync=True) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(payload, f)
        except RuntimeError as e:  # torch's zip writer wraps a failed write (disk full...) in a RuntimeError
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise
    return path


class UnreadableCheckpoint(AdaslotError):
    """A file that cannot be read as a checkpoint: cut short, bytes changed, or not a torch file at all."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def looks_like_lightning(path: str | os.PathLike) -> bool:
    """True for what an official AdaSlot (PyTorch Lightning) checkpoint looks like: a `.ckpt` file, or a torch
    zip whose pickle names a 'state_dict' and 'models.*' keys. Only such files get the convert hint."""
    path = Path(path)
    if path.suffix == ".ckpt":
        return True
    try:
        with zipfile.ZipFile(path) as z:
            pickle_name = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
            data = z.read(pickle_name) if pickle_name else b""
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False
    return b"state_dict" in data and b"models." in data


def _is_lightning_payload(obj: Any) -> bool:
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    keys = sd if isinstance(sd, dict) else obj if isinstance(obj, dict) else {}
    return any(str(k).startswith("models.") for k in keys)


def _damage(f: Any) -> str | None:
    """Why the torch file open as `f` cannot be trusted ("is cut short ..."), or None."""
    head = f.read(4)
    f.seek(0)
    if head != b"PK\x03\x04":
        return None  # not torch's zip format: torch.load says what it is
    try:
        with zipfile.ZipFile(f) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError):
        return "is cut short (no zip directory at its end)"
    return f"has changed bytes (checksum mismatch in {bad})" if bad else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a payload; anything but a version-1 adaslot checkpoint -> one-line AdaslotError
    (UnreadableCheckpoint when the file cannot be read). An OSError (permission, I/O) is left to the CLI."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableCheckpoint(f"checkpoint {path} does not exist", "is gone")
    hint = ("; it looks like an official AdaSlot (Lightning) checkpoint: convert it first with "
            "`adaslot convert-official`")
    with open(path, "rb") as f:
        reason = _damage(f)
    if reason is None:
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # torch raises several types for foreign/corrupt files
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = f"cannot be read by torch.load ({text.split('. This is an internal miniz')[0][:160]})"
    if reason is not None:
        raise UnreadableCheckpoint(f"{path} is not an adaslot checkpoint or is damaged: it {reason}"
                                   + (hint if looks_like_lightning(path) else ""), reason)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AdaslotError(f"{path} is not an adaslot checkpoint (no format='{FORMAT}' marker)"
                           + (hint if _is_lightning_payload(payload) or looks_like_lightning(path) else ""))
    if payload.get("version") != VERSION:
        raise AdaslotError(
            f"{path} is an adaslot checkpoint of format version {payload.get('version')!r}; this adaslot "
            f"reads version {VERSION}: use the adaslot release that wrote it"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise AdaslotError(f"{path} is an incomplete adaslot checkpoint (missing {', '.join(missing)})")
    return payload


def recorded_model_config(payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> ModelConfig:
    """A payload's ModelConfig, checked. A checkpoint without a recorded inference method (made before it
    was recorded) loads as "no merging"; a setting or a value this adaslot does not know (e.g. a keep rule
    of a newer release) is one line naming it."""
    d = dict(payload["model_config"])
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise AdaslotError(f"{path} records the model setting {unknown[0]!r}={d[unknown[0]]!r}, which this "
                           "adaslot does not know: use the adaslot release that wrote it")
    cfg = ModelConfig.from_dict(d)
    for f in dataclasses.fields(ModelConfig):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise AdaslotError(f"{path} records the inference method {f.name}={getattr(cfg, f.name)!r}, "
                               "which "
                               f"this adaslot does not know (it knows {', '.join(map(str, choices))})")
    try:
        return cfg.validate()
    except AdaslotError as e:
        raise AdaslotError(f"{path} records a model setting this adaslot does not accept: {e}") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               method: dict[str, Any] | None = None) -> tuple[AdaSlot, dict[str, Any]]:
    """Build a checkpoint's AdaSlot, load its weights, move to `device`, eval mode -> (model, payload).

    The model runs the inference method the checkpoint recorded (docs/adaptive.md), with `method`
    (`overridable_method_fields()` name -> value, None: as recorded) overriding it; `model.cfg` holds the
    method that runs."""
    from adaslot.model import AdaSlot

    payload = load_checkpoint(path)
    cfg = recorded_model_config(payload, path)
    model = AdaSlot(cfg)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise AdaslotError(f"{path}: weights do not fit its own model_config ({first})") from None
    if method:
        model.cfg = cfg.with_method(method, str(path))
    model.to(device).eval()
    return model, payload


def check_feature_shape(contract: dict[str, Any], payload: dict[str, Any]) -> None:
    """Refuse features of another token count or width than the checkpoint's model takes (one line)."""
    mcfg = ModelConfig.from_dict(payload["model_config"], strict=False)
    if (contract.get("num_tokens"), contract.get("feature_dim")) != (mcfg.num_tokens, mcfg.feature_dim):
        raise AdaslotError(f"the encoder gives {contract.get('num_tokens')}x{contract.get('feature_dim')} "
                           f"features, the checkpoint's model expects {mcfg.num_tokens}x{mcfg.feature_dim}")


# ---- run folders: step-numbered files, newest = resume point, keep the last N ----

def checkpoint_path(ckpt_dir: str | os.PathLike, step: int) -> Path:
    """`ckpt_dir/step-00001000.pt`: zero-padded so names sort by step."""
    return Path(ckpt_dir) / f"step-{int(step):08d}.pt"


def step_of(path: str | os.PathLike) -> int:
    """The step of a `step-00001000.pt` file name."""
    m = _STEP_FILE.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a step checkpoint name")
    return int(m.group(1))


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete step checkpoints in `ckpt_dir`, oldest first (temp files are ignored)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in `ckpt_dir`, or None."""
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1] if ckpts else None


def update_last(ckpt_dir: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Point `ckpt_dir/last.pt` at `target` (a relative symlink, replaced atomically; a copy where the
    filesystem has no symlinks), so commands can name the newest checkpoint of a run without its step."""
    with atomic_path(Path(ckpt_dir) / LAST_NAME) as tmp:
        try:
            os.symlink(Path(target).name, tmp)
        except OSError:
            shutil.copyfile(target, tmp)
    return Path(ckpt_dir) / LAST_NAME


def resume_point(ckpt_dir: str | os.PathLike, is_main: bool = True
                 ) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest readable checkpoint of a run folder -> (path, payload); (None, None) when there is none.

    Newer step files that cannot be read (cut short by a full disk, bytes changed) are stepped over: the main
    process renames each to NAME.damaged (kept for a look, out of rotation), points last.pt at the resume
    point and says so in one line on stderr. If no checkpoint can be read, stops naming them."""
    damaged: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            payload = load_checkpoint(path)
        except UnreadableCheckpoint as e:
            damaged.append((path, e.reason))
            continue
        if damaged and is_main:
            for p, _ in damaged:
                os.replace(p, p.with_name(p.name + DAMAGED_SUFFIX))
            update_last(ckpt_dir, path)
            names = "; ".join(f"{p.name} {why}" for p, why in damaged)
            kept = ", ".join(p.name + DAMAGED_SUFFIX for p, _ in damaged)
            print(f"adaslot: warning: {names}; kept as {kept}, resuming from {path.name}, the newest "
                  "readable checkpoint", file=sys.stderr)
        return path, payload
    if damaged:
        names = ", ".join(f"{p.name} {why}" for p, why in damaged)
        raise AdaslotError(f"no checkpoint in {ckpt_dir} can be read: {names}; move them aside to start the "
                           "run again, or use a new --out")
    return None, None


def kept_note(ckpt_dir: str | os.PathLike) -> str:
    """What a run folder keeps, for the one-line error of a fault (adaslot/faults.py)."""
    ckpts = list_checkpoints(ckpt_dir)
    if not ckpts:
        return "no checkpoint was written yet"
    return f"the last good checkpoint is step {step_of(ckpts[-1])} ({ckpts[-1]})"


def rotate_checkpoints(ckpt_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all); returns the removed files."""
    if keep <= 0:
        return []
    ckpts = list_checkpoints(ckpt_dir)
    removed = ckpts[:-keep] if len(ckpts) > keep else []
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


# ---- RNG state (exact resume) ----

def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states, as tensors / plain values (weights_only-safe)."""
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())  # the legacy tuple form
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np_state
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---- warm start (stage 1 -> stage 2) ----

def check_warmstart(payload: dict[str, Any], cfg: ModelConfig, source: str = "checkpoint") -> None:
    """Refuse (one line) a checkpoint that cannot warm-start a stage-2 model of config `cfg`."""
    if payload.get("stage") != 1:
        raise AdaslotError(
            f"--warmstart {source} is a stage-{payload.get('stage')} checkpoint; stage 2 warm-starts from a "
            "stage-1 checkpoint (to continue a stage-2 run, rerun its command with the same --out)"
        )
    src = ModelConfig.from_dict(payload["model_config"])
    free = names_where(ModelConfig, "warmstart_free")
    diffs = [
        f"{f.name}={getattr(src, f.name)!r} (this model: {getattr(cfg, f.name)!r})"
        for f in dataclasses.fields(ModelConfig)
        if f.name not in free and getattr(src, f.name) != getattr(cfg, f.name)
    ]
    if diffs:
        raise AdaslotError(
            f"--warmstart {source} has a different model shape: {'; '.join(diffs)}; use the same --preset "
            "and size flags as stage 1"
        )


def warm_start(model: AdaSlot, payload: dict[str, Any], cfg: ModelConfig,
               source: str = "checkpoint") -> list[str]:
    """Load every stage-1 tensor into the stage-2 `model`; only the score network keeps its fresh init.

    docs/method.md#training: slot init mu/sigma, input MLP, slot attention, GRU, residual MLP, decoder and
    positional embedding all come from stage 1. Refuses, with a one-line reason, a checkpoint of another
    stage or shape (the tensor-level checks are the model's `load_stage1_into_stage2`). Returns the names
    left at fresh init.
    """
    from adaslot.model import load_stage1_into_stage2

    check_warmstart(payload, cfg, source)
    try:
        return load_stage1_into_stage2(model, payload["model"])
    except AdaslotError as e:
        raise AdaslotError(f"--warmstart {source}: {e}") from None
