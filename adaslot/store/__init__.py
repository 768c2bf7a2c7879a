"""Feature stores: frozen-encoder patch tokens, computed once (`adaslot cache-features`), read many times.

Layout (zarr v3 group; any path or fsspec URL zarr understands, e.g. `s3://bucket/coco-train.zarr`), format 2:
    features   [N, V, T, D] float16, uncompressed, shards of `shard_samples` samples x all views (one file
               each; unit of writing, resume and repair); inside a shard one chunk per (sample, view) with a
               crc32c checksum, so a training sample reads one view and every read is checked
               (adaslot/store/layout.py). `chunk_samples` (attrs["layout"]) is the loader's block: the unit
               whose order it shuffles and that it splits between DDP ranks.
    image_ids  [N] int64   dataset image id of each row (one chunk, written when the store is created)
    status     [N] uint8   0 = not written yet, 1 = ok, >= 2 = skipped (code -> reason in
                           attrs["status_codes"]); a skipped row's features are zeros and must not be used.
                           One chunk per shard, written right after the shard's features: it is the
                           shard's completion marker (a shard is done when none of its rows is 0), and
                           ranks never share a file.
    attrs      format, feature_contract (encoder contract + stored dtype + precision), dataset identity
               (annotation sha256, split, ids checksum), transform, views, layout, adaslot version, settings
               checksum, complete (bool), summary (after completion)
image_ids and status chunks carry crc32c checksums too. Format 1 (older stores, still read): features chunks
of `chunk_samples` samples x all views, no checksums except zarr's shard index.
Rows follow the dataset's index order (sorted image ids of the annotation file, images missing on disk left
out and listed in attrs["dataset"]["missing"]); view 0 is the image, view 1 (train) its horizontal flip.

`open_store(path)` reads a zarr store or an HDF5 export (`adaslot export`) the same way.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from adaslot.config import CacheConfig, DataSpec
from adaslot.config.base import to_flags
from adaslot.contract import IDENTITY_KEYS, check_contract
from adaslot.errors import AdaslotError
from adaslot.store.layout import Damage, ShardedFeatures

STORE_FORMAT = "adaslot-feature-store"
STORE_VERSION = 2  # 1: chunks of all views, no checksums (still read)
STATUS_NOT_WRITTEN, STATUS_OK = 0, 1
# Reasons come from adaslot.data (ImageLoadError.reason); unknown reasons map to "other".
SKIP_REASONS = ("unreadable", "truncated", "too-large", "size-mismatch", "other")
STATUS_CODES = {STATUS_NOT_WRITTEN: "not written", STATUS_OK: "ok",
                **{i + 2: r for i, r in enumerate(SKIP_REASONS)}}


def shard_done_mask(status: np.ndarray, shard_samples: int) -> np.ndarray:
    """[S] bool: shard s is completely written (no row of it has status 0)."""
    n = status.size
    return np.array([bool((status[a:a + shard_samples] != STATUS_NOT_WRITTEN).all())
                     for a in range(0, n, shard_samples)], dtype=bool)


def status_code(reason: str) -> int:
    return SKIP_REASONS.index(reason) + 2 if reason in SKIP_REASONS else SKIP_REASONS.index("other") + 2


class FeatureStore:
    """Read access to a finished or partial store, zarr or HDF5.

    features: array-like [N, V, T, D] float16 (zarr array / h5py dataset; slice it, or use `read`);
    image_ids: [N] int64 with -1 for rows that are not usable (skipped or not yet written); valid: [N] bool.
    """

    def __init__(self, path: str, backend: str, root: Any, attrs: dict[str, Any], strict: bool = True):
        self.path, self.backend, self._root, self.attrs = path, backend, root, attrs
        self.strict = strict  # False: damaged status/image_ids chunks are listed in `damage`, not raised
        self.damage: list[Damage] = []
        self.features = root["features"]
        n, v, t, d = self.features.shape
        self.num_samples, self.num_views, self.num_tokens, self.feature_dim = int(n), int(v), int(t), int(d)
        self.format_version = int(attrs.get("format_version", 1))
        self.status = np.asarray(self._small_array("status"), dtype=np.uint8)
        self.valid = self.status == STATUS_OK
        self.raw_image_ids = np.asarray(self._small_array("image_ids"), dtype=np.int64)
        self.image_ids = np.where(self.valid, self.raw_image_ids, -1)
        layout = attrs.get("layout", {})
        self.chunk_samples = int(layout.get("chunk_samples", self.features.chunks[0]))
        shards = getattr(self.features, "shards", None)  # zarr: the shard shape (None: not sharded, or h5py)
        self.shard_samples = int(layout.get("shard_samples", shards[0] if shards else self.chunk_samples))
        self.contract: dict[str, Any] = dict(attrs.get("feature_contract", {}))
        # Local zarr stores are read straight from their shard files (layout.py); others through zarr/h5py.
        self.direct: ShardedFeatures | None = None
        if backend == "zarr" and "://" not in path:
            self.direct = ShardedFeatures.open(Path(path) / "features")

    def _small_array(self, name: str) -> np.ndarray:
        """status / image_ids. A damaged chunk is a one-line error naming its file; with strict=False it is
        recorded in `damage` and reads as "not written" (status 0, image id -1) instead."""
        arr = self._root[name]
        try:
            return np.asarray(arr[:])
        except ValueError as e:  # zarr's crc32c codec: "Stored and computed checksum do not match"
            if self.backend != "zarr" or "checksum" not in str(e):
                raise
        out = np.full(arr.shape, 0 if name == "status" else -1, arr.dtype)
        c = arr.chunks[0]
        for i, a in enumerate(range(0, arr.shape[0], c)):
            try:
                out[a:a + c] = arr[a:a + c]
            except ValueError:
                d = Damage(f"{self.path}/{name}/c/{i}", "checksum mismatch")
                if self.strict:
                    raise self.damaged(d) from None
                self.damage.append(d)
        return out

    def damaged(self, e: Damage) -> AdaslotError:
        """The one-line error for a damaged file of this store, with the command that repairs it."""
        return AdaslotError(f"feature store {self.path} is damaged: {e.path}: {e.what}; "
                            f"{repair_hint(self.path, self.attrs)}")

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()

    # ---- state

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())

    def shards_done(self) -> tuple[int, int]:
        """(shards written, shards total)."""
        done = shard_done_mask(self.status, self.shard_samples)
        return int(done.sum()), int(done.size)

    # ---- data

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop), all views -> [n, V, T, D] float16 (checksums checked)."""
        n, v = stop - start, self.num_views
        out = np.empty((n, v, self.num_tokens, self.feature_dim), np.float16)
        rows = np.repeat(np.arange(start, stop), v)
        self.read_views(rows, np.tile(np.arange(v), n), out.reshape(n * v, self.num_tokens, self.feature_dim))
        return out

    def read_views(self, rows: np.ndarray, views: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """View views[i] of row rows[i] for each i -> out [n, T, D] float16 (C-contiguous if given).

        Reads only those bytes and checks their checksums (format 2); a damaged file raises AdaslotError
        naming it. Rows never written read as zeros.
        """
        rows, views = np.asarray(rows, np.int64), np.asarray(views, np.int64)
        if out is None:
            out = np.empty((rows.size, self.num_tokens, self.feature_dim), np.float16)
        if self.direct is None:
            self._read_views_slow(rows, views, out)
            return out
        try:
            missing = self.direct.read_into(rows, views, out)
        except Damage as e:
            raise self.damaged(e) from None
        if missing.any():
            lost = missing & (self.status[rows] != STATUS_NOT_WRITTEN)
            if lost.any():
                r = int(rows[lost][0])
                k = self.direct.shard_of(r)
                path = self.direct.shard_path(k)
                what = "missing" if not path.exists() else f"has no data for row {r}"
                raise self.damaged(Damage(path, what))
            out[missing] = 0
        return out

    def _read_views_slow(self, rows: np.ndarray, views: np.ndarray, out: np.ndarray) -> None:
        """zarr-python / h5py: one read per run of consecutive rows with the same view."""
        order = np.lexsort((rows, views))
        i = 0
        while i < order.size:
            j = i + 1
            while (j < order.size and views[order[j]] == views[order[i]]
                   and rows[order[j]] == rows[order[j - 1]] + 1):
                j += 1
            a, v = int(rows[order[i]]), int(views[order[i]])
            try:
                out[order[i:j]] = np.asarray(self.features[a:a + j - i, v])
            except ValueError as e:  # zarr: a shard index or chunk checksum does not match
                if "checksum" not in str(e):
                    raise
                raise self.damaged(Damage(f"{self.path}/features (shard {a // self.shard_samples})",
                                          "checksum mismatch")) from None
            i = j

    def chunk_bounds(self) -> list[tuple[int, int]]:
        """[start, stop) of each loader block of `chunk_samples` rows (format 1: the zarr chunks)."""
        c = self.chunk_samples
        return [(a, min(a + c, self.num_samples)) for a in range(0, self.num_samples, c)]

    # ---- compatibility

    def check_compatible(self, contract: dict[str, Any] | None = None, *, encoder: str | None = None,
                         feature_dim: int | None = None, num_tokens: int | None = None,
                         split: str | None = None, require_complete: bool = True) -> None:
        """Raise AdaslotError (one line, with the fix) unless this store can feed the given configuration.

        contract: an encoder contract (`FrozenEncoder.contract(side)` or a checkpoint's `feature_contract`),
        compared by `adaslot.contract`. encoder / feature_dim / num_tokens / split: simpler checks for
        callers that do not have a whole contract.
        """
        where = f"feature store {self.path}"
        if self.attrs.get("format") != STORE_FORMAT:
            raise AdaslotError(f"{where} is not an adaslot feature store (no format attribute)")
        if require_complete and not self.complete:
            done, total = self.shards_done()
            raise AdaslotError(f"{where} is incomplete ({done}/{total} shards written); rerun the same "
                               f"`adaslot cache-features` command to finish it")
        want: dict[str, Any] = dict(contract or {})
        for key, value in (("encoder", encoder), ("feature_dim", feature_dim), ("num_tokens", num_tokens)):
            if value is not None:
                want[key] = value
        check_contract(want, self.contract, where, "the features expected",
                       "cache features with the matching encoder/settings or pick another store")
        if split is not None and self.attrs.get("dataset", {}).get("split") not in (None, split):
            raise AdaslotError(f"{where} holds split {self.attrs['dataset']['split']!r}, not {split!r}")

    def summary_lines(self) -> list[str]:
        """Human-readable description for `adaslot cache-info`."""
        a = self.attrs
        c = self.contract
        done, total = self.shards_done()
        size = size_on_disk(self.path)
        ds = a.get("dataset", {})
        lines = [
            f"store       {self.path} ({self.backend})",
            f"state       {'complete' if self.complete else 'INCOMPLETE'} ({done}/{total} shards)",
            f"features    [{self.num_samples}, {self.num_views}, {self.num_tokens}, {self.feature_dim}] "
            f"{self.features.dtype}, shards of {self.shard_samples} samples, loader blocks of "
            f"{self.chunk_samples}",
            f"format      {self.format_version}: " + ("one crc32c-checked chunk per sample and view"
                                                      if self.format_version >= 2 else
                                                      "chunks of all views, no chunk checksums"),
            f"valid       {self.num_valid} ok, {int((self.status >= 2).sum())} skipped, "
            f"{int((self.status == STATUS_NOT_WRITTEN).sum())} not written",
            f"views       {', '.join(a.get('views', []))}",
            f"encoder     {c.get('encoder')} (timm {c.get('timm_model')} {c.get('timm_version')}), "
            f"weights sha256 {str(c.get('weights_sha256'))[:16]}...",
            f"tap point   {c.get('tap_point')}",
            f"input       {c.get('input_size')}, normalisation {c.get('normalisation')}, "
            f"precision {c.get('precision')}, stored {c.get('stored_dtype')}",
            (f"dataset     {ds.get('name')} ({ds.get('layout')}) split {ds.get('split')}, "
             f"{ds.get('num_videos')} videos, frames {ds.get('frames')}, {ds.get('num_samples')} samples, "
             f"image_id = {ds.get('image_id')}" if ds.get("name") == "movi" else
             f"dataset     {ds.get('name')} split {ds.get('split')}, {ds.get('num_listed')} listed, "
             f"{len(ds.get('missing', []))} missing on disk, annotations sha256 "
             f"{str(ds.get('annotation_sha256'))[:16]}..."),
            f"transform   {a.get('transform')}",
            f"created     by adaslot {a.get('adaslot_version')}",
        ]
        if size is not None:
            lines.append(f"size        {size / 2**30:.2f} GiB on disk")
        if a.get("summary"):
            lines.append(f"summary     {json.dumps(a['summary'])}")
        return lines


def repair_hint(path: str, attrs: dict[str, Any]) -> str:
    """'repair it with: CMD': the cache-features command that wrote the store (from its recorded settings and
    source) plus --repair, which re-encodes exactly the damaged shards."""
    s, src = attrs.get("settings") or {}, attrs.get("source") or {}
    try:
        c, layout = s["feature_contract"], s["layout"]
        given: dict[str, Any] = {"batch_size": src["batch_size"]} if src.get("batch_size") else {}
        cfg = CacheConfig(
            out=path, data=DataSpec(images=src["images"], annotations=src["annotations"],
                                    split=s["dataset"]["split"]),
            encoder=c["encoder"], encoder_weights=src.get("encoder_weights") or None,
            image_size=int(c["input_size"][0]), views=len(s["views"]), precision=c.get("precision", "fp32"),
            antialias="antialias=True" in str(s["transform"].get("resize", "")),
            chunk_samples=int(layout["chunk_samples"]), shard_samples=int(layout["shard_samples"]),
            repair=True, **given)
    except (KeyError, TypeError, IndexError):  # settings unreadable (damaged root metadata) or foreign
        return (f"repair it by rerunning the `adaslot cache-features --out {path} ...` command that wrote "
                f"it with --repair")
    return "repair it with: " + shlex.join(["adaslot", "cache-features", *to_flags(cfg)])


def metadata_damage(path: str) -> AdaslotError:
    """The one-line error for a store whose metadata (a zarr.json) does not parse, naming that file."""
    bad = _broken_metadata(path)
    try:
        attrs = _read_json(f"{path}/zarr.json").get("attributes", {})
    except (OSError, json.JSONDecodeError):
        attrs = {}
    return AdaslotError(f"feature store {path} is damaged: {bad} is not valid JSON (cut short?); "
                        f"{repair_hint(path, attrs)}")


def size_on_disk(path: str) -> int | None:
    p = Path(path)
    if "://" in path or not p.exists():
        return None
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def normalise_path(path: str | Path) -> str:
    """`file:///x` -> `/x` (zarr's fsspec route does not create local parent dirs); other URLs unchanged."""
    path = str(path)
    return path[len("file://"):] if path.startswith("file://") else path


def is_hdf5(path: str) -> bool:
    return str(path).endswith((".h5", ".hdf5"))


def open_store(path: str | Path, strict: bool = True) -> FeatureStore:
    """Open a zarr store (local path or fsspec URL) or an HDF5 export for reading.

    strict=False (cache-verify --full, cache-features --repair): damaged status/image_ids chunks are listed
    in `store.damage` instead of raising."""
    path = normalise_path(path)
    if is_hdf5(path):
        import h5py

        if not Path(path).is_file():
            raise AdaslotError(f"feature store {path} not found")
        try:
            f = h5py.File(path, "r")
        except OSError as e:  # not HDF5 at all (h5py says "file signature not found")
            raise AdaslotError(f"{path} is not an HDF5 file ({e}); give a store written by `adaslot "
                               f"export` or a zarr store") from None
        attrs = json.loads(f.attrs["adaslot_attrs_json"]) if "adaslot_attrs_json" in f.attrs else {}
        arrays = ("features", "status", "image_ids")
        if attrs.get("format") != STORE_FORMAT or not all(k in f for k in arrays):
            f.close()
            raise AdaslotError(f"{path} is not an adaslot feature store (an HDF5 file without adaslot's "
                               f"arrays); write one with `adaslot export STORE {path}`")
        return FeatureStore(path, "hdf5", f, attrs)
    import zarr

    try:
        root = zarr.open_group(path, mode="r")
        attrs = dict(root.attrs)
        if attrs.get("format") != STORE_FORMAT or "features" not in root:
            raise AdaslotError(f"{path} is not an adaslot feature store")
        return FeatureStore(path, "zarr", root, attrs, strict=strict)
    except (FileNotFoundError, NotADirectoryError, zarr.errors.GroupNotFoundError) as e:
        if "://" not in path and Path(path).exists():  # a folder or file, but not a zarr group
            raise AdaslotError(f"{path} is not a feature store (no zarr group there); give a store "
                               f"written by `adaslot cache-features`") from None
        raise AdaslotError(f"feature store {path} not found (create it with `adaslot cache-features`)") from e
    except json.JSONDecodeError:  # a metadata document cut short or overwritten
        raise metadata_damage(path) from None


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        doc: dict[str, Any] = json.load(f)
    return doc


def _broken_metadata(path: str) -> str:
    """The first zarr.json of a local store that does not parse (root first)."""
    for name in ("", "/features", "/status", "/image_ids"):
        f = f"{path}{name}/zarr.json"
        try:
            _read_json(f)
        except (OSError, json.JSONDecodeError):
            return f
    return f"{path}/zarr.json"


__all__ = ["FeatureStore", "open_store", "STORE_FORMAT", "STATUS_CODES", "IDENTITY_KEYS", "size_on_disk"]
