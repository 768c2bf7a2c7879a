"""MOVi without TensorFlow: TFRecord framing and Example decoding, webdataset shards, the synthetic MOVi set
in both layouts, the official frame rule, bad input (one line, counted and listed, --strict), the movi
protocol."""

from __future__ import annotations

import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli

from adaslot.config import DataSpec, SyntheticConfig
from adaslot.data import tfrecord, wds
from adaslot.data.datasets import open_dataset
from adaslot.data.movi import MoviDataset, split_sample_id, train_frames
from adaslot.data.movi_synthetic import render_video, video_rng
from adaslot.errors import AdaslotError

NUM_TRAIN, NUM_VAL = 3, 2  # the videos of conftest's movi_root


def _cfg() -> SyntheticConfig:
    return SyntheticConfig(out="-", format="movi", seed=0, min_objects=2, max_objects=4)


def _copy(movi_root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "movi"
    shutil.copytree(movi_root, dst)
    return dst


# ---------------------------------------------------------------- formats

def test_tfrecord_crc_and_example_roundtrip(tmp_path):
    # The crc32c check value of "123456789" is 0xe3069283; the masking rotates by 15 and adds a constant.
    crc = 0xE3069283
    assert tfrecord.masked_crc(b"123456789") == ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF
    feats = {"video": [b"frame0", b"", b"frame2" * 50], "f": np.array([1.5, -2.25], np.float32),
             "i": np.array([0, 1, -1, 2**40, -(2**63)], np.int64)}
    back = tfrecord.decode_example(tfrecord.encode_example(feats))
    assert back["video"] == feats["video"]  # every value of a BytesList, in order
    np.testing.assert_array_equal(back["f"], feats["f"])
    np.testing.assert_array_equal(back["i"], feats["i"])
    path = tmp_path / "x.tfrecord"
    tfrecord.write_records(path, [b"a", b"bc" * 1000, b""])
    spans, err = tfrecord.scan_records(path)
    with open(path, "rb") as f:
        assert [tfrecord.read_record(f, span) for span in spans] == [b"a", b"bc" * 1000, b""] and err is None
    # unpacked Int64List / FloatList (older writers) decode to the same values
    unpacked = tfrecord._len_field(3, b"\x08\x05\x08\x07")  # Int64List, two unpacked values
    entry = tfrecord._len_field(1, b"n") + tfrecord._len_field(2, unpacked)
    assert list(tfrecord.decode_example(tfrecord._len_field(1, tfrecord._len_field(1, entry)))["n"]) == [5, 7]


def test_both_layouts_give_identical_samples_in_frame_order(movi_root):
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        a = MoviDataset(movi_root / "tfds", split, size=224)
        b = MoviDataset(movi_root / "wds", split, size=224)
        assert (a.layout, b.layout) == ("tfds", "wds")
        assert a.image_ids == b.image_ids and len(a) == count * (9 if split == "train" else 24)
        for i in range(0, len(a), 5):
            x, y = a[i], b[i]
            assert x["ok"] and torch.equal(x["image"], y["image"]) and x["image"].shape == (3, 224, 224)
            ga, gb = a.ground_truth(x["image_id"]), b.ground_truth(x["image_id"])
            assert np.array_equal(ga.instance_masks, gb.instance_masks)
    # Frame order: frame t read back is frame t drawn (a reader that reverses or shuffles frames fails).
    ds = MoviDataset(movi_root / "tfds", "val", size=128)
    frames, ids = render_video(video_rng(0, 1, 1), _cfg())
    for t in (0, 1, 23):
        rgb, seg = ds.frame(ds.index_of(1 * 100 + t))
        assert np.array_equal(rgb, frames[t]) and np.array_equal(seg, ids[t])
    assert not np.array_equal(frames[0], frames[23])  # the shapes move
    assert set(np.unique(ids)) == set(range(int(ids.max()) + 1))  # ids 1..N, 0 = background


def test_train_frames_follow_the_official_key_seeded_rule(movi_root):
    ds = MoviDataset(movi_root / "wds", "train")
    for key in range(NUM_TRAIN):
        official = random.Random(int(f"{key:07d}") + 457834752).sample(range(24), k=9)
        assert train_frames(key) == official
        mine = [split_sample_id(i)[1] for i in ds.image_ids if split_sample_id(i)[0] == key]
        assert mine == official
    assert MoviDataset(movi_root / "wds", "train").image_ids == ds.image_ids  # same every epoch / open
    assert all(not getattr(ds, "flip", True) for _ in [0])  # no flip augmentation for MOVi


# ---------------------------------------------------------------- bad input

def _reasons(ds: MoviDataset) -> dict[str, int]:
    bad = [ds[i] for i in range(len(ds))]
    for item in bad:
        ds.record(item)
    return ds.skips.counts()


def test_record_crc_mismatch_and_truncation(movi_root, tmp_path, monkeypatch, capsys):
    root = _copy(movi_root, tmp_path)
    folder = next((root / "tfds").rglob("dataset_info.json")).parent
    shard = folder / "movi_synthetic-validation.tfrecord-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[12 + 500] ^= 0xFF  # a payload byte of the first record (video 0)
    shard.write_bytes(bytes(data))
    ds = MoviDataset(root / "tfds", "val")
    assert _reasons(ds) == {"crc-mismatch": 24}  # every frame of video 0 is skipped and listed
    assert ds[24]["ok"]  # video 1 still reads
    # --strict: the loop stops at the first bad sample with one line
    code, err = run_cli(["cache-features", "--out", str(tmp_path / "s.zarr"), "--dataset", "movi", "--root",
                         str(root / "tfds"), "--split", "val", "--strict", "--encoder", "random-vit-tiny",
                         "--device", "cpu", "--workers", "0", "--batch-size", "4", "--no-progress"],
                        monkeypatch, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "crc-mismatch" in err and "drop --strict" in err
    # a damaged length header: nothing after it can be located; --strict refuses at open
    data[12 + 500] ^= 0xFF
    data[2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(AdaslotError, match="no videos"):
        MoviDataset(root / "tfds", "val")
    # truncation of the last train shard: the records before the cut are kept, the loss is listed
    last = folder / "movi_synthetic-train.tfrecord-00001-of-00002"
    last.write_bytes(last.read_bytes()[:-100])
    train = MoviDataset(root / "tfds", "train")
    assert len(train) == 2 * 9 and train.skips.counts() == {"truncated": 1}
    with pytest.raises(AdaslotError, match="truncated.*drop --strict"):
        open_dataset(DataSpec(dataset="movi", root=str(root / "tfds"), split="train", strict=True), 224)


def test_bad_shards(movi_root, tmp_path):
    root = _copy(movi_root, tmp_path) / "wds"
    val = root / "val" / "shard-000000.tar"
    with tarfile.open(val) as tar:
        member = tar.getmember("0000000.video.npy.gz")
    data = bytearray(val.read_bytes())
    data[member.offset_data + 200: member.offset_data + 400] = bytes(200)  # deflate data destroyed
    val.write_bytes(bytes(data))
    frames, ids = render_video(video_rng(0, 1, 0), _cfg())
    wds.write_shard(root / "val" / "shard-000001.tar", [
        ("0000005", {"video.npy.gz": wds.gzip_bytes(wds.npy_bytes(frames))}),  # no segmentations
        ("0000006", {"video.npy": wds.npy_bytes(frames[:, :64, :64]),  # another shape, not gzipped
                     "segmentations.npy": wds.npy_bytes(ids[:, :64, :64, None])}),
    ])
    ds = MoviDataset(root, "val")
    assert ds.skips.counts() == {"missing-field": 1}
    assert _reasons(ds) == {"missing-field": 1, "bad-gzip": 24, "shape-mismatch": 24}
    assert [s.file for s in ds.skips.items if s.reason == "missing-field"] == ["shard-000001.tar"]
    # a truncated tar: the samples before the cut are kept, the rest is one listed loss
    train = root / "train" / "shard-000000.tar"
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    ds = MoviDataset(root, "train")
    assert ds.skips.counts() == {"truncated": 1} and len(ds) < NUM_TRAIN * 9


@pytest.mark.parametrize("case, msg", [
    ("no-split", "split folder .*test"), ("no-layout", "none of the MOVi layouts"),
    ("tfds-split", "split 'test' not found"),
])
def test_missing_split_or_layout_is_one_line(movi_root, tmp_path, monkeypatch, capsys, case, msg):
    root = {"no-split": movi_root / "wds", "no-layout": tmp_path, "tfds-split": movi_root / "tfds"}[case]
    code, err = run_cli(["cache-features", "--out", str(tmp_path / "s.zarr"), "--dataset", "movi", "--root",
                         str(root), "--split", "test", "--encoder", "random-vit-tiny", "--device", "cpu"],
                        monkeypatch, capsys)
    assert code == 2 and err.startswith("adaslot: error:") and len(err.splitlines()) == 1
    assert __import__("re").search(msg, err)
    assert not (tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------- protocol

def test_movi_protocol_scores_a_perfect_prediction_perfectly(movi_root):
    from adaslot.evaluate.scoring import EvalDataset, score_image

    ds = MoviDataset(movi_root / "wds", "val", size=224)
    item = EvalDataset(ds)[30]
    # a 14 x 14 prediction from the 128 px GT: coarse, so below 1, but background pixels must not count
    ids = torch.from_numpy(ds.frame(30)[1].astype(np.int64))
    onehot = torch.nn.functional.one_hot(ids, int(ids.max()) + 1).permute(2, 0, 1).float()
    scores = score_image(onehot, item, ("movi",))["movi"]  # alpha already at 128: bilinear is the identity
    assert scores["fg_ari"] == pytest.approx(1.0) and scores["mbo_i"] == pytest.approx(1.0)
    assert np.isnan(scores["mbo_c"]) and scores["num_objects"] == len(np.unique(ids)) - 1
    # background pixels given to object 1's slot: FG-ARI ignores them, mBO does not
    bg_to_1 = onehot.clone()
    bg_to_1[1] += 2 * onehot[0]
    s = score_image(bg_to_1, item, ("movi",))["movi"]
    assert s["fg_ari"] == pytest.approx(1.0) and s["mbo_i"] < 1.0
    merged = onehot.clone()
    merged[1] += 2 * onehot[2]  # objects 1 and 2 in one slot
    assert score_image(merged, item, ("movi",))["movi"]["fg_ari"] < 1.0
    with pytest.raises(AdaslotError, match="does not apply"):
        from adaslot.config import EvalConfig

        EvalConfig(checkpoint="x", protocol="adaslot", data=DataSpec(dataset="movi", root="r")).validate()


def test_png_folders_read_like_the_shards(movi_root, tmp_path):
    """SPOT/STEVE layout: <split>/<video:08d>/<t:08d>_image.png and binary <t:08d>_mask_<n:02d>.png."""
    from PIL import Image

    wds_val = MoviDataset(movi_root / "wds", "val")
    root = tmp_path / "png"
    for key in range(NUM_VAL):
        frames, ids = render_video(video_rng(0, 1, key), _cfg())
        d = root / "validation" / f"{key:08d}"
        d.mkdir(parents=True)
        for t in range(len(frames)):
            Image.fromarray(frames[t]).save(d / f"{t:08d}_image.png")
            for n in range(int(ids.max()) + 1):  # n = 0 is the background mask
                Image.fromarray(((ids[t] == n) * 255).astype(np.uint8)).save(d / f"{t:08d}_mask_{n:02d}.png")
    png = MoviDataset(root, "val")
    assert png.layout == "png" and png.image_ids == wds_val.image_ids
    for i in (0, 25, 47):
        assert torch.equal(png[i]["image"], wds_val[i]["image"])
        assert np.array_equal(png.frame(i)[1], wds_val.frame(i)[1])


def test_synthetic_movi_is_a_function_of_the_seed(movi_root, tmp_path):
    from adaslot.data.make_synthetic import run_make_synthetic

    cfg = dict(format="movi", num_train=1, num_val=1, shard_videos=2, seed=0, min_objects=2, max_objects=4,
               progress=False)
    run_make_synthetic(SyntheticConfig(out=str(tmp_path / "a"), **cfg))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    # prefix-stable: the first video of a split is the same in a 1-video and a 2-video set
    a = MoviDataset(tmp_path / "a" / "wds", "val")
    b = MoviDataset(movi_root / "wds", "val")
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in (0, 23))
    run_make_synthetic(SyntheticConfig(out=str(tmp_path / "b"), **cfg))
    same = [(tmp_path / "a" / r).read_bytes() == (tmp_path / "b" / r).read_bytes() for r in files]
    assert len(same) == 6 and all(same)  # 2 json, 2 tfrecord, 2 tar files: byte for byte


def test_plain_background_draws_the_same_objects_on_one_colour():
    """`movi_background="plain"` (the movi demo's data) keeps every object of the default gradient video and
    paints the background one colour; the default stays the gradient."""
    assert SyntheticConfig().movi_background == "gradient"
    frames, ids = render_video(video_rng(0, 0, 3), _cfg())
    plain_frames, plain_ids = render_video(video_rng(0, 0, 3), _cfg().replace(movi_background="plain"))
    assert np.array_equal(ids, plain_ids)
    assert np.array_equal(frames[ids > 0], plain_frames[ids > 0])  # objects: same pixels
    background = plain_frames[ids == 0]  # [N, 3]
    assert (background == background[0]).all()
    assert len(np.unique(frames[ids == 0], axis=0)) > 10  # the gradient has many colours
