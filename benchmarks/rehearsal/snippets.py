"""The probes of the rehearsal that are not commands, run as `python -c SNIPPET ARGS` so each is measured
as its own process: a loader over one epoch of a store, and opening / indexing a store of COCO's N rows."""

LOADER_SNIPPET = """
import sys, time, json, resource
t0 = time.perf_counter()
from adaslot.store.loader import FeatureLoader
loader = FeatureLoader(sys.argv[1], int(sys.argv[2]), seed=0)
n = loader.epoch_length(0)
steps, first, seen = 0, None, 0
for feats, rows in loader:
    if first is None:
        first = time.perf_counter() - t0
    seen += rows.numel()
    steps += 1
    if seen >= n:
        break
dt = time.perf_counter() - t0
print(json.dumps({"samples": seen, "steps": steps, "first_batch_s": first, "seconds": dt,
                  "samples_per_s": seen / (dt - first)}))
"""


INDEX_SNIPPET = """
import sys, time, json
t0 = time.perf_counter()
import numpy as np, zarr
from adaslot.store import STORE_FORMAT, STORE_VERSION, FeatureStore, open_store, shard_done_mask
from adaslot.store.layout import create_arrays, for_writing
from adaslot.store.loader import FeatureLoader
t_import = time.perf_counter() - t0
out, n = sys.argv[1], int(sys.argv[2])
root = zarr.open_group(out, mode="w")
create_arrays(root, np.arange(1, n + 1), 2, 196, 768, 512)
for_writing(root, "status")[:] = 1
root.attrs.update({"format": STORE_FORMAT, "format_version": STORE_VERSION, "complete": True,
                   "layout": {"chunk_samples": 64, "shard_samples": 512}})
r = {"import_s": t_import}


def timed(key, fn):
    t = time.perf_counter()
    value = fn()
    r[key] = time.perf_counter() - t
    return value


store = timed("open_store_s", lambda: open_store(out))
timed("shard_done_mask_s", lambda: shard_done_mask(store.status, 512))
loader = timed("loader_init_s", lambda: FeatureLoader(store, 64, seed=0))
timed("epoch_plan_s", lambda: loader.epoch_plan(0))
pos = timed("resume_position_200k_steps_s", lambda: loader.position(200_000 * 64))
r["resume_position"] = pos
print(json.dumps(r))
"""


DATASET_SNIPPET = """
import sys, time, json, resource
t0 = time.perf_counter()
from adaslot.data.coco import CocoDataset
t_import = time.perf_counter() - t0
t = time.perf_counter()
ds = CocoDataset.from_root(sys.argv[1], sys.argv[2], size=64, views=2)
dt = time.perf_counter() - t
print(json.dumps({"import_s": t_import, "dataset_open_s": dt, "images": len(ds),
                  "annotations": len(ds.coco.anns)}))
"""
