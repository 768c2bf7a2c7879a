"""Feature store: kill -9 + resume is byte-exact, incomplete/mismatching stores are refused, read-back equals
the online encoder within fp16 rounding, skipped images are recorded, HDF5 export round-trips."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, run_cli_output, same_contents, shard_files

from adaslot.config import CacheConfig, DataSpec, VerifyConfig
from adaslot.errors import AdaslotError
from adaslot.store import STATUS_OK, open_store
from adaslot.store.export import export_hdf5
from adaslot.store.verify import run_cache_verify
from adaslot.store.writer import run_cache_features

SIDE = 64  # 4 x 4 tokens of the random ViT-Tiny: small and fast, same code path as 224


def _cfg(root: Path, out: Path, split: str = "train", strict: bool = False, **kw) -> CacheConfig:
    base = dict(out=str(out), data=DataSpec(root=str(root), split=split, strict=strict),
                encoder="random-vit-tiny", image_size=SIDE, batch_size=1, workers=0, device="cpu",
                chunk_samples=1, shard_samples=2, progress=False)
    return CacheConfig(**{**base, **kw})


def _cli_args(cfg: CacheConfig) -> list[str]:
    return [sys.executable, "-m", "adaslot.cli", "cache-features", "--out", cfg.out, "--dataset", "coco",
            "--root", str(cfg.data.root), "--split", cfg.data.split, "--encoder", cfg.encoder, "--image-size",
            str(SIDE), "--batch-size", str(cfg.batch_size), "--workers", str(cfg.workers), "--device", "cpu",
            "--chunk-size", str(cfg.chunk_samples), "--shard-size", str(cfg.shard_samples), "--no-progress"]


@pytest.fixture(scope="module")
def reference(synthetic_coco, tmp_path_factory) -> Path:
    """An uninterrupted run: 12 train images x 2 views, 6 shards of 2 samples."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_cache_features(_cfg(synthetic_coco, out))
    return out


def test_layout_and_attributes(reference):
    st = open_store(reference)
    assert st.complete and st.features.shape == (12, 2, 16, 192) and st.features.dtype == np.float16
    assert st.shards_done() == (6, 6) and st.num_valid == 12 and (st.image_ids >= 0).all()
    a = st.attrs
    assert a["views"] == ["image", "hflip"] and a["dataset"]["split"] == "train"
    assert len(a["dataset"]["annotation_sha256"]) == 64 and a["feature_contract"]["precision"] == "fp32"
    assert a["feature_contract"]["encoder"] == "random-vit-tiny" and a["adaslot_version"]
    st.check_compatible(encoder="random-vit-tiny", feature_dim=192, num_tokens=16, split="train")
    # view 1 is the features of the flipped image, not a flip of the features
    assert not np.array_equal(st.read(0, 1)[0, 0], st.read(0, 1)[0, 1])


@pytest.mark.e2e
def test_kill9_then_rerun_is_byte_identical(synthetic_coco, reference, tmp_path):
    cfg = _cfg(synthetic_coco, tmp_path / "killed.zarr")
    proc = subprocess.Popen(_cli_args(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_done = Path(cfg.out) / "status" / "c" / "0"  # shard 0's completion marker
    deadline = time.time() + 120
    while not first_done.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]  # killed, not exited
    killed = open_store(cfg.out)
    assert not killed.complete, "the run finished before it could be killed; the test needs a slower run"
    done, total = killed.shards_done()
    assert 1 <= done < total
    with pytest.raises(AdaslotError, match="incomplete"):  # what train does with it
        killed.check_compatible(encoder="random-vit-tiny")

    summary = run_cache_features(cfg)  # the same command again finishes only the missing shards
    assert summary["shards_this_run"] == total - done
    st = open_store(cfg.out)
    assert st.complete
    assert shard_files(Path(cfg.out)) == shard_files(reference)  # same bytes on disk, file by file
    assert same_contents(cfg.out, str(reference))  # arrays and attributes (run timings aside)


@pytest.mark.e2e
def test_readback_equals_online_encoder(synthetic_coco, reference):
    from adaslot.data.coco import CocoDataset
    from adaslot.encoders import build_encoder

    st = open_store(reference)
    enc = build_encoder("random-vit-tiny")
    ds = CocoDataset.from_root(synthetic_coco, "train", size=SIDE, views=2)
    for row in (0, 11):
        online = enc(ds[row]["image"])  # [2, T, D] fp32: image and its flip
        stored = torch.from_numpy(st.read(row, row + 1)[0]).float()
        bound = online.abs() * 2.0**-11 + 1e-6  # fp16 round-to-nearest: relative error <= 2^-11
        assert ((stored - online).abs() <= bound).all()
    r = run_cache_verify(VerifyConfig(store=str(reference), sample=2, device="cpu"))
    assert r["ok"] and r["rows"] == 2 and r["max_abs_error"] <= r["bound"]


def test_settings_mismatch_refused_unless_overwrite(synthetic_coco, reference, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    cfg = _cfg(synthetic_coco, out)
    assert run_cache_features(cfg)["already_complete"]
    for change in (dict(chunk_samples=2), dict(precision="bf16"), dict(image_size=32), dict(views=1)):
        with pytest.raises(AdaslotError, match="different settings"):
            run_cache_features(dataclasses.replace(cfg, **change))
    val = DataSpec(root=str(synthetic_coco), split="val")
    run_cache_features(dataclasses.replace(cfg, data=val, overwrite=True, shard_samples=4))
    st = open_store(out)
    assert st.complete and st.features.shape == (6, 1, 16, 192) and st.attrs["dataset"]["split"] == "val"
    with pytest.raises(AdaslotError, match="split 'val'"):
        st.check_compatible(split="train")


def test_overwrite_refuses_a_folder_that_is_not_a_store(synthetic_coco, tmp_path):
    other = tmp_path / "not_a_store"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(AdaslotError, match="not a zarr store"):
        run_cache_features(_cfg(synthetic_coco, other, overwrite=True))
    assert (other / "precious.txt").exists()


def test_contract_mismatch_is_one_line(reference):
    st = open_store(reference)
    contract = dict(st.contract)
    st.check_compatible(contract)
    with pytest.raises(AdaslotError, match="weights_sha256") as e:
        st.check_compatible({**contract, "weights_sha256": "0" * 64})
    assert "\n" not in str(e.value)
    with pytest.raises(AdaslotError, match="feature_dim"):
        st.check_compatible(feature_dim=768)


def test_skipped_image_is_recorded(synthetic_coco, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    victim = sorted((root / "val2017").iterdir())[2]
    victim.write_bytes(b"this is not a jpeg")
    cfg = _cfg(root, tmp_path / "skip.zarr", split="val", batch_size=2)
    summary = run_cache_features(cfg)
    st = open_store(cfg.out)
    assert summary["images_written"] == 5 and summary["skipped"] == 1
    assert st.complete and st.status[2] >= 2 and st.image_ids[2] == -1 and st.num_valid == 5
    assert (st.status[[0, 1, 3, 4, 5]] == STATUS_OK).all()
    assert not st.read(2, 3).any()  # a skipped row holds zeros
    assert st.attrs["skipped_images"][0]["reason"] in ("unreadable", "truncated")


def test_hdf5_export_round_trip(reference, tmp_path):
    h5 = tmp_path / "out.h5"
    export_hdf5(str(reference), str(h5))
    assert same_contents(str(reference), str(h5))
    st = open_store(h5)
    assert st.backend == "hdf5" and st.complete and st.num_views == 2
    st.check_compatible(open_store(reference).contract)
    with pytest.raises(AdaslotError, match="exists"):
        export_hdf5(str(reference), str(h5))


@pytest.mark.e2e
def test_cli_info_verify_export(reference, tmp_path):
    from typer.testing import CliRunner

    from adaslot.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["cache-info", str(reference)])
    assert r.exit_code == 0 and "complete (6/6 shards)" in r.output and "random-vit-tiny" in r.output
    r = runner.invoke(app, ["cache-verify", str(reference), "--sample", "2", "--device", "cpu"])
    assert r.exit_code == 0 and "OK (within fp16 rounding)" in r.output
    r = runner.invoke(app, ["export", str(reference), str(tmp_path / "x.h5")])
    assert r.exit_code == 0 and (tmp_path / "x.h5").is_file()
    r = runner.invoke(app, ["cache-info", str(tmp_path / "missing.zarr")])
    assert isinstance(r.exception, AdaslotError)  # main() turns it into one line + exit 2


def test_not_a_store_is_a_one_line_error(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=[1])
    (tmp_path / "folder").mkdir()
    cases = {junk: "not an HDF5 file", tmp_path / "other.h5": "not an adaslot feature store",
             tmp_path / "folder": "not a feature store", tmp_path / "absent.zarr": "not found"}
    for path, msg in cases.items():
        with pytest.raises(AdaslotError, match=msg) as e:
            open_store(path)
        assert "\n" not in str(e.value)


def test_export_creates_the_folder_and_refuses_a_folder_as_file(reference, tmp_path):
    out = tmp_path / "new" / "sub" / "x.h5"
    export_hdf5(str(reference), str(out))
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["x.h5"]
    with pytest.raises(AdaslotError, match="is a folder"):
        export_hdf5(str(reference), str(tmp_path / "new"), overwrite=True)


@pytest.mark.parametrize("kw,msg", [({"image_size": -16}, "--image-size must be >= 1"),
                                    ({"workers": -1}, "--workers must be >= 0"),
                                    ({"chunk_samples": 0}, "--chunk-size must be >= 1"),
                                    ({"chunk_samples": 2, "shard_samples": 3}, "a multiple of --chunk-size")])
def test_bad_cache_flags_refused_before_writing(synthetic_coco, tmp_path, kw, msg):
    out = tmp_path / "bad.zarr"
    with pytest.raises(AdaslotError, match=msg):
        run_cache_features(_cfg(synthetic_coco, out, **kw))
    assert not out.exists()  # nothing half-written


def test_store_path_that_is_a_file_is_refused(synthetic_coco, tmp_path):
    f = tmp_path / "features.pt"
    f.write_text("precious")
    with pytest.raises(AdaslotError, match="is a file"):
        run_cache_features(_cfg(synthetic_coco, f))
    assert f.read_text() == "precious"


def test_strict_stops_at_the_first_unusable_image(synthetic_coco, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    victim = sorted((root / "val2017").iterdir())[2]
    victim.write_bytes(b"this is not a jpeg")
    cfg = _cfg(root, tmp_path / "strict.zarr", split="val", batch_size=2, strict=True)
    with pytest.raises(AdaslotError, match="drop --strict") as e:
        run_cache_features(cfg)
    assert victim.name in str(e.value) and "\n" not in str(e.value)
    assert not open_store(cfg.out).complete  # refused by train until a rerun finishes it
    victim.unlink()  # now missing on disk: refused before any encoding
    with pytest.raises(AdaslotError, match="missing"):
        run_cache_features(dataclasses.replace(cfg, out=str(tmp_path / "strict2.zarr")))


@pytest.mark.e2e
def test_verify_refuses_another_dataset_and_an_empty_sample(reference, tmp_path):
    from adaslot.data.make_synthetic import run_make_synthetic
    from adaslot.data.synthetic import SyntheticConfig

    other = tmp_path / "other"  # same layout, sizes and ids, other pictures and annotations
    run_make_synthetic(SyntheticConfig(out=str(other), num_train=12, num_val=6, image_size=224, seed=5,
                                   progress=False))
    with pytest.raises(AdaslotError, match="not the annotation file the store was made from"):
        run_cache_verify(VerifyConfig(store=str(reference), sample=2, data=DataSpec(root=str(other)),
                                  device="cpu"))
    with pytest.raises(AdaslotError, match="--sample must be >= 1"):
        run_cache_verify(VerifyConfig(store=str(reference), sample=0, device="cpu"))


def test_format_1_store_stays_readable(reference, tmp_path):
    """tests/data/v1-synthetic-train.zarr: cache-features of the same 12 images before format 2 (image 5
    replaced by junk bytes; chunks of 2 samples x both views, no chunk checksums). It opens, streams one view
    per sample, verifies its shard indexes, and holds what today's writer computes (within fp16 rounding)."""
    from adaslot.store.checksums import check_store
    from adaslot.store.loader import FeatureLoader

    v1 = open_store(Path(__file__).parent / "data" / "v1-synthetic-train.zarr")
    assert v1.format_version == 1 and v1.complete and v1.direct is not None and not v1.direct.crc
    assert any(line.startswith("format      1") for line in v1.summary_lines())
    ok = [r for r in range(12) if r != 5]
    assert np.flatnonzero(v1.valid).tolist() == ok
    old, new = v1.read(0, 12)[ok].astype(np.float32), open_store(reference).read(0, 12)[ok].astype(np.float32)
    assert (np.abs(old - new) <= np.abs(new) * 2.0**-10 + 1e-6).all()  # two fp16 roundings at most
    feats, rows = next(FeatureLoader(v1, 11, seed=1))  # one epoch: each valid row once, one view each
    assert sorted(rows.tolist()) == ok and feats.shape == (11, 16, 192)
    r = check_store(str(v1.path))
    assert r["ok"] and r["format_version"] == 1 and r["shards_checked"] == 3



def test_store_written_before_resumes_with_the_same_flags(synthetic_coco, reference, tmp_path, monkeypatch,
                                                         capsys):
    """The settings are named as the store records them (chunk_samples / shard_samples); the flags kept their
    first spelling. A store written before (tests/data/v1-synthetic-train.zarr, `--chunk-size 2
    --shard-size 4`) records the layout today's config gives for those flags, and a rerun of the same
    command line finds its store complete; another block size is refused."""
    from adaslot.store.writer import store_layout

    v1 = open_store(Path(__file__).parent / "data" / "v1-synthetic-train.zarr")
    assert v1.attrs["settings"]["layout"] == store_layout(CacheConfig(chunk_samples=2, shard_samples=4))
    out = tmp_path / "again.zarr"
    shutil.copytree(reference, out)
    args = ["cache-features", "--out", str(out), "--root", str(synthetic_coco), "--split", "train",
            "--encoder", "random-vit-tiny", "--image-size", str(SIDE), "--batch-size", "1", "--workers", "0",
            "--device", "cpu", "--chunk-size", "1", "--shard-size", "2", "--no-progress"]
    code, out_text, err = run_cli_output(args, monkeypatch, capsys)
    assert code == 0 and "already complete" in out_text, err
    code, err = run_cli([*args[:-5], "--chunk-size", "2", "--shard-size", "2", "--no-progress"], monkeypatch,
                        capsys)
    assert code == 2 and "different settings" in err
