"""`adaslot train`: cache and online mode, warm start, exact resume after SIGKILL, NaN stop, refusals.

Tiny slot model on the random-init ViT-Tiny encoder and the synthetic dataset fixture; CPU only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_FLAGS, TINY_MODEL, assert_same_update, cli_command, first_step, losses, torch_threads
from helpers import tiny_train as tiny

from adaslot.checkpoint import list_checkpoints, load_checkpoint
from adaslot.config import DataSpec, model_config_for
from adaslot.errors import AdaslotError
from adaslot.train import run_train


@pytest.mark.e2e
def test_kill_and_resume_gives_the_uninterrupted_loss_sequence(tmp_path, train_store):
    args = ["train", "--from-cache", str(train_store), *TINY_FLAGS, "--num-slots", "4",
            "--batch-size", "4", "--lr-schedule", "constant", "--lr", "1e-3", "--num-iters", "30",
            "--ckpt-every", "5", "--keep-last", "2", "--log-every", "1", "--seed", "3", "--device", "cpu",
            "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref, run = tmp_path / "ref", tmp_path / "run"
    # The uninterrupted reference runs in this process with the subprocesses' thread count (same sums).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_train(tiny(ref, from_cache=str(train_store), num_iters=30, ckpt_every=5, keep_last=2, seed=3))
    finally:
        torch.set_num_threads(threads)

    proc = subprocess.Popen(cli_command(*args, "--out", str(run)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = run / "checkpoints" / "step-00000005.pt"
    deadline = time.time() + 90
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.stem.split("-")[1]) for p in list_checkpoints(run / "checkpoints"))
    assert 5 <= killed_at < 30, "the kill should land mid-run"

    done = subprocess.run(cli_command(*args, "--out", str(run)), env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"resuming {run} from step {killed_at}" in done.stdout
    assert losses(run) == losses(ref) and sorted(losses(ref)) == list(range(1, 31))
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000025.pt", "step-00000030.pt"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 30
    a = load_checkpoint(ref / "checkpoints" / "step-00000030.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "step-00000030.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_threads_flag_sets_the_runs_thread_count_and_is_recorded(tmp_path, train_store, monkeypatch):
    seen = []

    class Probe:  # the run's real input, noting torch's thread count at each batch
        def __init__(self, source):
            self.source = source

        def __getattr__(self, name):
            return getattr(self.source, name)

        def next_batch(self):
            seen.append(torch.get_num_threads())
            return self.source.next_batch()

    import adaslot.train.loop as loop

    build = loop.build_source
    monkeypatch.setattr(loop, "build_source", lambda *a: Probe(build(*a)))
    with torch_threads(2):
        run_train(tiny(tmp_path / "run", from_cache=str(train_store), num_iters=2, threads=1))
        assert torch.get_num_threads() == 2  # the caller's number is back
    assert seen == [1, 1]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["threads"] == 1


@pytest.mark.e2e
def test_ctrl_c_says_interrupted_and_a_rerun_resumes(tmp_path, train_store):
    """SIGINT (Ctrl-C) mid-run: one line on stderr, exit 130, and the same command continues the run."""
    args = ["train", "--from-cache", str(train_store), *TINY_FLAGS, "--num-slots", "4",
            "--batch-size", "4", "--num-iters", "300", "--ckpt-every", "20", "--log-every", "1",
            "--device", "cpu", "--no-progress", "--out", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cli_command(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    first = tmp_path / "checkpoints" / "step-00000020.pt"
    deadline = time.time() + 90
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "adaslot: interrupted" and "Traceback" not in err
    done = subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 300


@pytest.mark.e2e
def test_one_step_from_cache_equals_online(train_store, synthetic_coco):
    """Same images, same view (the flip), same noise: the cached fp16 features and the online encoder give
    the same update up to fp16 rounding of the features."""
    from adaslot.data.coco import CocoDataset
    from adaslot.data.transforms import hflip
    from adaslot.encoders import build_encoder
    from adaslot.store import open_store

    store = open_store(str(train_store))
    cached = torch.from_numpy(np.asarray(store.features[0:4]))[:, 1].float()  # view 1 = horizontal flip
    ds = CocoDataset.from_root(synthetic_coco, "train", size=224)
    images = torch.stack([hflip(ds[ds.index_of(int(i))]["image"]) for i in store.image_ids[:4]])
    online = build_encoder("random-vit-tiny")(images)
    cfg = model_config_for("coco", 1, feature_dim=192, num_tokens=196, num_slots=4, **TINY_MODEL)
    c, o = first_step(cfg, cached), first_step(cfg, online)
    for n in c[1]:
        # norm_slots.bias: exactly-zero gradient in theory (docs/method.md#slot-attention), noise only
        if n != "slot_attention.norm_slots.bias":
            assert (c[1][n] - o[1][n]).norm() <= 1e-2 * o[1][n].norm() + 1e-9, n
    assert_same_update(c, o)


def test_stage1_then_stage2_warm_start_from_cache(tmp_path, train_store):
    s1 = tmp_path / "s1"
    r1 = run_train(tiny(s1, from_cache=str(train_store), num_iters=2, cache_in_memory=True))
    assert r1["step"] == 2 and Path(r1["checkpoint"]).name == "step-00000002.pt"
    saved = json.loads((s1 / "config.json").read_text())
    assert saved["model"]["feature_dim"] == 192 and saved["model"]["num_tokens"] == 196  # from the store
    assert saved["train"]["num_iters"] == 2 and saved["encoder"] == "random-vit-tiny"

    s2 = tmp_path / "s2"
    r2 = run_train(tiny(s2, stage=2, from_cache=str(train_store), num_iters=2, num_slots=6,
                    warmstart=r1["checkpoint"]))
    p1, p2 = load_checkpoint(r1["checkpoint"]), load_checkpoint(r2["checkpoint"])
    assert p2["stage"] == 2 and p2["model_config"]["adaptive"] and p2["model_config"]["num_slots"] == 6
    new = set(p2["model"]) - set(p1["model"])
    assert new and all(k.startswith("selector.") for k in new)
    row = [json.loads(ln) for ln in (s2 / "metrics.jsonl").read_text().splitlines()][0]
    assert 0 <= row["kept_slots"] <= 6 and row["loss"] == pytest.approx(row["mse"] + 0.1 * row["sparsity"])


def test_warm_start_refuses_a_stage2_checkpoint_and_another_shape(tmp_path, train_store):
    r1 = run_train(tiny(tmp_path / "s1", from_cache=str(train_store), num_iters=1))
    r2 = run_train(tiny(tmp_path / "s2", stage=2, from_cache=str(train_store), num_iters=1, num_slots=6,
                    warmstart=r1["checkpoint"]))
    with pytest.raises(AdaslotError, match="stage-2 checkpoint"):
        run_train(tiny(tmp_path / "s3", stage=2, from_cache=str(train_store), num_iters=1,
                   warmstart=r2["checkpoint"]))
    with pytest.raises(AdaslotError, match="slot_dim"):
        run_train(tiny(tmp_path / "s4", stage=2, from_cache=str(train_store), num_iters=1,
                   model_overrides={**TINY_MODEL, "slot_dim": 16}, warmstart=r1["checkpoint"]))


def test_dense_decoding_matches_sparse_default(tmp_path, train_store):
    s1 = run_train(tiny(tmp_path / "s1", from_cache=str(train_store), num_iters=1))
    runs = {}
    for dense in (False, True):
        run = tmp_path / f"s2-{dense}"
        model = {**TINY_MODEL, "sparse_decoding": not dense}
        run_train(tiny(run, stage=2, from_cache=str(train_store), num_iters=3, num_slots=6,
                       model_overrides=model, warmstart=s1["checkpoint"]))
        runs[dense] = losses(run)
        assert json.loads((run / "config.json").read_text())["model"]["sparse_decoding"] is not dense
    # Same batches and noise: only the 1e-5 renormaliser term of the dropped slots' gradients differs.
    assert runs[False].keys() == runs[True].keys()
    for step, loss in runs[True].items():
        assert runs[False][step] == pytest.approx(loss, rel=1e-4)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, train_store):
    run = tmp_path / "nan"
    # lr 1e30: the first update overflows the parameters, so step 2's loss is not finite.
    with pytest.raises(AdaslotError) as e:
        run_train(tiny(run, from_cache=str(train_store), num_iters=5, lr=1e30, ckpt_every=1))
    msg = str(e.value)
    assert "at step 2" in msg and "step-00000001.pt" in msg and "\n" not in msg
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000001.pt"]
    assert load_checkpoint(run / "checkpoints" / "step-00000001.pt")["step"] == 1


def test_rerun_with_other_settings_is_refused_and_a_longer_one_continues(tmp_path, train_store):
    run = tmp_path / "r"
    run_train(tiny(run, from_cache=str(train_store), num_iters=2))
    with pytest.raises(AdaslotError, match="other settings"):
        run_train(tiny(run, from_cache=str(train_store), num_iters=4, lr=5e-3))
    r = run_train(tiny(run, from_cache=str(train_store), num_iters=3))  # longer: continues
    assert r["step"] == 3 and sorted(losses(run)) == [1, 2, 3]


@pytest.mark.parametrize(("kw", "msg"), [
    ({"encoder": "dino-vitb-16"}, "does not match"),  # a store of another encoder
    ({"from_cache": "COCO_ROOT"}, "feature store"),  # a folder that is not a store
    ({"from_cache": None}, "give one input"),
    ({"wandb": True}, "wandb"),  # the package is not installed here
])
def test_bad_input_is_refused_in_one_line(tmp_path, train_store, synthetic_coco, kw, msg):
    if kw.get("from_cache") == "COCO_ROOT":
        kw = {"from_cache": str(synthetic_coco)}
    with pytest.raises(AdaslotError, match=msg):
        run_train(tiny(tmp_path / "run", **{"from_cache": str(train_store), **kw}))


@pytest.mark.e2e
def test_online_mode_with_validation(tmp_path, synthetic_coco):
    run = tmp_path / "online"
    r = run_train(tiny(run, data=DataSpec(root=str(synthetic_coco)), encoder="random-vit-tiny", batch_size=2,
                   num_iters=2, val_every=2, val_max_images=2))
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert r["step"] == 2 and [x["step"] for x in rows if "loss" in x] == [1, 2]
    assert any("val/fg_ari" in x for x in rows)  # periodic validation through adaslot.evaluate


@pytest.mark.e2e
def test_online_strict_stops_at_an_unreadable_image(tmp_path, synthetic_coco):
    """Online mode skips an unreadable image by default; --strict stops at it with one line."""
    import shutil

    data = tmp_path / "coco"
    shutil.copytree(synthetic_coco, data)
    victim = sorted((data / "train2017").iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    common = dict(encoder="random-vit-tiny", batch_size=12, num_iters=1, workers=0)
    r = run_train(tiny(tmp_path / "lenient", data=DataSpec(root=str(data)), **common))
    assert r["step"] == 1
    with pytest.raises(AdaslotError, match=rf"\({victim}\): unreadable .*drop --strict"):
        run_train(tiny(tmp_path / "strict", data=DataSpec(root=str(data), strict=True), **common))
    for image in (data / "train2017").iterdir():  # nothing readable: an error, not an endless loop
        image.write_bytes(b"not a jpeg")
    with pytest.raises(AdaslotError, match="no training image could be read"):
        run_train(tiny(tmp_path / "none", data=DataSpec(root=str(data)), **common))


@pytest.mark.e2e  # the adaslot command in a subprocess
def test_cli_error_is_one_line(tmp_path):
    r = subprocess.run(cli_command("train", "--out", str(tmp_path / "x"), "--model", "colour=3"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--model expects KEY=VALUE" in r.stderr


@pytest.mark.e2e
def test_bf16_autocast_tracks_fp32(tmp_path, train_store):
    """Short parity check of --precision bf16 (the few-hundred-step curve is benchmarks/precision.py)."""
    runs = {p: tmp_path / p for p in ("fp32", "bf16")}
    for p, out in runs.items():
        run_train(tiny(out, from_cache=str(train_store), num_iters=4, precision=p, cache_in_memory=True))
    a, b = losses(runs["fp32"]), losses(runs["bf16"])
    assert a.keys() == b.keys() and a != b  # bf16 really changed the arithmetic
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-2)


@pytest.mark.benchmark
@pytest.mark.e2e
def test_compile_tracks_fp32(tmp_path, train_store):
    """--compile (torch.compile of model + loss; ~1 min of compilation on CPU, hence benchmark-marked)."""
    runs = {c: tmp_path / str(c) for c in (False, True)}
    for c, out in runs.items():
        run_train(tiny(out, from_cache=str(train_store), num_iters=4, compile=c, cache_in_memory=True))
    a, b = losses(runs[False]), losses(runs[True])
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4)


@pytest.mark.parametrize("kw,msg", [
    ({"ckpt_every": 0}, "--ckpt-every must be >= 1"), ({"log_every": 0}, "--log-every must be >= 1"),
    ({"lr_half_life": 0}, "--lr-half-life must be >= 1"), ({"lr": -1.0}, "--lr must be > 0"),
    ({"workers": -1}, "--workers must be >= 0"), ({"num_slots": 0}, "--num-slots must be >= 1"),
    ({"model_overrides": {**TINY_MODEL, "slot_dim": 0}}, "--model slot_dim must be >= 1"),
])
def test_bad_numeric_flags_refused_before_the_run_folder(tmp_path, train_store, kw, msg):
    run = tmp_path / "r"
    with pytest.raises(AdaslotError, match=msg):
        run_train(tiny(run, from_cache=str(train_store), num_iters=2, **kw))
    assert not run.exists()  # no config.json / metrics.jsonl left looking like a run


def test_cli_bad_model_value_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from adaslot.cli import app

    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "x"), "--model", "slot_dim=abc"])
    assert isinstance(r.exception, AdaslotError) and "expects an integer" in str(r.exception)


@pytest.mark.e2e
def test_cli_rerun_of_a_finished_run_prints_no_nan_loss(tmp_path, train_store):
    from typer.testing import CliRunner

    from adaslot.cli import app

    run = tmp_path / "done"
    args = ["train", "--from-cache", str(train_store), "--out", str(run), *TINY_FLAGS, "--num-slots", "4",
            "--num-iters", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-progress"]
    assert CliRunner().invoke(app, args).exit_code == 0
    r = CliRunner().invoke(app, args)  # already complete: no step taken, so no "loss nan"
    assert r.exit_code == 0 and "nan" not in r.output and "step 1, checkpoint" in r.output
