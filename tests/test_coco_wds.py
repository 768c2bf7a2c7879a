"""`--dataset coco-wds`: ocl's COCO webdataset shards give the samples, masks and metrics of the pycocotools
path on the same images (crowd included, members gzipped or not)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL
from pycocotools.coco import COCO

from adaslot.config import DataSpec, EvalConfig, model_config_for
from adaslot.data import wds
from adaslot.data.coco import CocoDataset
from adaslot.data.coco_wds import CocoWdsDataset
from adaslot.data.datasets import open_dataset
from adaslot.data.make_synthetic import run_make_synthetic
from adaslot.data.synthetic import SyntheticConfig
from adaslot.errors import AdaslotError


def write_coco_shards(coco: COCO, images_dir: Path, out: Path, per_shard: int = 1000, seed: int = 23894734
                      ) -> int:
    """Write a pycocotools COCO object's images as ocl's conversion does (shuffled order, 1 000 per shard,
    members over 512 bytes gzipped) into out/shard-NNNNNN.tar; returns the number of samples."""
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(coco.imgs)
    random.Random(seed).shuffle(ids)

    def member(name: str, array: np.ndarray) -> tuple[str, bytes]:
        data = wds.npy_bytes(array)
        return (f"{name}.npy.gz", wds.gzip_bytes(data)) if len(data) > 512 else (f"{name}.npy", data)

    samples = []
    for image_id in ids:
        anns = coco.loadAnns(coco.getAnnIds(image_id))
        members: dict[str, bytes] = {}
        if anns:
            members.update([
                member("instance_mask", np.stack([coco.annToMask(a) for a in anns])[..., None]),
                member("instance_bbox", np.array([a["bbox"] for a in anns], np.float32)),
                member("instance_category", np.array([a["category_id"] for a in anns], np.uint8)),
                member("instance_area", np.array([a["area"] for a in anns], np.float32)),
            ])
        members["image.jpg"] = (images_dir / coco.imgs[image_id]["file_name"]).read_bytes()
        samples.append((str(image_id), members))
    for n in range(0, len(samples), per_shard):
        wds.write_shard(out / f"shard-{n // per_shard:06d}.tar", samples[n:n + per_shard])
    return len(samples)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("coco_wds")
    coco = base / "coco"
    run_make_synthetic(SyntheticConfig(out=str(coco), num_train=2, num_val=5, crowd_prob=0.3, seed=3,
                                   progress=False))
    ds = CocoDataset.from_root(coco, "val")
    # two images per shard, written in ocl's shuffled order
    annotations = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    write_coco_shards(ds.coco, coco / "val2017", base / "wds" / "val", per_shard=2)
    assert any(a["iscrowd"] for a in annotations["annotations"])
    return coco, base / "wds"


def test_same_samples_and_masks_as_pycocotools(roots):
    coco_root, shards = roots
    a = open_dataset(DataSpec(root=str(coco_root), split="val"), 224)
    b = open_dataset(DataSpec(dataset="coco-wds", root=str(shards), split="val"), 224)
    assert isinstance(b, CocoWdsDataset) and a.image_ids == b.image_ids and len(b) == 5
    members = {m for s in b._samples for m in s.members}
    assert {"instance_mask.npy.gz", "instance_category.npy"} <= members  # gzipped or not, per member
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and x["geometry"] == y["geometry"]
        ga, gb = a.ground_truth(x["image_id"]), b.ground_truth(x["image_id"])  # crowd included in both
        assert np.array_equal(ga.instance_masks, gb.instance_masks)
        assert np.array_equal(ga.category_ids, gb.category_ids)
        assert np.array_equal(ga.class_masks, gb.class_masks)


def test_same_metrics_as_pycocotools(roots):
    from adaslot.encoders import build_encoder
    from adaslot.evaluate import EvalOptions, evaluate_model
    from adaslot.features import LiveFeatures
    from adaslot.model import AdaSlot

    coco_root, shards = roots
    torch.manual_seed(0)
    model = AdaSlot(model_config_for("coco", 1, feature_dim=192, num_tokens=196, num_slots=4, **TINY_MODEL))
    encoder = LiveFeatures(build_encoder("random-vit-tiny"))
    out = []
    for data in (DataSpec(root=str(coco_root), split="val"),
                 DataSpec(dataset="coco-wds", root=str(shards), split="val")):
        cfg = EvalConfig(checkpoint="-", data=data, protocol="adaslot,fullres", workers=0, batch_size=2)
        out.append(evaluate_model(model, encoder, open_dataset(data, 224), EvalOptions.from_config(cfg))
                   ["protocols"])
    assert json.dumps(out[0], sort_keys=True) == json.dumps(out[1], sort_keys=True)
    assert out[0]["adaslot"]["num_images"] == 5
    with pytest.raises(AdaslotError, match="iscrowd"):
        data = DataSpec(dataset="coco-wds", root="r")
        EvalConfig(checkpoint="x", protocol="dinosaur", data=data).validate()


def test_bad_shards_are_listed(roots, tmp_path):
    import shutil

    _coco, shards = roots
    root = tmp_path / "wds"
    shutil.copytree(shards, root)
    last = sorted((root / "val").glob("shard-*.tar"))[-1]
    last.write_bytes(last.read_bytes()[:700])  # cut inside its first sample
    ds = CocoWdsDataset(root, "val")
    assert ds.skips.counts() == {"truncated": 1} and len(ds) == 4
    with pytest.raises(AdaslotError, match="truncated.*drop --strict"):
        open_dataset(DataSpec(dataset="coco-wds", root=str(root), split="val", strict=True), 224)
