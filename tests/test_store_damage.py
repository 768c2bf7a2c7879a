"""Damaged stores, with real files and the real CLI (cli.main): a zarr.json cut short, a shard cut short,
bytes flipped inside a shard. Each is caught on read by train (the loader), eval's cache proxy and
cache-verify as ONE line naming the file and the repair command, exit 2, leaving the files as they were;
`cache-verify --full` lists the damaged shards, and the `cache-features ... --repair` command printed in the
message gives back the bytes of an undamaged store."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_FLAGS, TINY_MODEL, run_cli, run_cli_output, same_contents, shard_files

from adaslot.config import CacheConfig, DataSpec
from adaslot.store import open_store
from adaslot.store.checksums import check_store
from adaslot.store.writer import run_cache_features

pytestmark = pytest.mark.e2e  # commands on damaged stores

SIDE = 64  # 4 x 4 tokens of random-vit-tiny
KINDS = ("zarr.json cut short", "shard cut short", "bytes flipped in a shard")


@pytest.fixture(scope="module")
def reference(synthetic_coco, tmp_path_factory) -> Path:
    """12 train images x 2 views in 6 shards of 2 samples, as cache-features writes them (format 2)."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_cache_features(CacheConfig(out=str(out), data=DataSpec(root=str(synthetic_coco)),
                               encoder="random-vit-tiny", image_size=SIDE, batch_size=2, workers=0,
                               device="cpu", chunk_samples=2, shard_samples=2, progress=False))
    assert open_store(out).format_version == 2
    return out


def files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def damage(store: Path, kind: str, shard: int = 2) -> Path:
    """Damage `store` in place the way `kind` says -> the damaged file."""
    if kind == "zarr.json cut short":
        f = store / "zarr.json"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "shard cut short":
        f = store / "features" / "c" / str(shard) / "0" / "0" / "0"
        f.write_bytes(f.read_bytes()[: f.stat().st_size * 2 // 3])
    else:  # a run of bad bytes over the shard's data (every chunk of it; the index at the end is intact)
        f = store / "features" / "c" / str(shard) / "0" / "0" / "0"
        data = np.frombuffer(f.read_bytes(), np.uint8).copy()
        data[50:-200] ^= 0xFF
        f.write_bytes(data.tobytes())
    return f


def one_line(code: int, err: str, bad: Path) -> None:
    assert code == 2, err
    assert err.startswith("adaslot: error: ") and "\n" not in err, err
    assert str(bad) in err and "--repair" in err, err


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory) -> Path:
    """A one-step stage-1 checkpoint trained on the undamaged store (for eval's cache proxy)."""
    from adaslot.config import TrainConfig
    from adaslot.train import run_train

    run = tmp_path_factory.mktemp("ckpt")
    r = run_train(TrainConfig(out=str(run), from_cache=str(reference), model_overrides=dict(TINY_MODEL),
                          num_slots=4, batch_size=4, num_iters=1, device="cpu", workers=0, progress=False))
    return Path(r["checkpoint"])


@pytest.mark.parametrize("kind", KINDS)
def test_damage_is_one_line_in_every_reader(kind, reference, checkpoint, synthetic_coco, tmp_path,
                                            monkeypatch, capsys):
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    bad = damage(store, kind)
    before = files(store)
    run = tmp_path / "run"
    # 3 steps of 4 = one epoch: every row is read (one view each; the flipped bytes cover both views)
    code, err = run_cli(["train", "--from-cache", str(store), "--out", str(run), *TINY_FLAGS, "--num-slots",
                         "4", "--batch-size", "4", "--num-iters", "3", "--device", "cpu", "--no-progress"],
                        monkeypatch, capsys)
    one_line(code, err, bad)
    assert not list(run.rglob("*.pt"))  # no checkpoint made from damaged input
    code, err = run_cli(["eval", str(checkpoint), "--from-cache", str(store), "--root",
                         str(synthetic_coco), "--split", "train", "--out", str(tmp_path / "eval"), "--device",
                         "cpu", "--workers", "0", "--num-vis", "0", "--protocol", "adaslot", "--no-progress"],
                        monkeypatch, capsys)
    one_line(code, err, bad)
    assert not (tmp_path / "eval" / "metrics.json").exists()
    code, err = run_cli(["cache-verify", str(store), "--sample", "12", "--device", "cpu"], monkeypatch,
                        capsys)
    one_line(code, err, bad)
    code, out, err = run_cli_output(["cache-verify", str(store), "--full"], monkeypatch, capsys)
    one_line(code, err, bad)
    if kind != "zarr.json cut short":
        assert f"damaged: {bad}" in out and "(shards: 2)" in err
    assert files(store) == before  # reading changed nothing


def test_full_check_lists_damage_and_the_printed_repair_restores_the_bytes(reference, tmp_path, monkeypatch,
                                                                           capsys):
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    flipped, cut = damage(store, "bytes flipped in a shard", 1), damage(store, "shard cut short", 4)
    status = store / "status" / "c" / "3"
    status.write_bytes(bytes([status.read_bytes()[0] ^ 1]) + status.read_bytes()[1:])
    code, out, err = run_cli_output(["cache-verify", str(store), "--full"], monkeypatch, capsys)
    assert code == 2 and "(shards: 1, 3, 4)" in err and "\n" not in err
    assert all(f"damaged: {f}" in out for f in (flipped, cut, status))
    repair = shlex.split(err.split("repair it with: ")[1])
    assert repair[:2] == ["adaslot", "cache-features"] and repair[-1] == "--repair"
    code, err = run_cli([*repair[1:], "--workers", "0", "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    assert shard_files(store) == shard_files(reference)  # the same bytes as the undamaged store
    assert files(store / "status") == files(reference / "status")
    assert same_contents(str(store), str(reference)) and check_store(str(store))["ok"]


def test_repair_rebuilds_damaged_metadata(reference, synthetic_coco, tmp_path, monkeypatch, capsys):
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    damage(store, "zarr.json cut short")
    (store / "features" / "zarr.json").write_text("{")
    args = ["cache-features", "--out", str(store), "--root", str(synthetic_coco), "--encoder",
            "random-vit-tiny", "--image-size", str(SIDE), "--batch-size", "2", "--chunk-size", "2",
            "--shard-size", "2", "--workers", "0", "--device", "cpu", "--no-progress"]
    code, err = run_cli(args, monkeypatch, capsys)  # without --repair: refused, nothing touched
    one_line(code, err, store / "zarr.json")
    code, err = run_cli([*args, "--chunk-size", "4", "--shard-size", "4", "--repair"], monkeypatch, capsys)
    assert code == 2 and "does not match the settings given" in err  # other flags: refused, untouched
    assert (store / "features" / "zarr.json").read_text() == "{"
    code, err = run_cli([*args, "--repair"], monkeypatch, capsys)
    assert code == 0, err
    assert files(store / "features") == files(reference / "features")
    assert same_contents(str(store), str(reference)) and open_store(store).complete
    other = tmp_path / "o.zarr"  # --overwrite replaces a store whose metadata is damaged
    shutil.copytree(reference, other)
    damage(other, "zarr.json cut short")
    code, err = run_cli([*args, "--out", str(other), "--overwrite"], monkeypatch, capsys)
    assert code == 0, err
    assert same_contents(str(other), str(reference))
