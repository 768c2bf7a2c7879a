"""A setting's declared properties (`setting(resumable=, input=, warmstart_free=, axis=, method=)`) agree with
the code that enforces them: every field is changed in turn and the real resume check, cache loader, warm
start, sweep batch sharing and inference-method override are asked what they make of the change."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from helpers import tiny_train

from adaslot.checkpoint import warm_start
from adaslot.config import DataSpec, ModelConfig, RunSpec, TrainConfig
from adaslot.config.base import base_type, field_types, names_where
from adaslot.config.model import MethodOverrides, method_fields, overridable_method_fields
from adaslot.config.sweep import axis_value, hidden_axes, warmstart_free_keys
from adaslot.distributed import DistInfo
from adaslot.errors import AdaslotError
from adaslot.model import AdaSlot
from adaslot.sweep.plan import share_groups
from adaslot.train import build_source, changed_settings


def other_value(cls: type, f: dataclasses.Field, value: typing.Any) -> typing.Any:
    """A valid value of field `f` of `cls` other than `value`."""
    t, _optional = base_type(field_types(cls)[f.name])
    choices = f.metadata.get("choices")
    if choices:
        return next(c for c in choices if c != value)
    if t is bool:
        return not value
    if t is int:
        return (value or 1) + 1
    if t is float:
        if value is None:  # an optional float (e.g. --merge-slots): any value in its range
            return 0.5
        return value / 2 if f.metadata.get("max") is not None else value * 2 + 0.5
    if t is str:
        return f"{value or 'somewhere'}-else"
    if typing.get_origin(t) is tuple:
        return (*value, 8)
    if typing.get_origin(t) is dict:
        return {"slot_dim": 8}
    raise AssertionError(f"no other value for {cls.__name__}.{f.name}")


def train_changes(base: TrainConfig) -> dict[str, TrainConfig]:
    """flat setting name -> `base` with that one setting changed (DataSpec's settings included)."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "data":
            out[f.name] = base.replace(**{f.name: other_value(TrainConfig, f, getattr(base, f.name))})
    for f in dataclasses.fields(DataSpec):
        out[f.name] = base.replace(data=base.data.replace(
            **{f.name: other_value(DataSpec, f, getattr(base.data, f.name))}))
    return out


@pytest.fixture()
def base(tmp_path, train_store) -> TrainConfig:
    return tiny_train(tmp_path / "run", from_cache=str(train_store), seed=1)


def test_resumable_settings_are_what_the_resume_check_and_the_cache_loader_allow(base):
    """A rerun may change a setting iff the run's resume check lets it; the loader must then continue the
    same sample stream (cache_in_memory, whose loader draws its own order, is not resumable)."""
    resumable = names_where(TrainConfig, "resumable")
    dist = DistInfo()
    saved = build_source(base, dist, base.batch_size)
    state = saved.state_dict()
    saved.close()
    for name, cfg in train_changes(base).items():
        refused = changed_settings(RunSpec.resolve(base, 192, 196), RunSpec.resolve(cfg, 192, 196))
        assert (not refused) == (name in resumable), (name, refused)
        try:
            source = build_source(cfg, dist, cfg.batch_size)
            source.load_state_dict(state)
            source.close()
        except AdaslotError as e:
            assert name not in resumable, f"{name} is declared resumable, but the loader refuses it: {e}"


def _batches(cfg: TrainConfig, n: int = 2) -> list[torch.Tensor]:
    source = build_source(cfg, DistInfo(), cfg.batch_size)
    try:
        return [source.next_batch().clone() for _ in range(n)]
    finally:
        source.close()


def test_input_settings_are_what_decides_the_batches_and_the_sweeps_sharing(base):
    """Sweep variants share one loader iff they agree on every `input` setting; a setting not declared
    `input` must then leave the batches as they are."""
    inputs = names_where(TrainConfig, "input")
    reference = _batches(base)
    for name, cfg in train_changes(base).items():
        top = name if name in {f.name for f in dataclasses.fields(TrainConfig)} else "data"
        shared = len(share_groups([base, cfg.replace(out=base.out + "-2")])) == 1
        assert shared == (top not in inputs), name
        if top not in inputs:
            got = _batches(cfg)
            assert all(torch.equal(a, b) for a, b in zip(got, reference, strict=True)), \
                f"{name} changes the batches but is not declared input"


def test_warmstart_free_model_settings_are_what_the_warm_start_allows():
    """A stage-2 model may differ from its stage-1 checkpoint in a setting iff the warm start (config check,
    then the tensors' load) accepts the change."""
    stage1 = ModelConfig(feature_dim=8, num_tokens=4, slot_dim=8, num_slots=3, input_mlp_hidden=8,
                         slot_mlp_hidden=8, decoder_hidden=(8,), selector_hidden=8)
    torch.manual_seed(0)
    payload = {"stage": 1, "model_config": stage1.to_dict(), "model": AdaSlot(stage1).state_dict()}
    stage2 = stage1.replace(adaptive=True)
    free = names_where(ModelConfig, "warmstart_free")
    assert warm_start(AdaSlot(stage2), payload, stage2)  # the selector stays at its init
    for f in dataclasses.fields(ModelConfig):
        cfg = stage2.replace(**{f.name: other_value(ModelConfig, f, getattr(stage2, f.name))})
        try:
            warm_start(AdaSlot(cfg), payload, cfg)
            accepted = True
        except AdaslotError:
            accepted = False
        assert accepted == (f.name in free), f.name


def test_axis_property_is_what_the_sweep_grid_refuses_and_the_results_hide():
    for f in dataclasses.fields(TrainConfig):
        axis = f.metadata["axis"]
        if isinstance(axis, str):
            with pytest.raises(AdaslotError, match=f"--grid {f.name}: not a grid key"):
                axis_value(f.name, "1")
            assert f.name in hidden_axes()
        else:
            assert (f.name in hidden_axes()) == (axis is False)
    with pytest.raises(AdaslotError, match="it comes from the input"):
        axis_value("model.feature_dim", "16")
    assert {"model.feature_dim", "model.num_tokens", "model.adaptive", "seed", "out", "warmstart",
            "val_every", "strict"} <= hidden_axes()
    assert "num_iters" in names_where(TrainConfig, "resumable") and "num_iters" not in hidden_axes()
    assert {"lr", "num_slots", "model.slot_dim", "root"}.isdisjoint(hidden_axes())


def test_warmstart_free_keys_cover_the_train_flags_of_free_model_settings():
    free = warmstart_free_keys()
    assert {"num_slots", "selector", "model.num_slots", "model.selector", "stage", "sparsity_weight"} <= free
    assert {"lr", "model.slot_dim", "seed", "batch_size"}.isdisjoint(free)


@pytest.mark.parametrize("adaptive", [False, True], ids=["stage1", "stage2"])
def test_method_property_is_what_with_method_overrides_and_the_recorded_method_holds(adaptive):
    """A model setting is a command-overridable part of the inference method iff it is declared
    method="keep" / "merge" (keep only for a stage-2 model); the recorded method is every declared one."""
    cfg = ModelConfig(adaptive=adaptive, merge_slots=0.2)
    keep, merge = method_fields("keep"), method_fields("merge")
    assert set(keep) == names_where(ModelConfig, "method", "keep")
    assert overridable_method_fields() == keep + merge
    for f in dataclasses.fields(ModelConfig):
        changed = {f.name: other_value(ModelConfig, f, getattr(cfg, f.name))}
        try:
            got = cfg.with_method(changed)
            accepted = True
        except AdaslotError:
            accepted = False
        assert accepted == (f.name in merge or (adaptive and f.name in keep)), f.name
        if accepted:
            assert got.method[f.name] == changed[f.name]
    recorded = method_fields("keep", "merge", "trained") if adaptive else method_fields("merge", "trained")
    assert tuple(cfg.method) == recorded and "merge_in_training" in recorded


def test_method_overrides_alias_exactly_the_overridable_method_settings():
    assert tuple(f.name for f in dataclasses.fields(MethodOverrides)) == overridable_method_fields()


def test_model_aliases_of_train_are_what_its_model_settings_pass_on(base):
    """A train field declared as a model alias sets that ModelConfig field (same range and choices); the
    other train fields change nothing the model is given."""
    model = {f.name: f.metadata for f in dataclasses.fields(ModelConfig)}
    aliases = {f.name: f.metadata["alias"] for f in dataclasses.fields(TrainConfig) if f.metadata["alias"]}
    assert {"num_slots", "selector", "merge_slots", "merge_on"} <= set(aliases)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "model_overrides"):
            continue
        value = other_value(TrainConfig, f, getattr(base, f.name))
        settings = base.replace(**{f.name: value}).model_settings()
        if f.name in aliases:
            target = aliases[f.name]
            assert settings == {**base.model_settings(), target: value}, f.name
            assert all(f.metadata[k] == model[target][k] for k in ("min", "max", "above", "choices")), f.name
        else:
            assert settings == base.model_settings(), f.name


def test_per_variant_settings_are_what_each_variant_sets_and_the_base_run_has_no_flag_for():
    from adaslot.config import SweepConfig
    from adaslot.config.base import cli_fields

    per_variant = names_where(TrainConfig, "per_variant")
    base_flags = {f.name for f, _t, path in cli_fields(SweepConfig) if path[:1] == ("base",)}
    assert per_variant and per_variant.isdisjoint(base_flags)
    assert {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)} - per_variant \
        <= base_flags | {"model_overrides", "data"}
    sweep = SweepConfig(out="sw", seeds=(3,), threads=2, devices="cpu")
    cfg = sweep.variant_config({}, 3, "sw/runs/v")
    assert (cfg.out, cfg.seed, cfg.threads, cfg.progress) == ("sw/runs/v", 3, 2, False)
