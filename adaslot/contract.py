"""The feature contract: what makes two sets of encoder features "the same" (docs/method.md#encoder).

A contract is a JSON dict written by `FrozenEncoder.contract(side)` into every store and checkpoint. Only
IDENTITY_KEYS are compared; informational keys (timm version, dtype) are not. One rule for stores,
warm starts and eval: a key present on both sides must be equal as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from adaslot.errors import AdaslotError

IDENTITY_KEYS = ("encoder", "weights_sha256", "tap_point", "pos_interpolation", "input_size", "normalisation",
                 "num_tokens", "feature_dim")


def _norm(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)  # tuples vs lists, numpy scalars: compare as JSON


def contract_difference(want: dict[str, Any] | None, have: dict[str, Any] | None
                        ) -> tuple[str, Any, Any] | None:
    """The first identity key whose values differ between two contracts: (key, want value, have value)."""
    want, have = want or {}, have or {}
    for key in IDENTITY_KEYS:
        if want.get(key) is not None and have.get(key) is not None and _norm(want[key]) != _norm(have[key]):
            return key, want[key], have[key]
    return None


def check_contract(want: dict[str, Any] | None, have: dict[str, Any] | None, what: str, expected: str,
                   fix: str) -> None:
    """Raise one line when `have` (the features `what` gives) differ from `want` (those `expected` names)."""
    diff = contract_difference(want, have)
    if diff is None:
        return
    key, w, h = diff
    raise AdaslotError(f"{what} does not match {expected}: {key} is {_short(h, key)} there but "
                       f"{_short(w, key)} is expected; {fix}")


def _short(v: Any, key: str) -> str:
    s = json.dumps(v, default=str)
    limit = 18 if key == "weights_sha256" else 200  # a checksum prefix is enough; a tap point is read whole
    return s if len(s) <= limit else s[: limit - 3] + '..."'
