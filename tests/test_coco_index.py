"""The image list of a COCO-format json read without its annotations (data/coco_index.py), and
cache-features, which reads nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adaslot.data import coco_index
from adaslot.data.coco_index import load_coco, read_image_list
from adaslot.errors import AdaslotError


def test_image_list_equals_pycocotools(synthetic_coco: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Same {id: entry} as pycocotools, whatever the member order and however small the first block."""
    ann = synthetic_coco / "annotations" / "instances_val2017.json"
    want = load_coco(ann).imgs
    assert read_image_list(ann) == want and len(want) == 6
    data = json.loads(ann.read_text())
    reordered = tmp_path / "reordered.json"  # annotations first, pretty-printed: still found
    reordered.write_text(json.dumps({"annotations": data["annotations"], "info": {"x": [1, {"y": "}"}]},
                                     "images": data["images"], "categories": data["categories"]}, indent=2))
    monkeypatch.setattr(coco_index, "FIRST_BLOCK", 50)  # many growing reads
    assert read_image_list(ann) == want and read_image_list(reordered) == want


@pytest.mark.parametrize("text, what", [('{"images": [{"id": 1, "file_name": "a.jpg"}', "not valid JSON"),
                                        ('{"annotations": []}', "not in COCO format"),
                                        ('{"images": [{"file_name": "a.jpg"}]}', "not in COCO format"),
                                        ("[1, 2]", "not valid JSON"), ("", "not valid JSON")])
def test_bad_files_are_one_line_errors(tmp_path: Path, text: str, what: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(AdaslotError, match=what) as e:
        read_image_list(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(AdaslotError, match="not found"):
        read_image_list(tmp_path / "none.json")


def test_cache_features_does_not_read_annotations(synthetic_coco: Path, tmp_path: Path) -> None:
    """A json whose annotations are not even valid JSON: pycocotools refuses it, cache-features caches the
    split (it needs the image list alone), and --strict, which checks the annotations, refuses it."""
    from adaslot.config import CacheConfig, DataSpec
    from adaslot.data.coco import CocoDataset
    from adaslot.store.writer import run_cache_features

    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    ann = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    images = json.dumps(data["images"])
    ann.write_text('{"info": {}, "images": ' + images + ', "annotations": [{"id": 1, oops')
    with pytest.raises(AdaslotError, match="not valid JSON"):
        CocoDataset(root / "val2017", ann)
    spec = DataSpec(root=str(root), split="val")
    cfg = CacheConfig(out=str(tmp_path / "val.zarr"), data=spec, encoder="demo-colour-pos", image_size=64,
                      workers=0, device="cpu", progress=False)
    assert run_cache_features(cfg)["images_written"] == 6
    strict = CacheConfig(out=str(tmp_path / "strict.zarr"), data=DataSpec(root=str(root), split="val",
                         strict=True), encoder="demo-colour-pos", image_size=64, workers=0, device="cpu",
                         progress=False)
    with pytest.raises(AdaslotError, match="not valid JSON"):
        run_cache_features(strict)
