"""The release encoders end to end, from random weights placed where a download would go (torch hub's
checkpoint folder): a store per encoder at a small side, a sweep over stores of different encoders (D and T
differ; each variant's model follows its store), a stage-1 run per encoder, `adaslot segment` with each.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_FLAGS, run_cli, tiny_train
from PIL import Image
from release_weights import RELEASES, release_state

from adaslot.checkpoint import latest_checkpoint, load_checkpoint
from adaslot.encoders import get_encoder_spec

SIDE = {8: 48, 14: 56}  # small inputs: 6 x 6 and 4 x 4 tokens (the position embedding is interpolated)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """TORCH_HOME whose hub/checkpoints/ holds every release file (random weights); empty HF cache."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    for name in RELEASES:
        torch.save(release_state(name), home / "hub" / "checkpoints" / get_encoder_spec(name).release_file)
    mp = pytest.MonkeyPatch()
    from huggingface_hub import constants

    mp.setenv("TORCH_HOME", str(home))  # read by torch.hub.get_dir, here and in subprocesses
    mp.setattr(torch.hub, "_hub_dir", None)
    mp.setenv("HF_HUB_CACHE", str(home / "hf"))
    mp.setattr(constants, "HF_HUB_CACHE", str(home / "hf"))
    yield home
    mp.undo()


def make_store(out: Path, name: str, coco: Path) -> Path:
    from adaslot.config import CacheConfig, DataSpec
    from adaslot.store.writer import run_cache_features

    side = SIDE[get_encoder_spec(name).patch_size]
    run_cache_features(CacheConfig(out=str(out), data=DataSpec(root=str(coco)), encoder=name, image_size=side,
                               views=1, chunk_samples=4, shard_samples=8, batch_size=6, workers=0,
                               device="cpu", progress=False))
    return out


@pytest.fixture(scope="module")
def stores(hub, synthetic_coco, tmp_path_factory):
    root = tmp_path_factory.mktemp("enc_stores")
    return {name: make_store(root / f"{name}.zarr", name, synthetic_coco) for name in RELEASES}


def _segment(ckpt: Path, image: Path, out: Path, monkeypatch, capsys) -> np.ndarray:  # noqa: ANN001
    code, err = run_cli(["segment", str(ckpt), str(image), "--out", str(out), "--workers", "0",
                         "--device", "cpu", "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    return np.asarray(Image.open(out / "masks" / (image.stem + ".png")))


@pytest.mark.e2e  # whole commands
def test_sweep_over_stores_of_different_encoders(stores, synthetic_coco, tmp_path, monkeypatch, capsys):
    a, b = stores["dino-vits-8"], stores["dinov2-vitb-14-reg"]
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--grid", f"from_cache={a},{b}", "--val-root", str(synthetic_coco),
            *TINY_FLAGS, "--batch-size", "4", "--lr-schedule", "constant", "--lr", "1e-3", "--num-slots", "4",
            "--workers", "0", "--num-iters", "2", "--ckpt-every", "2", "--score-images", "1", "--no-progress"]
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and all(r["fg_ari"] not in ("", None) for r in table)
    image = next((synthetic_coco / "val2017").iterdir())
    for store, (t, d) in ((a, (36, 384)), (b, (16, 768))):
        run = next(p for p in (out / "runs").iterdir() if store.stem in p.name)
        ckpt = latest_checkpoint(run / "checkpoints")
        payload = load_checkpoint(ckpt)
        model = payload["model_config"]
        assert (model["num_tokens"], model["feature_dim"]) == (t, d), run.name  # the store's contract
        assert payload["feature_contract"]["encoder"] == store.stem
        assert json.loads((run / "score.json").read_text())["step"] == 2
        labels = _segment(ckpt, image, tmp_path / f"seg-{store.stem}", monkeypatch, capsys)
        assert labels.shape == Image.open(image).size[::-1]  # masks at the image's full resolution


@pytest.mark.e2e  # whole commands
@pytest.mark.parametrize("name", ["dinov2-vits-14", "dinov2-vits-14-reg"])
def test_stage1_run_and_segment(name, stores, synthetic_coco, tmp_path, monkeypatch, capsys):
    from adaslot.train import run_train

    run = tmp_path / "run"
    run_train(tiny_train(run, from_cache=str(stores[name]), num_iters=2))
    ckpt = latest_checkpoint(run / "checkpoints")
    payload = load_checkpoint(ckpt)
    d = RELEASES[name][1]
    assert (payload["model_config"]["num_tokens"], payload["model_config"]["feature_dim"]) == (16, d)
    assert payload["feature_contract"]["input_size"] == [56, 56]
    image = next((synthetic_coco / "val2017").iterdir())
    labels = _segment(ckpt, image, tmp_path / "seg", monkeypatch, capsys)
    assert labels.shape == Image.open(image).size[::-1]
    if name != "dinov2-vits-14-reg":
        return
    # every eval protocol at this side (4 x 4 alpha grid), masks saved at the original resolution
    code, err = run_cli(["eval", str(ckpt), "--root", str(synthetic_coco), "--out", str(tmp_path / "ev"),
                         "--max-images", "1", "--save-masks", "--num-vis", "0", "--workers", "0",
                         "--no-progress", "--device", "cpu"], monkeypatch, capsys)
    assert code in (0, None), err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(m["protocols"]) == {"adaslot", "dinosaur", "fullres"}
    assert all(p["num_images"] == 1 for p in m["protocols"].values())
    saved = sorted((tmp_path / "ev" / "masks").rglob("*.png"))
    assert saved and np.asarray(Image.open(saved[0])).shape == Image.open(image).size[::-1]
