"""Training inputs: features [b, T, D] float32 on the device, this rank's rows of each global batch.

  CacheSource    a feature store (adaslot.store.loader), one stored view per sample
  OnlineSource   images -> train transform (docs/method.md#transforms, random flip) -> frozen encoder
Both stream over the run's feature source (adaslot.features: `features`, which decides store or live and
checks it) and expose its feature_dim, num_tokens, contract and encoder_name, plus next_batch(),
state_dict() / load_state_dict() (the resume position) and close().
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from adaslot import distributed
from adaslot.config import TrainConfig, get_preset
from adaslot.device import resolve_workers
from adaslot.errors import AdaslotError
from adaslot.features import FeatureSource, LiveFeatures, StoreFeatures, open_features


class SampleStream:
    """The online sample order: an endless stream of (dataset index, flip) over epochs.

    Epoch e is a permutation of the N images plus one flip bit each (p = 0.5), both from a generator seeded
    with (seed, e); global batch j is stream positions [j B, (j + 1) B) and rank r takes its slice. The
    position `consumed` is the whole state, so resume (and any rank count) reproduces the same stream.
    """

    def __init__(self, n: int, seed: int, global_batch: int, rows: slice, consumed: int = 0) -> None:
        self.n, self.seed, self.global_batch, self.rows, self.consumed = n, seed, global_batch, rows, consumed
        self._epoch, self._perm, self._flip = -1, torch.empty(0), torch.empty(0)

    def _at(self, pos: int) -> tuple[int, bool]:
        epoch, i = divmod(pos, self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm, self._flip = epoch, torch.randperm(self.n, generator=g), \
                torch.rand(self.n, generator=g) < 0.5
        return int(self._perm[i]), bool(self._flip[i])

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        start = self.consumed
        while True:
            batch = [self._at(p) for p in range(start, start + self.global_batch)][self.rows]
            start += self.global_batch
            yield batch


class FlippedViews(torch.utils.data.Dataset):
    """dataset[(i, flip)] = dataset[i], the image horizontally flipped when flip (the train augmentation)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool]) -> dict[str, Any]:
        from adaslot.data.transforms import hflip

        index, flip = key
        item = self.dataset[index]
        if item["ok"] and flip and getattr(self.dataset, "flip", True):  # MOVi: never (docs/method.md#movi)
            item["image"] = hflip(item["image"])
        return item


class _Features:
    """The feature source's description, shared by both inputs."""

    features: FeatureSource

    def _describe(self, features: FeatureSource) -> None:
        self.features, self.device = features, features.device
        self.feature_dim, self.num_tokens = features.feature_dim, features.num_tokens
        self.contract, self.encoder_name = features.contract, features.encoder_name


class OnlineSource(_Features):
    """Images -> train transform (resize, clamp, center crop, random flip) -> frozen encoder."""

    def __init__(self, cfg: TrainConfig, dist: distributed.DistInfo, local_batch: int,
                 features: LiveFeatures) -> None:
        from adaslot.data.coco import collate
        from adaslot.data.datasets import open_dataset

        self._describe(features)
        self.live = features
        self.dataset = open_dataset(cfg.data, features.image_size)
        self.cfg, self.dist, self.collate = cfg, dist, collate
        rows = slice(dist.rank * local_batch, (dist.rank + 1) * local_batch)
        n = min(len(self.dataset), cfg.max_train_images or len(self.dataset))  # --max-train-images
        self.stream = SampleStream(n, cfg.seed, cfg.batch_size, rows)
        self._iter: Any = None

    def _start(self) -> None:
        workers = resolve_workers(self.cfg.workers)
        loader = torch.utils.data.DataLoader(
            FlippedViews(self.dataset), batch_sampler=self.stream, num_workers=workers,
            collate_fn=self.collate, pin_memory=self.device.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if workers else None,
        )
        self._iter = iter(loader)

    def next_batch(self) -> torch.Tensor:
        """-> features [b, T, D] float32 (b < local batch only if an image could not be decoded)."""
        if self._iter is None:
            self._start()
        empty = 0  # samples drawn since the last usable one
        while True:
            batch = next(self._iter)
            self.stream.consumed += self.cfg.batch_size
            new_skips = self.dataset.record(batch)
            if self.cfg.data.strict and new_skips:  # workers skip; the policy is applied here
                raise new_skips[0].strict_error()
            if len(batch["index"]):
                return self.live.encode(batch["image"])
            empty += self.cfg.batch_size
            if empty > 2 * len(self.dataset):  # two epochs without one readable image: it would loop forever
                raise AdaslotError("no training image could be read (skip reasons: "
                                   f"{self.dataset.skips.summary()})")

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.stream.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.consumed = int(state["consumed"])
        self._iter = None

    def close(self) -> None:
        self._iter = None


class CacheSource(_Features):
    """Features streamed from a feature store (adaslot.store.loader); one random stored view per sample."""

    def __init__(self, cfg: TrainConfig, dist: distributed.DistInfo, local_batch: int,
                 features: StoreFeatures) -> None:
        from adaslot.store.loader import FeatureLoader

        self._describe(features)
        store = features.store
        movi = store.attrs.get("dataset", {}).get("name") == "movi"  # trained without flips anyway
        if store.num_views == 1 and dist.is_main and not movi:
            print(f"note: {cfg.from_cache} stores one view per image, so training sees no flips "
                  "(cache the train split with 2 views to match the reference augmentation)")
        # device: the loader copies batches ahead onto the device and converts them there (fp16 -> fp32).
        self.loader = FeatureLoader(store, local_batch, seed=cfg.seed, in_memory=cfg.cache_in_memory,
                                    max_samples=cfg.max_train_images,
                                    rank=dist.rank, world_size=dist.world_size, device=self.device)

    def next_batch(self) -> torch.Tensor:
        """-> features [b, T, D] float32 on the device (stored as float16)."""
        feats, _rows = next(self.loader)
        return feats

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def close(self) -> None:
        self.loader.close()


def build_source(cfg: TrainConfig, dist: distributed.DistInfo,
                 local_batch: int) -> CacheSource | OnlineSource:
    """The input of this run: a feature store (`--from-cache`; refused, in one line, unless complete, of the
    train split and of `--encoder` when given) or images through the frozen encoder (`--encoder`, default
    the preset's, at `--image-size`, default the encoder's)."""
    encoder = cfg.encoder if cfg.from_cache else cfg.encoder or get_preset(cfg.preset).encoder
    features = open_features(cfg.from_cache, dist.device, encoder=encoder, weights=cfg.encoder_weights,
                             image_size=cfg.image_size, split="train", require_complete=True)
    if isinstance(features, StoreFeatures):
        return CacheSource(cfg, dist, local_batch, features)
    assert isinstance(features, LiveFeatures)
    return OnlineSource(cfg, dist, local_batch, features)
