"""One feature source: patch features [B, T, D] for images, read from a feature store or computed by the live
frozen encoder (docs/method.md#feature-source).

  StoreFeatures  rows of a feature store (`adaslot cache-features`) looked up by image id, view 0 (the image
                 itself, unflipped): the fast proxy, stored as float16
  LiveFeatures   images [B, 3, S, S] -> the frozen encoder, float32

Both carry the feature `contract` (docs/method.md#encoder), `num_tokens` T, `feature_dim` D, `encoder_name`
and the network input side `image_size` S. `open_features` is the one place that decides store-or-live from
a command's settings and checks that the features are the ones expected (contract, split, completeness), in
one line when they are not. Training streams its batches through train/inputs.py on top of these; periodic
validation, `adaslot eval`, `adaslot segment`, the Python API and sweep scoring use them directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from adaslot.errors import AdaslotError

if TYPE_CHECKING:
    from adaslot.encoders import FrozenEncoder
    from adaslot.store import FeatureStore

ENCODER_FIX = "use the encoder weights (or the cache) the model was trained with"


class Item(Protocol):
    """What a feature source needs of an image: its dataset id and, for live features, its network input."""

    image_id: int
    image: torch.Tensor | None


class FeatureSource:
    """Features for images. `features(items)` -> [B, T, D] float32 on `device`; `covering(dataset)` -> the
    dataset indices it has features for (None: every one); `needs_images`: whether items must carry their
    network input [3, S, S]; `description`: where the features come from, in words (metrics.json)."""

    needs_images = True
    description = ""

    def __init__(self, contract: dict[str, Any], device: torch.device, num_tokens: int, feature_dim: int,
                 image_size: int) -> None:
        self.contract, self.device = contract, device
        self.encoder_name = str(contract.get("encoder", "unknown"))
        self.num_tokens, self.feature_dim, self.image_size = num_tokens, feature_dim, image_size

    def features(self, items: Sequence[Item]) -> torch.Tensor:
        raise NotImplementedError

    def covering(self, dataset: Any) -> list[int] | None:
        return None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.encoder_name}, {self.image_size} px, "
                f"[T={self.num_tokens}, D={self.feature_dim}], {self.device})")


class LiveFeatures(FeatureSource):
    """The frozen encoder run on every image at side `image_size` (default: the encoder's own)."""

    description = "images: frozen encoder re-run on every image"

    def __init__(self, encoder: FrozenEncoder, image_size: int | None = None,
                 device: torch.device | None = None) -> None:
        self.encoder = encoder
        side = int(image_size or encoder.image_size)
        super().__init__(encoder.contract(side), device or encoder.mean.device, encoder.num_tokens(side),
                         encoder.embed_dim, side)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] in [0, 1] (any device) -> features [B, T, D] float32 on the device."""
        return self.encoder(images.to(self.device, non_blocking=True)).float()

    def features(self, items: Sequence[Item]) -> torch.Tensor:
        images = [it.image for it in items]
        if any(x is None for x in images):
            raise ValueError("live features need every item's image (EvalDataset(with_images=True))")
        return self.encode(torch.stack([x for x in images if x is not None]))


class StoreFeatures(FeatureSource):
    """View 0 of a feature store's rows, looked up by image id (checksums checked on every read: a damaged
    store is a one-line error)."""

    needs_images = False

    def __init__(self, store: FeatureStore, device: torch.device) -> None:
        self.store = store
        contract = dict(store.contract)
        # a contract without its input side: the reference side (docs/method.md#feature-source)
        side = int((contract.get("input_size") or [224])[0])
        super().__init__(contract, device, store.num_tokens, store.feature_dim, side)
        self.description = (f"PROXY from cached features {store.path}: stored fp16 patch features, not a "
                            "re-run of the encoder")
        self._row_of: dict[int, int] | None = None

    @property
    def row_of(self) -> dict[int, int]:
        """image id -> store row (usable rows only)."""
        if self._row_of is None:
            self._row_of = {int(i): r for r, i in enumerate(np.asarray(self.store.image_ids)) if i >= 0}
        return self._row_of

    def covering(self, dataset: Any) -> list[int]:
        """The indices of `dataset` (a CocoDataset-like: image_ids) whose image has a row here."""
        indices = [k for k, image_id in enumerate(dataset.image_ids) if int(image_id) in self.row_of]
        if not indices:
            where = getattr(dataset, "annotation_file", None) or "the dataset"
            raise AdaslotError(f"the cached features {self.store.path} hold none of the images of {where}: "
                               "cache that split (adaslot cache-features --split val)")
        return indices

    def read(self, image_ids: Sequence[int]) -> torch.Tensor:
        """image ids -> features [B, T, D] float32 on the device (stored float16, view 0)."""
        rows = np.asarray([self.row_of[int(i)] for i in image_ids])
        block = self.store.read_views(rows, np.zeros_like(rows))  # [B, T, D] float16
        return torch.from_numpy(block).to(self.device).float()

    def features(self, items: Sequence[Item]) -> torch.Tensor:
        return self.read([it.image_id for it in items])


def open_features(from_cache: str | None, device: torch.device, *, encoder: str | None = None,
                  weights: str | os.PathLike | None = None, image_size: int | None = None,
                  expected: dict[str, Any] | None = None, expected_what: str = "the features expected",
                  split: str | None = None, require_complete: bool = True) -> FeatureSource:
    """The feature source of a command: the store `from_cache` when given, else the live encoder `encoder`
    (weights from `weights` or the local caches) at side `image_size` (default: `expected`'s input side,
    else the encoder's). Either is refused with one line unless it gives the features `expected` (a
    contract; `expected_what` names it in the message); a store also unless it is complete (when
    `require_complete`), of `split` (when given) and of encoder `encoder` (when given)."""
    if from_cache:
        from adaslot.store import open_store

        store = open_store(str(from_cache))
        store.check_compatible(expected, encoder=encoder, split=split, require_complete=require_complete)
        return StoreFeatures(store, device)
    from adaslot.contract import check_contract
    from adaslot.encoders import build_encoder

    name = encoder or (expected or {}).get("encoder")
    if not name:
        raise AdaslotError("no encoder to compute features with: give --encoder or a feature store")
    side = image_size or ((expected or {}).get("input_size") or [None])[0]
    live = LiveFeatures(build_encoder(name, weights, device=device, image_size=side), side, device)
    what = f"--encoder-weights {weights}" if weights else "the encoder weights found"
    check_contract(expected, live.contract, what, expected_what, ENCODER_FIX)
    return live


def checkpoint_features(payload: dict[str, Any], device: torch.device, from_cache: str | None = None,
                        weights: str | os.PathLike | None = None, split: str | None = None) -> FeatureSource:
    """The features a checkpoint's model takes (its recorded `feature_contract`): from the store
    `from_cache`, or from the encoder it was trained with, at its side; refused with one line when the
    contract, the token count T or the width D differ from the checkpoint's."""
    from adaslot.checkpoint import check_feature_shape

    trained_on = payload.get("feature_contract") or {"encoder": payload.get("encoder")}
    source = open_features(from_cache, device, encoder=None if from_cache else payload["encoder"],
                           weights=weights, expected=trained_on,
                           expected_what="the checkpoint's feature contract", split=split,
                           require_complete=True)
    check_feature_shape(source.contract, payload)
    return source
