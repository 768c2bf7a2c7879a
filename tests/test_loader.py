"""Store loader: every sample once per epoch, block mixing, one random view per sample, determinism, exact
resume, disjoint DDP ranks, in-memory mode, HDF5 input, reading only the view used. Uses stores whose features
encode their own row and view (value = row + 0.5 * view), so every batch can be checked: one written through
the writer's layout code (current format) and the same store in format 1 (tests/data/v1-rowview.zarr,
written by adaslot before format 2); the properties must hold for both."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from adaslot.config import CacheConfig
from adaslot.errors import AdaslotError
from adaslot.store import STATUS_OK, open_store
from adaslot.store.export import export_hdf5
from adaslot.store.layout import for_writing
from adaslot.store.loader import FeatureLoader, _buffer_shuffle
from adaslot.store.writer import _prepare_store

N, V, T, D, CHUNK, SHARD = 50, 2, 3, 4, 4, 8
INVALID = (7, 30)  # skipped images: never yielded


def make_store(path: Path, complete: bool = True) -> str:
    settings = {"feature_contract": {"encoder": "test", "feature_dim": D, "num_tokens": T}, "dataset": {
        "split": "train"}, "transform": {}, "views": ["image", "hflip"],
        "layout": {"chunk_samples": CHUNK, "shard_samples": SHARD}}
    cfg = CacheConfig(out=str(path), chunk_samples=CHUNK, shard_samples=SHARD)
    _prepare_store(cfg, settings, np.arange(N) + 1000, V, T, D, source={})
    root = zarr.open_group(str(path), mode="r+")
    values = np.arange(N)[:, None] + 0.5 * np.arange(V)[None, :]
    feats = np.broadcast_to(values[:, :, None, None], (N, V, T, D)).astype(np.float16)
    for_writing(root, "features")[:] = feats
    status = np.full(N, STATUS_OK, np.uint8)
    status[list(INVALID)] = 2
    for_writing(root, "status")[:] = status
    root.attrs["complete"] = complete
    return str(path)


V1_STORE = Path(__file__).parent / "data" / "v1-rowview.zarr"


@pytest.fixture(scope="module", params=["current", "v1"])
def store_path(request, tmp_path_factory) -> str:
    if request.param == "v1":
        assert open_store(V1_STORE).format_version == 1
        return str(V1_STORE)
    return make_store(tmp_path_factory.mktemp("loader") / "s.zarr")


def take(loader: FeatureLoader, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = [next(loader) for _ in range(n_batches)]
    return out


def check_batch(feats: torch.Tensor, rows: torch.Tensor) -> np.ndarray:
    """Features must be one view of their own row; returns the views."""
    assert feats.dtype == torch.float16 and feats.shape[1:] == (T, D)
    vals = feats[:, 0, 0].double().numpy()
    assert (feats.double() == torch.from_numpy(vals)[:, None, None]).all()
    views = (vals - rows.numpy()) * 2
    assert set(np.unique(views)) <= {0.0, 1.0}
    return views


@pytest.mark.parametrize("in_memory", [False, True])
def test_every_sample_once_per_epoch_with_random_views(store_path, in_memory):
    bs = 6
    loader = FeatureLoader(store_path, bs, seed=1, shuffle_buffer=10, in_memory=in_memory)
    per_epoch = N - len(INVALID)
    assert loader.epoch_length(0) == per_epoch
    batches = take(loader, 3 * per_epoch // bs)  # 3 epochs
    rows = torch.cat([r for _, r in batches]).numpy()
    views = np.concatenate([check_batch(f, r) for f, r in batches])
    for e in range(3):
        epoch_rows = rows[e * per_epoch:(e + 1) * per_epoch]
        assert sorted(epoch_rows.tolist()) == [r for r in range(N) if r not in INVALID]
    assert 0.3 < views.mean() < 0.7  # p = 0.5 flip view
    if not in_memory:  # a bounded buffer mixes several chunks: the first batch is not one chunk
        assert len({r // CHUNK for r in rows[:bs].tolist()}) > 1
    loader.close()


def test_deterministic_for_a_seed(store_path):
    a = take(FeatureLoader(store_path, 5, seed=3), 12)
    b = take(FeatureLoader(store_path, 5, seed=3), 12)
    c = take(FeatureLoader(store_path, 5, seed=4), 12)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("in_memory", [False, True])
def test_state_dict_resumes_exact_batches(store_path, in_memory):
    kw = dict(seed=7, shuffle_buffer=9, in_memory=in_memory)
    full = FeatureLoader(store_path, 7, **kw)
    ref = take(full, 20)  # crosses epoch boundaries (48 samples per epoch, 7 per batch)
    first = FeatureLoader(store_path, 7, **kw)
    take(first, 9)
    state = first.state_dict()
    first.close()
    resumed = FeatureLoader(store_path, 7, **kw)
    resumed.load_state_dict(state)
    rest = take(resumed, 11)
    for (fa, ra), (fb, rb) in zip(ref[9:], rest, strict=True):
        assert torch.equal(ra, rb) and torch.equal(fa, fb)
    with pytest.raises(AdaslotError, match="seed"):
        FeatureLoader(store_path, 7, seed=8, in_memory=in_memory).load_state_dict(state)


@pytest.mark.parametrize("in_memory", [False, True])
def test_ranks_read_disjoint_parts(store_path, in_memory):
    world = 3
    loaders = [FeatureLoader(store_path, 4, seed=2, rank=r, world_size=world, in_memory=in_memory)
               for r in range(world)]
    epoch0 = [set(ld.epoch_plan(0)[0].tolist()) for ld in loaders]
    assert sum(len(s) for s in epoch0) == N - len(INVALID)
    assert set.union(*epoch0) == {r for r in range(N) if r not in INVALID}
    for ld, rows in zip(loaders, epoch0, strict=True):  # what a rank yields is its part
        got = torch.cat([r for _, r in take(ld, len(rows) // 4)]).tolist()
        assert set(got) <= rows
        ld.close()


def test_refuses_incomplete_store_and_reads_hdf5(tmp_path, store_path):
    with pytest.raises(AdaslotError, match="incomplete"):
        FeatureLoader(make_store(tmp_path / "inc.zarr", complete=False), 4)
    h5 = tmp_path / "s.h5"
    export_hdf5(store_path, str(h5))
    a = take(FeatureLoader(str(h5), 5, seed=3), 4)
    b = take(FeatureLoader(store_path, 5, seed=3), 4)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert open_store(h5).num_valid == N - len(INVALID)


def test_buffer_shuffle_is_a_permutation_with_bounded_delay():
    rng = np.random.default_rng(0)
    stream = np.arange(1000)
    out = _buffer_shuffle(stream, 50, rng)
    assert sorted(out.tolist()) == stream.tolist()
    # sample i can only be emitted after it entered the buffer: position >= i - buffer
    pos = np.empty(1000, int)
    pos[out] = np.arange(1000)
    assert (pos >= stream - 50).all()
    assert Counter(np.abs(pos - stream) > 5)[True] > 500  # really mixed


def test_views_are_drawn_per_sample_with_p_half(store_path):
    """Over many epochs each sample gets each view about half of the time, independently of its block."""
    loader = FeatureLoader(store_path, 4, seed=5)
    epochs = 200
    views = np.zeros(N)
    same_in_block = []
    for e in range(epochs):
        rows, v, _ = loader.epoch_plan(e)
        views[rows] += v
        by_block: dict[int, set] = {}
        for r, vv in zip(rows.tolist(), v.tolist(), strict=True):
            by_block.setdefault(r // CHUNK, set()).add(vv)
        same_in_block.append(np.mean([len(x) == 1 for x in by_block.values()]))
    freq = np.delete(views, INVALID) / epochs
    assert np.abs(freq - 0.5).max() < 0.15  # binomial(200, 0.5): sd 0.035
    # a block of 4 samples has one view for all only with p = 2 * 0.5^4 when views are drawn per sample
    assert 0.05 < np.mean(same_in_block) < 0.25


def test_current_format_reads_only_the_view_used(tmp_path):
    """Damage view 1 of a row: view 0 of every row still reads; view 1 of that row fails, naming its file."""
    path = make_store(tmp_path / "s.zarr")
    st = open_store(path)
    assert st.format_version == 2 and st.direct is not None and st.direct.crc
    row = 13
    k, idx = st.direct.shard_of(row), st.direct.index(st.direct.shard_of(row))
    off, _ = idx[row % SHARD, 1]
    shard = st.direct.shard_path(k)
    data = bytearray(shard.read_bytes())
    data[int(off) + 10] ^= 0xFF
    shard.write_bytes(bytes(data))
    everyone = [r for r in range(N) if r not in INVALID]
    got = torch.cat([r for _, r in take(FeatureLoader(path, 6, view=0), len(everyone) // 6)])
    assert sorted(got.tolist()) == everyone
    with pytest.raises(AdaslotError, match=f"{shard}.*row {row} view 1.*--repair") as e:
        take(FeatureLoader(path, 6, view=1), len(everyone) // 6)
    assert "\n" not in str(e.value)


def test_device_mode_and_recycled_buffers_give_the_same_batches(store_path):
    """device="cpu": float32 batches converted by the reader threads; reuse_buffers: a batch's buffer is
    refilled after the next `next()` (so few buffers serve the whole run); both give the same batches."""
    ref = take(FeatureLoader(store_path, 5, seed=3), 12)
    on_device = take(FeatureLoader(store_path, 5, seed=3, device="cpu"), 12)
    reused = FeatureLoader(store_path, 5, seed=3, reuse_buffers=True)
    pointers = set()
    for (f, r), (g, s) in zip(ref, on_device, strict=True):
        assert g.dtype == torch.float32 and torch.equal(g, f.float()) and torch.equal(r, s)
        h, t = next(reused)
        assert torch.equal(h, f) and torch.equal(t, r)
        pointers.add(h.data_ptr())
    assert len(pointers) <= reused.prefetch + 2  # recycled, not one fresh buffer per batch
