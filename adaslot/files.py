"""Small file helpers used by every command: content hashing, atomic writing and JSON (one copy of each)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from adaslot.errors import AdaslotError


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def json_safe(x: Any) -> Any:
    """Plain JSON values: NaN / inf -> None, tuples -> lists, numpy scalars -> Python numbers, keys -> str."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    return x


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, sync: bool = False) -> Iterator[Path]:
    """Yield a temporary name beside `path` to write to; rename it to `path` when the block succeeds, remove
    it when it fails (parents are created). So a full disk, an error or a kill never leaves a half-written
    file under the real name. sync: fsync the file and the rename (checkpoints). A failed write() names no
    file; the OSError is given `path`, so the one-line error says which file (adaslot/faults.py)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(tmp):  # left by a killed process that had the same pid
            tmp.unlink()
        yield tmp
        if sync:
            _fsync(tmp)
        os.replace(tmp, path)
        if sync:
            _fsync(path.parent)
    except OSError as e:
        if e.filename is None or e.filename == str(tmp):
            e.filename, e.filename2 = str(path), None
        raise
    finally:
        if os.path.lexists(tmp):
            with contextlib.suppress(OSError):  # never hide the error that got us here
                tmp.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically (`atomic_path`); NaN / inf become null (valid JSON)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(obj), indent=2, default=str) + "\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder at `out` atomically: yields an empty temp folder beside it, which replaces `out` when
    the block ends normally and is removed when it raises. A non-empty `out` is refused (one line) unless
    `overwrite`."""
    out = Path(out)
    if (out.is_file() or (out.is_dir() and any(out.iterdir()))) and not overwrite:
        raise AdaslotError(f"{out} already exists and is not empty; pass --overwrite or choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
