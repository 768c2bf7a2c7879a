"""`adaslot cache-verify STORE --full`: read every chunk of a store and check its checksum (no encoder).

Format 2 stores carry a crc32c per features chunk (one per sample and view), per shard index, and per
status / image_ids chunk; format 1 stores only the shard indexes (zarr's default). The result lists each
damaged file and the shard it belongs to; `adaslot cache-features ... --repair` re-encodes exactly those
shards (adaslot/store/writer.py).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from adaslot.errors import AdaslotError
from adaslot.progress import progress_bar
from adaslot.store import STATUS_NOT_WRITTEN, FeatureStore, open_store, repair_hint, shard_done_mask
from adaslot.store.layout import Damage


def check_store(path: str, progress: bool = False) -> dict[str, Any]:
    """Check every checksum of the zarr store at `path` (progress: a progress bar over its shards).

    -> {"store", "format_version", "damaged": [{"file", "what", "shard" (None: not a shard's file)}],
    "shards": sorted damaged shard indices, "shards_checked", "bytes", "seconds", "ok", "repair": the
    command that repairs it}.
    """
    t0 = time.perf_counter()
    store = open_store(path, strict=False)  # damaged status / image_ids chunks are listed, not raised
    if store.backend != "zarr":
        raise AdaslotError(f"{path} is an HDF5 export, which carries no checksums; check the zarr store it "
                           f"was exported from")
    s = store.shard_samples
    damaged = [_entry(d) for d in store.damage]
    done = shard_done_mask(store.status, s)
    total, nbytes = int(done.size), 0
    with progress_bar("checking", progress, unit="shard") as bar:
        task = bar.add_task("check", total=total)
        for k in range(total):
            d, n = _check_shard(store, k, bool(done[k]))
            nbytes += n
            if d is not None:
                damaged.append({"file": d.path, "what": d.what, "shard": k})
            bar.update(task, advance=1)
    store.close()
    shards = sorted({d["shard"] for d in damaged if d["shard"] is not None})
    return {"store": store.path, "format_version": store.format_version, "damaged": damaged, "shards": shards,
            "shards_checked": total, "bytes": nbytes, "seconds": time.perf_counter() - t0,
            "ok": not damaged, "repair": repair_hint(store.path, store.attrs)}


def report_checks(r: dict[str, Any]) -> None:
    """Print `check_store`'s result: one line per damaged file, then a summary; damage is an AdaslotError
    (one line with the repair command, exit 2)."""
    for d in r["damaged"]:
        print(f"damaged: {d['file']}: {d['what']}")
    what = ("every chunk, shard index, status and image_ids checksum" if r["format_version"] >= 2 else
            "the shard indexes only (a format-1 store: its chunks carry no checksums; re-cache it with "
            "--overwrite to get them)")
    gib = r["bytes"] / 2**30
    print(f"checked {r['shards_checked']} shards, {gib:.2f} GiB in {r['seconds']:.1f} s: {what}")
    if not r["ok"]:
        first, more = r["damaged"][0], len(r["damaged"]) - 1
        others = f" and {more} more damaged file{'s' * (more > 1)} (listed above)" if more else ""
        shards = ", ".join(map(str, r["shards"])) or "none"
        raise AdaslotError(f"feature store {r['store']} is damaged: {first['file']}: {first['what']}{others} "
                           f"(shards: {shards}); {r['repair']}")
    print("OK: no damage found")


def _entry(d: Damage) -> dict[str, Any]:
    """A damaged status chunk belongs to its shard (status chunks are one per shard); image_ids to none."""
    shard = None
    if "/status/c/" in d.path:
        shard = int(d.path.rsplit("/", 1)[1])
    return {"file": d.path, "what": d.what, "shard": shard}


def _check_shard(store: FeatureStore, k: int, done: bool) -> tuple[Damage | None, int]:
    """-> (the damage found in shard k's features file or None, bytes read)."""
    direct = store.direct
    s = store.shard_samples
    if direct is None:  # remote store: zarr-python checks the checksums as it reads
        a, b = k * s, min((k + 1) * s, store.num_samples)
        try:
            data = np.asarray(store.features[a:b])
        except ValueError as e:
            return Damage(f"{store.path}/features/c/{k}/0/0/0", str(e).split(".")[0].lower()), 0
        return None, data.nbytes
    path = direct.shard_path(k)
    if not path.exists():
        rows = store.status[k * s:(k + 1) * s]
        if done and (rows != STATUS_NOT_WRITTEN).any():
            return Damage(path, "missing (its status says it was written)"), 0
        return None, 0
    n, problem = direct.check_shard(k)
    return (Damage(path, problem) if problem else None), n
