"""Streaming .npz writer (adaslot/npzfile.py) and `segment --save-slots`'s gather through it: np.load reads
what it writes, and gathering N slot pieces holds about one piece in memory, not N."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from adaslot.npzfile import NpzWriter
from adaslot.segment import SLOTS_FILE, _gather_slots


def test_streamed_entries_read_back_with_np_load(tmp_path):
    a = np.random.default_rng(0).standard_normal((9, 3, 4)).astype(np.float32)
    with NpzWriter(tmp_path / "x.npz") as z:
        assert z.stream("slots", a.shape, np.float32, [a[:2], *a[2:]]) == 9  # blocks of rows or single rows
        z.array("paths", np.array(["a", "bb"]))
    with np.load(tmp_path / "x.npz") as f:
        assert sorted(f.files) == ["paths", "slots"]
        np.testing.assert_array_equal(f["slots"], a)
        assert f["paths"].tolist() == ["a", "bb"]


@pytest.mark.parametrize("rows", [[np.zeros((3, 4))] * 2, [np.zeros((3, 4))] * 4, [np.zeros((3, 5))] * 3])
def test_wrong_rows_are_refused(tmp_path, rows):
    with pytest.raises(ValueError), NpzWriter(tmp_path / "x.npz") as z:
        z.stream("slots", (3, 3, 4), np.float32, rows)


def test_gathering_slots_holds_one_piece_not_all(tmp_path):
    n, k, d = 200, 7, 256
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        piece = tmp_path / "slots" / f"im{i}.npz"
        piece.parent.mkdir(exist_ok=True)
        np.savez(piece, slots=rng.standard_normal((k, d)).astype(np.float32), kept=rng.random(k) > 0.5)
        records.append({"name": f"im{i}.png", "file": f"/data/im{i}.jpg", "mask": f"masks/im{i}.png"})
    tracemalloc.start()
    _gather_slots(tmp_path, records)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    total = n * k * d * 4  # 2.9 MB: the whole slots array
    assert peak < total / 4, (peak, total)
    with np.load(tmp_path / SLOTS_FILE) as z:
        assert z["slots"].shape == (n, k, d) and z["kept"].shape == (n, k)
        with np.load(tmp_path / "slots" / "im123.npz") as p:
            np.testing.assert_array_equal(z["slots"][123], p["slots"])
            np.testing.assert_array_equal(z["kept"][123], p["kept"])
        assert z["paths"][5] == "/data/im5.jpg" and z["masks"][5] == "masks/im5.png"
