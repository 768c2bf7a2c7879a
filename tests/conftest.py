"""Shared fixtures: a tiny synthetic COCO dataset and a train feature store made from it, once per session.
Shared helpers (not fixtures) are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaslot.data.make_synthetic import run_make_synthetic
from adaslot.data.synthetic import SyntheticConfig


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Benchmark-marked tests run only when a -m expression names them (`pytest -m benchmark`): any other
    selection (`make test`, the inner loop `pytest -m "not e2e"`) leaves them out."""
    if "benchmark" in (config.option.markexpr or ""):
        return
    dropped = [item for item in items if item.get_closest_marker("benchmark")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("benchmark")]


# Small enough to write in well under a second; 224 px so the ViT sees its native 14 x 14 token grid.
TINY_TRAIN, TINY_VAL, TINY_SIZE = 12, 6, 224


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny synthetic COCO dataset: train2017/ (12 JPEGs), val2017/ (6), annotations/*.json.

    Read-only for tests: copy it (shutil.copytree) before writing into it.
    """
    root = tmp_path_factory.mktemp("synthetic") / "coco"
    run_make_synthetic(SyntheticConfig(
        out=str(root), num_train=TINY_TRAIN, num_val=TINY_VAL, image_size=TINY_SIZE, seed=0, progress=False,
    ))
    return root


@pytest.fixture(scope="session")
def train_store(synthetic_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete 2-view train store of `synthetic_coco` (random-vit-tiny, 196 x 192 tokens), chunks of 4.
    Read-only for tests."""
    from adaslot.config import CacheConfig, DataSpec
    from adaslot.store.writer import run_cache_features

    out = tmp_path_factory.mktemp("train_store") / "train.zarr"
    run_cache_features(CacheConfig(out=str(out), data=DataSpec(root=str(synthetic_coco)),
                               encoder="random-vit-tiny", chunk_samples=4, shard_samples=8, batch_size=6,
                               workers=0, device="cpu", progress=False))
    return out


MOVI_TRAIN, MOVI_VAL = 3, 2  # videos of 24 frames, 128 px (make-synthetic --format movi)


@pytest.fixture(scope="session")
def movi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make-synthetic --format movi: 3 train / 2 val videos of 24 frames, 128 px, 2 videos per shard.
    Read-only for tests (copy before damaging)."""
    root = tmp_path_factory.mktemp("movi") / "movi"
    from adaslot.data.movi_synthetic import write_movi_synthetic

    write_movi_synthetic(SyntheticConfig(out=str(root), format="movi", num_train=MOVI_TRAIN, num_val=MOVI_VAL,
                                        shard_videos=2, seed=0, min_objects=2, max_objects=4, progress=False))
    return root
