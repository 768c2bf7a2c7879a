"""One feature source (adaslot/features.py): a feature store and the live encoder give the same features for
the same images, one check refuses the wrong features, and evaluation runs on it with options of its own."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_MODEL, tiny_train

from adaslot.config import DataSpec, EvalConfig, model_config_for
from adaslot.contract import IDENTITY_KEYS, contract_difference
from adaslot.data.coco import CocoDataset
from adaslot.errors import AdaslotError
from adaslot.evaluate import EvalDataset, EvalOptions, evaluate_model
from adaslot.features import LiveFeatures, StoreFeatures, open_features
from adaslot.model import AdaSlot

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sources(train_store):
    """(the train store's features, the live encoder built for them by the one check)."""
    store = open_features(str(train_store), CPU, split="train")
    live = open_features(None, CPU, encoder="random-vit-tiny", expected=store.contract,
                         expected_what="the store's features")
    return store, live


def test_store_and_live_features_agree_within_fp16_rounding(sources, synthetic_coco):
    store, live = sources
    assert isinstance(store, StoreFeatures) and isinstance(live, LiveFeatures)
    assert (store.needs_images, live.needs_images) == (False, True)
    assert contract_difference(store.contract, live.contract) is None
    assert {k: store.contract[k] for k in IDENTITY_KEYS} == {k: live.contract[k] for k in IDENTITY_KEYS}
    shape = (store.encoder_name, store.image_size, store.num_tokens, store.feature_dim)
    assert shape == (live.encoder_name, live.image_size, live.num_tokens, live.feature_dim)
    assert shape == ("random-vit-tiny", 224, 196, 192)
    coco = CocoDataset.from_root(synthetic_coco, "train", size=store.image_size)
    indices = store.covering(coco)
    assert indices == list(range(len(coco))) and live.covering(coco) is None
    items = [EvalDataset(coco)[i] for i in indices[:5]]
    a, b = store.features(items), live.features(items)
    assert a.shape == b.shape == (5, 196, 192) and a.dtype == b.dtype == torch.float32
    assert not torch.equal(a, b)  # the store holds float16 ...
    torch.testing.assert_close(a, b, rtol=2 ** -10, atol=1e-4)  # ... of the same features
    assert torch.equal(a, a.half().float())


def test_a_store_of_other_features_is_refused_by_the_one_check(train_store, sources):
    store, _ = sources
    other = {**store.contract, "weights_sha256": "0" * 64}  # e.g. the features of other encoder weights
    for kwargs in ({"expected": other}, {"encoder": "dino-vitb-16"}, {"split": "val"}):
        with pytest.raises(AdaslotError) as e:
            open_features(str(train_store), CPU, **kwargs)
        msg = str(e.value)
        assert "\n" not in msg and f"feature store {train_store}" in msg, msg
    with pytest.raises(AdaslotError, match="weights_sha256") as e:  # the live encoder: the same rule
        open_features(None, CPU, encoder="random-vit-tiny", expected=other,
                      expected_what="the run's features")
    assert "\n" not in str(e.value) and "does not match the run's features" in str(e.value)


def test_evaluate_model_takes_options_not_a_command_config(sources, synthetic_coco, monkeypatch):
    store, live = sources
    torch.manual_seed(0)
    model = AdaSlot(model_config_for("coco", 1, feature_dim=192, num_tokens=196, num_slots=4, **TINY_MODEL))

    def no_eval_config(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("evaluate_model built an EvalConfig")

    monkeypatch.setattr(EvalConfig, "__init__", no_eval_config)
    coco = CocoDataset.from_root(synthetic_coco, "train", size=224)
    options = EvalOptions(protocols=("adaslot",), batch_size=5, workers=0, seed=1)
    by_store = evaluate_model(model, store, coco, options)
    by_live = evaluate_model(model, live, coco, options)
    assert by_store["num_images"] == by_live["num_images"] == 12
    for key in ("fg_ari", "mbo_i", "miou"):  # fp16 storage moves a few near-tie pixels at most
        assert by_store["protocols"]["adaslot"][key] == pytest.approx(by_live["protocols"]["adaslot"][key],
                                                                      abs=2e-3), key
    with pytest.raises(AdaslotError, match="unknown --protocol"):
        EvalOptions(protocols=("coco",))


def test_eval_config_converts_in_one_place():
    cfg = EvalConfig(checkpoint="c", protocol="adaslot,fullres", batch_size=3, workers=1, max_images=7,
                     gumbel_eval=5, seed=2, data=DataSpec(split="val", strict=True))
    cfg.method.merge_slots = 0.25
    assert EvalOptions.from_config(cfg) == EvalOptions(
        protocols=("adaslot", "fullres"), batch_size=3, workers=1, max_images=7, gumbel_eval=5, seed=2,
        method={"merge_slots": 0.25}, strict=True)
    assert EvalOptions().protocols == EvalConfig(checkpoint="c").protocols  # the same defaults


def test_validation_options_come_from_the_train_settings(tmp_path, train_store):
    from adaslot.train.validate import Validator

    cfg = tiny_train(tmp_path, from_cache=str(train_store), seed=3, workers=1, val_max_images=5)
    v = Validator(cfg, open_features(str(train_store), CPU), CPU, method={"merge_slots": 0.5})
    assert v.options() == EvalOptions(protocols=("adaslot",), workers=1, max_images=5, seed=3,
                                      method={"merge_slots": 0.5})
    assert v.options().batch_size == EvalOptions().batch_size  # the documented default
