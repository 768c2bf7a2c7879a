"""The direct shard writer (adaslot/store/shardfile.py) writes the bytes zarr-python writes, and zarr, the
direct reader and the full check read them back."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from adaslot.store import layout
from adaslot.store.shardfile import ShardWriter, direct_features, morton_order, write_shard

REPO = Path(__file__).resolve().parent.parent


def _group(path: Path, n: int, views: int, shard: int) -> zarr.Group:
    root = zarr.open_group(path, mode="w")
    layout.create_arrays(root, np.arange(n), views, 4, 6, shard)
    return root


@pytest.mark.parametrize(
    ("n", "shard", "views", "crc"),
    [
        (10, 4, 2, True),
        (7, 8, 1, True),
        (13, 5, 2, True),
        (6, 3, 3, True),
        (64, 32, 2, True),
        (13, 5, 2, False),
    ],
)
def test_shard_files_are_byte_identical_to_zarr(tmp_path, monkeypatch, n, shard, views, crc):
    monkeypatch.setattr(layout, "CHECKSUMS", crc)  # False: the benchmarks' measure of the checksums' cost
    data = np.random.default_rng(n).standard_normal((n, views, 4, 6)).astype(np.float16)
    via_zarr, direct_root = (
        _group(tmp_path / "a.zarr", n, views, shard),
        _group(tmp_path / "b.zarr", n, views, shard),
    )
    direct = direct_features(direct_root, str(tmp_path / "b.zarr"))
    assert direct is not None
    for k in range(-(-n // shard)):
        a, b = k * shard, min(n, (k + 1) * shard)
        layout.for_writing(via_zarr, "features")[a:b] = data[a:b]
        written = write_shard(direct, k, data[a:b])
        ours = (tmp_path / f"b.zarr/features/c/{k}/0/0/0").read_bytes()
        assert ours == (tmp_path / f"a.zarr/features/c/{k}/0/0/0").read_bytes()
        assert written == len(ours)
    assert not list(tmp_path.rglob("*.partial"))
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "b.zarr")["features"][:], data)
    reader = layout.ShardedFeatures.open(tmp_path / "b.zarr/features")
    for k in range(-(-n // shard)):
        assert reader.check_shard(k)[1] is None
    assert reader.crc == crc
    rows = np.arange(n).repeat(views)
    vs = np.tile(np.arange(views), n)
    out = np.empty((rows.size, 4, 6), np.float16)
    assert not reader.read_into(rows, vs, out).any()
    np.testing.assert_array_equal(out, data.reshape(-1, 4, 6))


def test_morton_order_matches_zarr():
    from zarr.core.indexing import _morton_order

    for shape in [(1, 1), (5, 2), (512, 2), (16, 3), (7, 1), (3, 5)]:
        np.testing.assert_array_equal(morton_order(*shape), np.asarray(_morton_order((*shape, 1, 1)))[:, :2])


def test_writer_thread_writes_features_then_status(tmp_path):
    data = np.ones((8, 2, 4, 6), np.float16)
    root = _group(tmp_path / "s.zarr", 8, 2, 4)
    w = ShardWriter(root, str(tmp_path / "s.zarr"))
    assert w.direct is not None
    w.submit(1, 4, 8, data[4:], np.ones(4, np.uint8))
    w.close()
    assert w.bytes_written == data[4:].nbytes
    np.testing.assert_array_equal(np.asarray(root["status"][:]), [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(root["features"][4:], data[4:])
    assert direct_features(root, "s3://bucket/s.zarr") is None  # remote stores: written through zarr


@pytest.mark.e2e  # a subprocess under a file-size limit
def test_a_failed_write_leaves_no_partial_file(tmp_path):
    """A real size limit (RLIMIT_FSIZE, in a child process) stops the write halfway: the error comes out and
    neither the shard nor its `*.partial` file is left."""
    _group(tmp_path / "f.zarr", 64, 2, 64)
    code = (
        "import resource, signal, sys, numpy as np\n"
        "from adaslot.store.shardfile import direct_features, write_shard\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))\n"
        f"d = direct_features(None, {str(tmp_path / 'f.zarr')!r})\n"
        "try:\n"
        "    write_shard(d, 0, np.ones((64, 2, 4, 6), np.float16))\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert r.stdout.strip() == str(errno.EFBIG), r.stderr
    assert not list((tmp_path / "f.zarr").rglob("*.partial"))
    assert not (tmp_path / "f.zarr/features/c/0/0/0/0").exists()
