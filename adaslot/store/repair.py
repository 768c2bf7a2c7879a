"""`adaslot cache-features ... --repair`: make a damaged store whole again, with an undamaged store's bytes.

Before the normal (resumable) caching pass, `repair_prepare`:
1. rewrites every zarr.json that does not parse from a fresh empty store made with the same settings (the
   metadata is a function of them);
2. checks every checksum (adaslot/store/checksums.py);
3. marks the store incomplete and, for each damaged shard, deletes its status chunk (the shard's completion
   marker) and then its features file; a damaged image_ids chunk is rewritten.
The caching pass then finds exactly those shards missing and re-encodes them; shards are a function of the
shard alone (adaslot/store/writer.py), so the repaired store has the bytes of an undamaged one. A repair
killed half-way leaves an incomplete store that the same command finishes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from adaslot.config import CacheConfig
from adaslot.errors import AdaslotError
from adaslot.files import atomic_path
from adaslot.store.checksums import check_store
from adaslot.store.create import check_resumable, create_store

METADATA = ("", "features", "status", "image_ids")  # the store's zarr.json files, root first


def repair_prepare(cfg: CacheConfig, settings: dict[str, Any], image_ids: np.ndarray, views: int, tokens: int,
                   dim: int, source: dict[str, Any]) -> dict[str, Any]:
    """Steps 1-3 of the module doc on `cfg.out`; prints what it found -> {"metadata", "damaged", "shards"}."""
    import zarr

    out = Path(cfg.out)
    if "://" in cfg.out:
        raise AdaslotError("--repair works on a local store; copy it to a local disk first")
    if not (out / "zarr.json").is_file():
        raise AdaslotError(f"{out} is not a feature store: nothing to repair (drop --repair to create it)")
    attrs = _read(out / "zarr.json")
    if attrs is not None:  # refuse other settings before touching anything
        attrs = attrs.get("attributes", {})
        check_resumable(cfg, attrs, settings)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.repair-") as tmp:
        fresh = Path(tmp) / "fresh.zarr"
        create_store(zarr.open_group(str(fresh), mode="w"), settings, image_ids, views, tokens, dim, source)
        broken = [name for name in METADATA if _read(out / name / "zarr.json") is None]
        for name in METADATA[1:]:
            mine = _read(out / name / "zarr.json")
            if attrs is None and mine is not None and mine != _read(fresh / name / "zarr.json"):
                raise AdaslotError(f"{out / name / 'zarr.json'} does not match the settings given; rerun "
                                   f"--repair with the flags that made the store")
        if broken and attrs is not None and attrs.get("format_version", 1) < 2:
            raise AdaslotError(f"{out / broken[0] / 'zarr.json'} is damaged and {out} is a format-1 store, "
                               f"whose metadata is not rebuilt: recreate it with --overwrite")
        fixed = []
        for name in broken:
            _replace(fresh / name / "zarr.json", out / name / "zarr.json")
            fixed.append(str(out / name / "zarr.json"))
        report = check_store(str(out))
        damaged = report["damaged"]
        if fixed or damaged:
            group = zarr.open_group(str(out), mode="r+")
            group.attrs["complete"] = False  # first: from here on the store reads as unfinished
        for d in damaged:
            if d["shard"] is None:  # image_ids: known from the dataset, as when the store was created
                _replace(fresh / "image_ids" / "c" / "0", out / "image_ids" / "c" / "0")
        for k in report["shards"]:
            (out / "status" / "c" / str(k)).unlink(missing_ok=True)  # the marker first, then the data
            (out / "features" / "c" / str(k) / "0" / "0" / "0").unlink(missing_ok=True)
    if cfg.progress:
        for f in fixed:
            print(f"repair: {f}: not valid JSON, rewritten")
        for d in damaged:
            print(f"repair: {d['file']}: {d['what']}")
        print(f"repair: {len(report['shards'])} damaged shard(s) to re-encode" if report["shards"] else
              "repair: every checksum is fine")
    return {"metadata": fixed, "damaged": damaged, "shards": report["shards"]}


def _read(path: Path) -> dict[str, Any] | None:
    """A zarr.json's content; None if it is missing or does not parse."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _replace(src: Path, dst: Path) -> None:
    """Copy src over dst atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
