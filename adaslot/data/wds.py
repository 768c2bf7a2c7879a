"""Webdataset shards (plain tar files) read by member name with Python's `tarfile`, and written.

A sample is the group of members sharing a key: `KEY.FIELD` (the key is the member name up to the first dot
of its base name, as webdataset groups them). A reader indexes the shards once (member headers only), then
reads only the members it names: extra members (depth, flow, ...) are never read or decoded. `FIELD.gz` is
gzip-compressed `FIELD`; `.npy` members are numpy's own format (no pickle).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class MemberError(ValueError):
    """A member that cannot be used. `reason`: truncated, bad-gzip or unreadable."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason} ({detail})")


@dataclass
class TarSample:
    """One sample of a shard: key and {member suffix: (data offset, size)} (suffix e.g. "video.npy.gz")."""

    shard: str
    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)

    def find(self, name: str) -> str | None:
        """The member suffix holding field `name` (`name`, `name.gz`, `name.npy`, `name.npy.gz`), or None."""
        for suffix in (name, f"{name}.gz", f"{name}.npy", f"{name}.npy.gz"):
            if suffix in self.members:
                return suffix
        return None


def split_name(name: str) -> tuple[str, str]:
    """Member name -> (key, suffix): "dir/0000001.video.npy.gz" -> ("dir/0000001", "video.npy.gz")."""
    head, _, base = name.rpartition("/")
    key, _, suffix = base.partition(".")
    return (f"{head}/{key}" if head else key), suffix


def numeric_key(sample: TarSample) -> int | None:
    """The number a sample's key names (`000123` or `dir/000123` -> 123); None when it is not a number."""
    try:
        return int(Path(sample.key).name)
    except ValueError:
        return None


def index_shard(path: str | Path) -> tuple[list[TarSample], MemberError | None]:
    """The samples of one tar shard in file order (headers only) and the error that cut the listing short
    (a truncated tar: the samples before it are kept, a sample whose data runs past the end is dropped)."""
    path = Path(path)
    size = path.stat().st_size
    samples: dict[str, TarSample] = {}
    error = None
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                if m.offset_data + m.size > size:
                    error = MemberError("truncated", f"{path.name}: member {m.name} runs past the end of the "
                                                     "file")
                    break
                key, suffix = split_name(m.name)
                samples.setdefault(key, TarSample(str(path), key)).members[suffix] = (m.offset_data, m.size)
    except (tarfile.ReadError, EOFError, OSError) as e:
        error = MemberError("truncated", f"{path.name}: {e}")
    out = list(samples.values())
    if error is not None and out:
        last = out[-1]  # its other members may lie after the cut: do not trust a half-listed sample
        out = out[:-1]
        error = MemberError(error.reason, f"{error.detail}; sample {last.key} and later ones lost")
    return out, error


def read_member(sample: TarSample, suffix: str) -> bytes:
    """Raw bytes of a member (gzip undone when the suffix ends in .gz)."""
    offset, size = sample.members[suffix]
    with open(sample.shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) < size:
        raise MemberError("truncated", f"{Path(sample.shard).name}: {sample.key}.{suffix} cut short")
    if suffix.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise MemberError("bad-gzip", f"{sample.key}.{suffix}: {e}") from None
    return data


def read_array(sample: TarSample, suffix: str) -> np.ndarray:
    """A `.npy` / `.npy.gz` member as an array (no pickle)."""
    data = read_member(sample, suffix)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise MemberError("unreadable", f"{sample.key}.{suffix}: {e}") from None


def read_npy_shape(sample: TarSample, suffix: str) -> tuple[int, ...]:
    """The shape in a `.npy[.gz]` member's header, decompressing only its first bytes."""
    offset, size = sample.members[suffix]
    with open(sample.shard, "rb") as f:
        f.seek(offset)
        head = f.read(min(size, 4096))
    if suffix.endswith(".gz"):
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1024)
        except zlib.error as e:
            raise MemberError("bad-gzip", f"{sample.key}.{suffix}: {e}") from None
    try:
        buf = io.BytesIO(head)
        version = np.lib.format.read_magic(buf)
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _order, _dtype = read(buf)  # the header only
    except (ValueError, OSError, EOFError) as e:
        raise MemberError("unreadable", f"{sample.key}.{suffix}: {e}") from None
    return tuple(int(v) for v in shape)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def gzip_bytes(data: bytes, level: int = 5) -> bytes:
    """Gzip with a fixed header (mtime 0), so a shard's bytes are a function of its samples."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def write_shard(path: str | Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """Write a tar of samples [(key, {suffix: bytes})], members in the given order (deterministic headers)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))


def shard_paths(folder: Path) -> list[Path]:
    """The `shard-*.tar` files of a split folder, in name order."""
    return sorted(folder.glob("shard-*.tar"))


def describe(sample: TarSample) -> dict[str, Any]:
    return {"shard": Path(sample.shard).name, "key": sample.key, "members": sorted(sample.members)}
