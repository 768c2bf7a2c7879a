"""A new feature store's arrays and attributes, and whether an existing one may be resumed: what the store
writer and `cache-features --repair` (store/repair.py) share, below both."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from adaslot import __version__
from adaslot.config import CacheConfig
from adaslot.errors import AdaslotError
from adaslot.store import STATUS_CODES, STORE_FORMAT, STORE_VERSION
from adaslot.store.layout import create_arrays


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Dotted path of the first differing leaf between two JSON-like values (None if equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            if d:
                return d
        return None
    return None if json.dumps(a) == json.dumps(b) else (path or "<root>")


def check_resumable(cfg: CacheConfig, attrs: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse (one line) to touch a foreign store, or one made with other settings unless --overwrite."""
    if attrs.get("format") != STORE_FORMAT:
        raise AdaslotError(f"{cfg.out} exists and is not an adaslot feature store; choose another --out")
    diff = first_difference(attrs.get("settings", {}), jsonable(settings))
    if diff is not None and not cfg.overwrite:
        raise AdaslotError(f"{cfg.out} was made with different settings ({diff} differs); use the same "
                           f"settings to resume it, or --overwrite to replace it")


def create_store(root: Any, settings: dict[str, Any], image_ids: np.ndarray, views: int, tokens: int,
                 dim: int, source: dict[str, Any]) -> None:
    """Arrays (adaslot/store/layout.py) and attributes of a new, empty store in zarr group `root`."""
    create_arrays(root, image_ids, views, tokens, dim, settings["layout"]["shard_samples"])
    root.attrs.update(jsonable({
        "format": STORE_FORMAT,
        "format_version": STORE_VERSION,
        "adaslot_version": __version__,
        "complete": False,
        "status_codes": {str(k): v for k, v in STATUS_CODES.items()},
        "settings": settings,
        "settings_sha256": hashlib.sha256(json.dumps(jsonable(settings), sort_keys=True).encode())
        .hexdigest(),
        **{k: settings[k] for k in ("feature_contract", "dataset", "transform", "views", "layout")},
        # What recomputing it needs beyond the settings (cache-verify, the --repair command): not compared.
        "source": source,
    }))


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))
