"""`adaslot export STORE out.h5`: the same arrays and attributes as an HDF5 file (h5py, chunked).

HDF5 layout: datasets `features` [N, V, T, D] float16 (one chunk per sample and view, as format-2 stores,
so a training sample reads one view; uncompressed, no checksums),
`image_ids` [N] int64, `status` [N] uint8; the zarr attributes as one JSON string in the file attribute
`adaslot_attrs_json`, plus flat attributes (format, encoder, complete) for tools that only show flat ones.
`open_store("out.h5")` reads it like the zarr store. Written to `out.h5.partial`, renamed when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaslot.errors import AdaslotError
from adaslot.files import atomic_path
from adaslot.store import open_store


def export_hdf5(store_path: str, out: str, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Copy a complete store to HDF5, chunk by chunk (bounded memory). Returns {out, bytes, rows}."""
    import h5py

    store = open_store(store_path)
    if not store.complete:
        done, total = store.shards_done()
        raise AdaslotError(f"{store_path} is incomplete ({done}/{total} shards); finish it with the same "
                           f"`adaslot cache-features` command before exporting")
    out_p = Path(out)
    if out_p.is_dir():
        raise AdaslotError(f"{out} is a folder; give the output file name, e.g. {out_p / 'features.h5'}")
    if out_p.exists() and not overwrite:
        raise AdaslotError(f"{out} exists; use --overwrite to replace it")
    n, v, t, d = store.features.shape
    with atomic_path(out_p) as tmp, h5py.File(tmp, "w") as f:  # never a half-written export
        feats = f.create_dataset("features", shape=(n, v, t, d), dtype="float16",
                                 chunks=(1, 1, t, d))
        for a, b in store.chunk_bounds():
            feats[a:b] = store.read(a, b)
        f.create_dataset("image_ids", data=store.raw_image_ids)
        f.create_dataset("status", data=store.status)
        # the layout as read (HDF5 chunks differ from the zarr ones, so it must not be inferred from them)
        layout = {"chunk_samples": store.chunk_samples, "shard_samples": store.shard_samples}
        f.attrs["adaslot_attrs_json"] = json.dumps({**store.attrs, "layout": layout})
        f.attrs["format"] = str(store.attrs.get("format"))
        f.attrs["encoder"] = str(store.contract.get("encoder"))
        f.attrs["complete"] = True
    return {"out": str(out_p), "bytes": out_p.stat().st_size, "rows": int(n)}
