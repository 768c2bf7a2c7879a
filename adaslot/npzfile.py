"""Writing a `.npz` (numpy's zip of `.npy` files, read by `np.load`) one piece at a time, so an array of N
rows is never held in memory whole: `segment --save-slots` gathers N x K x D slot vectors this way."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import numpy as np


class NpzWriter:
    """`with NpzWriter(f) as z: z.stream("slots", (N, K, D), np.float32, rows); z.array("paths", paths)`.

    f: a path or binary file open for writing. Entries are stored uncompressed (as `np.savez`) with zip64
    sizes, so entries over 4 GiB work.
    """

    def __init__(self, file: Any) -> None:
        self.zip = zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def array(self, name: str, value: np.ndarray) -> None:
        """One whole (small) array -> entry `name.npy`."""
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)

    def stream(self, name: str, shape: tuple[int, ...], dtype: Any, rows: Iterable[np.ndarray]) -> int:
        """Entry `name.npy` of `shape` and `dtype` from `rows`, each one or more leading-axis rows
        ([shape[1:]] or [n, *shape[1:]]), written as they come -> rows written. Raises ValueError if a row's
        shape is wrong or the rows do not add up to shape[0] (the entry is then incomplete: discard the file).
        """
        dtype = np.dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        done = 0
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            if len(repr(header)) > 65000:  # numpy's rule: format 2.0 only for headers over 64 KiB
                np.lib.format.write_array_header_2_0(f, header)
            else:
                np.lib.format.write_array_header_1_0(f, header)
            for r in rows:
                a = np.ascontiguousarray(r, dtype=dtype)
                if a.shape == tuple(shape[1:]):
                    a = a[None]
                if a.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"{name}: a row of shape {a.shape[1:]}, expected {tuple(shape[1:])}")
                done += a.shape[0]
                if done > shape[0]:
                    raise ValueError(f"{name}: more than the {shape[0]} rows announced")
                f.write(a.tobytes())
        if done != shape[0]:
            raise ValueError(f"{name}: {done} rows written, {shape[0]} announced")
        return done

    def close(self) -> None:
        self.zip.close()

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
