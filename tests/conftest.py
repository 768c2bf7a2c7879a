"""Shared fixtures. `synthetic_coco`: a tiny COCO-2017-layout dataset written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaslot.data.synthetic import SyntheticConfig, make_synthetic

# Small enough to write in well under a second; 224 px so the ViT sees its native 14 x 14 token grid.
TINY_TRAIN, TINY_VAL, TINY_SIZE = 12, 6, 224


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny synthetic COCO dataset: train2017/ (12 JPEGs), val2017/ (6), annotations/*.json.

    Read-only for tests: copy it (shutil.copytree) before writing into it.
    """
    root = tmp_path_factory.mktemp("synthetic") / "coco"
    make_synthetic(SyntheticConfig(
        out=str(root), num_train=TINY_TRAIN, num_val=TINY_VAL, image_size=TINY_SIZE, seed=0, progress=False,
    ))
    return root
