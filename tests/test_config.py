"""Settings declared once: the CLI's flags come from the config dataclasses, validation gives one-line errors,
old run folders still read, and every command opens data and devices the same way."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import TINY_FLAGS, break_annotation, run_cli
from typer.testing import CliRunner

from adaslot.cli import app
from adaslot.config import (
    CacheConfig,
    DataSpec,
    EvalConfig,
    ModelConfig,
    SyntheticConfig,
    TrainConfig,
    demo_config,
    parse_value,
)
from adaslot.config.base import cli_fields, flag_of
from adaslot.errors import AdaslotError


@pytest.mark.parametrize("command,cls", [("train", TrainConfig), ("eval", EvalConfig), ("cache-features",
                                         CacheConfig), ("make-synthetic", SyntheticConfig)])
def test_every_field_is_a_flag_with_its_help_and_default(command, cls):
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
    defaults = cls()
    for f, _t, path in cli_fields(cls):
        if f.metadata.get("argument"):
            assert f.name.upper() in out, f.name
            continue
        assert flag_of(f) in out, f.name
        assert f.metadata["help"].split("(")[0].strip() in out, f.name
        value = getattr(getattr(defaults, path[0]) if path else defaults, f.name)
        if value not in (None, "") and not f.metadata.get("required") and not f.metadata.get("parser"):
            assert f"(default: {value})" in out, f.name


@pytest.mark.parametrize("make,msg", [
    (lambda: TrainConfig(out="x", from_cache="s", batch_size=0), r"^--batch-size must be >= 1, got 0$"),
    (lambda: TrainConfig(out="x", from_cache="s", precision="fp16"),
     r"^--precision must be one of fp32, tf32, bf16, got 'fp16'"),
    (lambda: ModelConfig(slot_dim=0), r"^--model slot_dim must be >= 1, got 0$"),
    (lambda: TrainConfig(out="x", from_cache="s", lr=0.0), r"^--lr must be > 0, got 0.0$"),
    (lambda: EvalConfig(checkpoint="c", data=DataSpec(images="i")), "--images and --annotations go together"),
    (lambda: EvalConfig(checkpoint="c", protocol="adaslot,coco"), "unknown --protocol coco"),
], ids=["min", "choices", "model-prefix", "above", "nested-check", "protocol"])
def test_validate_names_the_flag(make, msg):
    with pytest.raises(AdaslotError, match=msg):
        make().validate()


def test_parse_value_uses_the_field_type():
    assert parse_value(ModelConfig, "decoder_hidden", "128x128") == (128, 128)
    assert parse_value(ModelConfig, "decoder_hidden", "64,32") == (64, 32)
    assert parse_value(ModelConfig, "attention_temperature", "0.5") == 0.5
    assert parse_value(ModelConfig, "sparse_decoding", "false") is False
    assert parse_value(TrainConfig, "num_iters", "none") is None
    with pytest.raises(AdaslotError, match="slot_dim expects an integer, got 'big'"):
        parse_value(ModelConfig, "slot_dim", "big")
    got = ModelConfig.parse_overrides(["slot_dim=8", "split-first-layer=0"])
    assert got == {"slot_dim": 8, "split_first_layer": False}


def test_configs_round_trip_and_old_run_folders_read():
    cfg = TrainConfig(out="r", data=DataSpec(root="R", strict=True),
                      model_overrides={"decoder_hidden": (8, 8)})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # the flat layout written by adaslot before the DataSpec, with the old dense-decoding switch
    old = {"stage": 2, "out": "r", "dataset": "coco", "root": "R", "images": None, "annotations": None,
           "strict": False, "dense_decoding": True, "num_iters": 10}
    got = TrainConfig.from_dict(old)
    assert got.data == DataSpec(dataset="coco", root="R") and got.num_iters == 10
    assert got.model_overrides == {"sparse_decoding": False}


def test_demo_profiles_and_shortcut_flags():
    long = demo_config("long")
    assert long.stage1_steps == 15_000 and long.data.num_train == 5000 and long.data.max_objects == 6
    assert demo_config("quick", seed=3).seed == 3 and demo_config("quick").data.num_val == 16
    r = CliRunner().invoke(app, ["demo", "--long", "--quick"])
    assert isinstance(r.exception, AdaslotError)
    assert "--long and --quick exclude each other" in str(r.exception)
    r = CliRunner().invoke(app, ["demo", "--long", "--profile", "quick"])
    assert isinstance(r.exception, AdaslotError) and "exclude each other" in str(r.exception)


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["train", "eval", "cache-features"])
def test_device_mps_is_refused_the_same_way_everywhere(command, synthetic_coco, tmp_path, monkeypatch,
                                                       capsys):
    root = str(synthetic_coco)
    args = {"train": ["train", "--out", str(tmp_path / "r"), "--root", root],
            "eval": ["eval", str(tmp_path / "c.pt"), "--root", root],
            "cache-features": ["cache-features", "--out", str(tmp_path / "s.zarr"), "--root", root]}
    code, err = run_cli([*args[command], "--device", "mps"], monkeypatch, capsys)
    assert code == 2 and err == "adaslot: error: --device must be auto, cpu, cuda or cuda:N, got 'mps'"
    assert not any(tmp_path.iterdir())  # refused before anything is written


@pytest.mark.e2e
def test_dataset_synthetic_works_in_every_command(synthetic_coco, tmp_path, monkeypatch, capsys):
    """`--dataset synthetic --root R` (a make-synthetic root) is read like coco by train, eval and cache."""
    run = tmp_path / "run"
    common = ["--dataset", "synthetic", "--root", str(synthetic_coco), "--device", "cpu", "--workers", "0",
              "--no-progress"]
    code, err = run_cli(["train", "--out", str(run), *common, "--encoder", "random-vit-tiny", *TINY_FLAGS,
                         "--num-slots", "3", "--batch-size", "2", "--num-iters", "1"], monkeypatch, capsys)
    assert code == 0, err
    ckpt = run / "checkpoints" / "last.pt"
    code, err = run_cli(["eval", str(ckpt), *common, "--split", "val", "--num-vis", "0", "--protocol",
                         "adaslot", "--out", str(tmp_path / "ev")], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_images"] == 6
    code, err = run_cli(["cache-features", "--out", str(tmp_path / "s.zarr"), *common, "--split", "val",
                         "--encoder", "random-vit-tiny", "--image-size", "32"], monkeypatch, capsys)
    assert code == 0, err
    code, err = run_cli(["train", "--out", str(tmp_path / "r2"), "--dataset", "synthetic"], monkeypatch,
                        capsys)
    assert code == 2 and "give one input" in err and "--root R" in err


MALFORMED = r"annotation {} of image \d+ is malformed .*drop --strict"


@pytest.fixture()
def broken_coco(synthetic_coco, tmp_path):
    """A copy of `synthetic_coco` with one malformed annotation per split -> (root, train id, val id)."""
    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    bad_train = break_annotation(root / "annotations" / "instances_train2017.json")
    return root, bad_train, break_annotation(root / "annotations" / "instances_val2017.json", 2)


@pytest.mark.e2e
def test_strict_cache_features_stops_at_a_malformed_annotation(broken_coco, tmp_path):
    from adaslot.store.writer import run_cache_features

    root, bad_train, _ = broken_coco
    with pytest.raises(AdaslotError, match=MALFORMED.format(bad_train)):
        run_cache_features(CacheConfig(out=str(tmp_path / "s.zarr"), data=DataSpec(root=str(root),
                                       strict=True), encoder="random-vit-tiny", workers=0, device="cpu",
                                       progress=False))
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.e2e
def test_strict_online_train_stops_at_a_malformed_annotation(broken_coco, tmp_path):
    from adaslot.train import run_train

    root, bad_train, _ = broken_coco
    with pytest.raises(AdaslotError, match=MALFORMED.format(bad_train)):
        run_train(TrainConfig(out=str(tmp_path / "r"), data=DataSpec(root=str(root), strict=True),
                              encoder="random-vit-tiny", num_iters=1, workers=0, device="cpu",
                              progress=False))


@pytest.mark.e2e
def test_eval_counts_a_malformed_annotation_and_strict_eval_stops_at_it(broken_coco, tmp_path, train_store):
    """Without --strict the annotation is left out and counted; with it, one line names it."""
    from adaslot.evaluate import run_eval
    from adaslot.train import run_train

    root, _, bad_val = broken_coco
    ckpt = run_train(TrainConfig(out=str(tmp_path / "ok"), from_cache=str(train_store), num_iters=1,
                             batch_size=2, model_overrides={"slot_dim": 8, "decoder_hidden": (8,)}, workers=0,
                             device="cpu", progress=False))["checkpoint"]
    lenient = EvalConfig(checkpoint=ckpt, data=DataSpec(root=str(root), split="val"), workers=0,
                         num_vis=0, device="cpu", progress=False, out=str(tmp_path / "ev"),
                         protocol="adaslot")
    r = run_eval(lenient)
    assert r["num_images"] == 6 and r["dataset"]["notes"]["bad-annotation"] == 1
    with pytest.raises(AdaslotError, match=MALFORMED.format(bad_val)):
        run_eval(lenient.replace(data=lenient.data.replace(strict=True)))
