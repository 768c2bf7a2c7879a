"""MOVi through the pipeline: cache-features (one sample per (video, frame), key and frame recorded), the
store gives the same training step as online, eval's movi protocol, runs repeat exactly, presets against
the official configs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL, assert_same_update, first_step, tiny_train

from adaslot.config import CacheConfig, DataSpec, EvalConfig, TrainConfig, get_preset, model_config_for
from adaslot.data.movi import MoviDataset, split_sample_id
from adaslot.store import open_store
from adaslot.store.writer import run_cache_features


@pytest.fixture(scope="module")
def movi_store(movi_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("movi_store") / "train.zarr"
    run_cache_features(CacheConfig(out=str(out), data=DataSpec(dataset="movi", root=str(movi_root / "tfds")),
                               encoder="random-vit-tiny", chunk_samples=3, shard_samples=9, batch_size=9,
                               workers=0, device="cpu", progress=False))
    return out


@pytest.mark.e2e  # cache-features over MOVi videos first
def test_store_holds_one_view_per_official_frame(movi_store):
    store = open_store(str(movi_store))
    assert store.num_views == 1 and store.attrs["dataset"]["name"] == "movi"
    pairs = [split_sample_id(i) for i in np.asarray(store.image_ids)]
    for key in range(3):
        frames = [t for k, t in pairs if k == key]
        assert frames == random.Random(key + 457834752).sample(range(24), k=9)
    assert len(pairs) == 27


@pytest.mark.e2e  # cache-features over MOVi videos first
def test_one_step_from_the_store_equals_online(movi_store, movi_root):
    """Same frames, same noise: the cached fp16 features and the online encoder give the same update."""
    from adaslot.encoders import build_encoder

    store = open_store(str(movi_store))
    cached = torch.from_numpy(np.asarray(store.features[0:4]))[:, 0].float()
    ds = MoviDataset(movi_root / "wds", "train", size=224)  # the other layout: same frames
    images = torch.stack([ds[ds.index_of(int(i))]["image"] for i in store.image_ids[:4]])
    online = build_encoder("random-vit-tiny")(images)
    cfg = model_config_for("movi-c", 1, feature_dim=192, num_tokens=196, num_slots=4, **TINY_MODEL)
    assert_same_update(first_step(cfg, cached), first_step(cfg, online))


@pytest.mark.e2e
def test_online_train_and_eval_repeat_exactly(movi_root, tmp_path):
    """Online training (no flip) and eval's movi protocol are functions of the data and the seed."""
    from adaslot.evaluate.run import run_eval
    from adaslot.train import run_train

    runs = []
    for n in range(2):
        run = tmp_path / f"run{n}"
        data = DataSpec(dataset="movi", root=str(movi_root / "wds"))
        ckpt = run_train(tiny_train(run, data=data, preset="movi-c", encoder="random-vit-tiny", batch_size=3,
                                num_iters=2, val_every=2, val_max_images=4))
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        res = run_eval(EvalConfig(checkpoint=str(ckpt["checkpoint"]), out=str(tmp_path / f"ev{n}"),
                                  data=DataSpec(dataset="movi", root=str(movi_root / "tfds"), split="val"),
                                  max_images=6, num_vis=1, workers=0, device="cpu", progress=False))
        timing = ("steps_per_s", "step_s")  # wall-clock fields: the only ones allowed to differ
        runs.append(json.dumps(([{k: v for k, v in r.items() if k not in timing} for r in rows],
                                res["protocols"]), sort_keys=True))
    assert runs[0] == runs[1]
    runs = [json.loads(r) for r in runs]
    assert list(runs[0][1]) == ["movi"] and runs[0][1]["movi"]["num_images"] == 6
    assert any("val/fg_ari" in r for r in runs[0][0])


def test_movi_presets_match_the_official_configs():
    """Official AdaSlot MOVi configs (docs/method.md#movi), field by field; differences are listed there."""
    official = {
        "movi-c": {"num_slots": 11, "stage1_steps": 500_000},
        "movi-e": {"num_slots": 24, "stage1_steps": 100_000},
    }
    for name, o in official.items():
        p = get_preset(name)
        m = p.model
        assert (p.encoder, m.feature_dim, m.num_tokens) == ("dino-vitb-16", 768, 196)  # ViT-B/16, 196 tokens
        assert (m.num_slots, p.num_slots_stage1, p.num_slots_stage2) == (o["num_slots"],) * 3
        assert (m.slot_dim, m.input_mlp_hidden, m.slot_mlp_hidden) == (128, 768, 4 * 128)
        assert m.decoder_hidden == (1024, 1024, 1024)
        for stage, steps in ((1, o["stage1_steps"]), (2, 500_000)):
            t = TrainConfig(out="x", preset=name, stage=stage, from_cache="s").resolved()
            assert t.num_iters == steps
            assert (t.lr, t.warmup_steps, t.lr_half_life, t.lr_schedule) == (4e-4, 10_000, 100_000, "adaslot")
            assert (t.batch_size, t.grad_clip, t.sparsity_weight) == (64, 1.0, 0.1)
        assert model_config_for(name, 2).adaptive and not model_config_for(name, 1).adaptive
