"""`adaslot sweep`: variants equal plain `adaslot train` runs bit for bit, kill + rerun gives the same table,
new grid values add variants, --collect, --print-commands, TOML, warm start auto, one-line errors, the PNGs.

Tiny slot model on the random-init ViT-Tiny store of the synthetic fixture; CPU, 1 torch thread.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_FLAGS, cli_command, losses, run_cli, torch_threads
from PIL import Image

from adaslot.checkpoint import list_checkpoints, load_checkpoint
from adaslot.train import read_metrics

pytestmark = pytest.mark.e2e  # whole sweeps

TIMING = ("steps_per_s", "wall_s")


def sweep_args(store: Path, val: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--out", str(out), "--from-cache", str(store), *TINY_FLAGS, "--batch-size", "4",
            "--lr-schedule", "constant", "--lr", "1e-3", "--num-slots", "4", "--workers", "0",
            "--val-from-cache", str(val), "--log-every", "1", "--no-progress", *extra]


def cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:  # noqa: ANN001
    """`adaslot ARGS` in this process -> (exit code, stdout, stderr)."""
    from adaslot import cli as adaslot_cli

    monkeypatch.setattr("sys.argv", ["adaslot", *args])
    with pytest.raises(SystemExit) as e:
        adaslot_cli.main()
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err.strip()


@pytest.fixture(scope="module")
def val_store(synthetic_coco, tmp_path_factory):
    """The 6 val images of the synthetic fixture, cached (the sweeps score on it without the encoder)."""
    from adaslot.config import CacheConfig, DataSpec
    from adaslot.store.writer import run_cache_features

    out = tmp_path_factory.mktemp("val_store") / "val.zarr"
    run_cache_features(CacheConfig(out=str(out), data=DataSpec(root=str(synthetic_coco), split="val"),
                               encoder="random-vit-tiny", chunk_samples=4, shard_samples=8, batch_size=6,
                               workers=0, device="cpu", progress=False))
    return out


def one_thread(fn, *args):  # noqa: ANN001, ANN201
    """Run fn with 1 torch thread (the sweep workers' count), so sums match bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, train_store, val_store):
    """A finished stage-1 sweep: model.slot_dim 16 / 32 x seeds 1, 2 (two lockstep groups of two), 6 steps,
    periodic validation every 3 steps, scored on the 6 val images."""
    out = tmp_path_factory.mktemp("sweep") / "s1"
    args = sweep_args(train_store, val_store, out, "--num-iters", "6", "--ckpt-every", "3",
                      "--val-every", "3", "--grid", "model.slot_dim=16,32", "--seeds", "1,2")
    from adaslot import cli

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr("sys.argv", ["adaslot", *args])
        with pytest.raises(SystemExit) as e:
            cli.main()
        assert not e.value.code
    finally:
        mp.undo()
    return out, args


def test_a_variant_is_the_plain_train_command_bit_for_bit(stage1, tmp_path, monkeypatch, capsys,
                                                          synthetic_coco, val_store):
    out, args = stage1
    code, stdout, err = cli([*args, "--print-commands"], monkeypatch, capsys)
    commands = stdout.strip().splitlines()
    assert code == 0 and len(commands) == 4, err
    # the second variant of a lockstep group (slot_dim 32, seed 2): its batches came from the shared loader
    line = next(c for c in commands if "slot_dim=32" in c and "--seed 2" in c)
    argv = shlex.split(line)
    assert argv[:2] == ["adaslot", "train"]
    assert argv[argv.index("--threads") + 1] == "1"  # the sweep's worker thread count travels with it
    run_dir = Path(argv[argv.index("--out") + 1])
    assert run_dir == out / "runs" / "slot_dim=32_seed=2"
    argv[argv.index("--out") + 1] = str(tmp_path / "plain")
    with torch_threads(2):  # the caller's thread count does not matter: --threads sets the run's
        code, err = run_cli(argv[1:], monkeypatch, capsys)
        assert torch.get_num_threads() == 2
    assert code == 0, err
    assert losses(tmp_path / "plain") == losses(run_dir) and sorted(losses(run_dir)) == list(range(1, 7))
    a = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # an ordinary run folder: `adaslot train --out` resumes it (complete), `adaslot eval` scores it
    code, stdout, _ = one_thread(cli, shlex.split(line)[1:], monkeypatch, capsys)
    assert code == 0 and "already complete at step 6" in stdout
    code, err = run_cli(["eval", str(run_dir / "checkpoints" / "last.pt"), "--root", str(synthetic_coco),
                         "--from-cache", str(val_store), "--out", str(tmp_path / "eval"), "--num-vis", "0",
                         "--protocol", "adaslot", "--workers", "0", "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_results_table_and_plots(stage1):
    out, _ = stage1
    table = rows(out / "sweep.csv")
    assert [r["run"] for r in table] == ["slot_dim=16_seed=1", "slot_dim=16_seed=2", "slot_dim=32_seed=1",
                                         "slot_dim=32_seed=2"]
    assert {r["status"] for r in table} == {"done"} and {r["model.slot_dim"] for r in table} == {"16", "32"}
    for r in table:
        run = out / "runs" / r["run"]
        score = json.loads((run / "score.json").read_text())
        assert score["step"] == 6 and score["eval"]["num_images"] == 6
        assert float(r["final_loss"]) == losses(run)[6] and float(r["fg_ari"]) == score["eval"]["fg_ari"]
        assert float(r["mean_objects"]) == score["eval"]["mean_objects"] > 0
    summary = (out / "summary.md").read_text()
    lines = [ln for ln in summary.splitlines() if ln.startswith("| ")]
    assert len(lines) == 3 and "★" in lines[1] and "best" in lines[1]  # header + 2 variants, best first
    # the best variant has the higher mean FG-ARI over its two seeds
    means = {v: np.mean([float(r["fg_ari"]) for r in table if r["model.slot_dim"] == v])
             for v in ("16", "32")}
    assert f"slot_dim={max(means, key=means.get)}" in lines[1]
    for name in ("curves.png", "effects.png"):
        img = np.asarray(Image.open(out / name).convert("RGB")).astype(float)
        assert img.shape[0] > 300 and img.shape[1] > 500, name
        assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50, f"{name} looks blank"
    # periodic validation made it into the logs the curves are drawn from
    assert any("val/fg_ari" in r for r in read_metrics(out / "runs" / "slot_dim=16_seed=1"))


def test_collect_rebuilds_the_same_table_from_run_folders(stage1, tmp_path, monkeypatch, capsys):
    out, _ = stage1
    shutil.copytree(out / "runs", tmp_path / "runs")
    (tmp_path / "runs" / "slot_dim=16_seed=2" / "score.json").unlink()  # made elsewhere: not scored yet
    code, err = run_cli(["sweep", "--collect", str(tmp_path), "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    assert rows(tmp_path / "sweep.csv") == rows(out / "sweep.csv")
    assert (tmp_path / "runs" / "slot_dim=16_seed=2" / "score.json").is_file()


def test_collect_with_score_method_rescores_as_eval_merge_slots(stage1, tmp_path, monkeypatch, capsys,
                                                               synthetic_coco, val_store):
    out, _ = stage1
    shutil.copytree(out / "runs", tmp_path / "runs")
    code, err = run_cli(["sweep", "--collect", str(tmp_path), "--score-method", "merge_slots=0.5",
                         "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "slot_dim=16_seed=1"
    score = json.loads((run / "score.json").read_text())
    assert score["score_method"] == {"merge_slots": 0.5} and score["method"]["merge_slots"] == 0.5
    code, err = run_cli(["eval", str(run / "checkpoints" / "last.pt"), "--root", str(synthetic_coco),
                         "--from-cache", str(val_store), "--out", str(tmp_path / "eval"), "--num-vis", "0",
                         "--protocol", "adaslot", "--workers", "0", "--seed", "1", "--merge-slots", "0.5",
                         "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())["protocols"]["adaslot"]
    for key in ("fg_ari", "mbo_i", "mean_kept_slots"):
        assert score["eval"][key] == pytest.approx(ev[key], abs=1e-12), key
    assert score["eval"]["mean_kept_slots"] < 4  # 4 slots, some merged
    table = rows(tmp_path / "sweep.csv")
    assert float(table[0]["mean_kept_slots"]) < 4
    assert "inference method merge_slots=0.5" in (tmp_path / "summary.md").read_text()
    # back to no merging: rescored, the table is the sweep's own again
    code, err = run_cli(["sweep", "--collect", str(tmp_path), "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    assert rows(tmp_path / "sweep.csv") == rows(out / "sweep.csv")


def test_stage2_warmstart_auto_picks_the_matching_stage1_run(stage1, tmp_path, monkeypatch, capsys,
                                                             train_store, val_store):
    s1, _ = stage1
    args = sweep_args(train_store, val_store, tmp_path / "s2", "--stage", "2", "--num-iters", "2",
                      "--model", "slot_dim=16", "--warmstart", "auto", "--stage1-sweep", str(s1),
                      "--grid", "sparsity_weight=0.1,1", "--seeds", "2")
    code, err = one_thread(run_cli, args, monkeypatch, capsys)
    assert code == 0, err
    for w in ("0.1", "1.0"):
        run = tmp_path / "s2" / "runs" / f"sparsity_weight={w}_seed=2"
        ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
        assert ckpt["stage"] == 2
        assert ckpt["train_config"]["warmstart"] == str(s1 / "runs" / "slot_dim=16_seed=2" / "checkpoints" /
                                                        "last.pt")
    assert "mean_kept_slots" in rows(tmp_path / "s2" / "sweep.csv")[0]
    # no stage-1 run has seed 5: one line, nothing written
    code, err = run_cli([*args[:-1], "5"], monkeypatch, capsys)
    assert code == 2 and "--warmstart auto: no stage-1 run" in err and "seed=5" in err


def test_variants_that_fail_before_their_first_step_are_one_line(stage1, tmp_path, monkeypatch, capsys,
                                                                 train_store, val_store):
    s1, _ = stage1
    ckpt = s1 / "runs" / "slot_dim=16_seed=1" / "checkpoints" / "last.pt"
    args = sweep_args(train_store, val_store, tmp_path / "s2", "--stage", "2", "--num-iters", "1",
                      "--model", "slot_dim=32", "--warmstart", str(ckpt), "--grid", "sparsity_weight=0.1,1")
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "2 of 2 variants failed" in err and "different model shape" in err
    assert len(err.splitlines()) == 1


def test_warmstart_auto_after_a_stage1_sweep_over_k_takes_the_run_with_the_variants_k(
        tmp_path, monkeypatch, capsys, train_store, val_store):
    s1 = tmp_path / "s1"
    first = sweep_args(train_store, val_store, s1, "--num-iters", "2", "--grid", "num_slots=3,4",
                       "--seeds", "1")
    code, err = one_thread(run_cli, first, monkeypatch, capsys)
    assert code == 0, err
    args = sweep_args(train_store, val_store, tmp_path / "s2", "--stage", "2", "--num-iters", "1",
                      "--warmstart", "auto", "--stage1-sweep", str(s1), "--grid", "num_slots=3,4",
                      "--seeds", "1")
    code, err = one_thread(run_cli, args, monkeypatch, capsys)
    assert code == 0, err
    for k in (3, 4):
        last = Path("runs") / f"num_slots={k}_seed=1" / "checkpoints" / "last.pt"
        assert load_checkpoint(tmp_path / "s2" / last)["train_config"]["warmstart"] == str(s1 / last)
    # K=5 was not in the stage-1 sweep: both K runs match the other keys, neither is picked silently
    code, err = run_cli([*args[:-3], "num_slots=5", "--seeds", "1"], monkeypatch, capsys)
    assert code == 2 and "2 stage-1 runs" in err


@pytest.mark.parametrize("extra, message", [
    (["--grid", "nope=1,2"], "--grid nope: unknown setting"),
    (["--grid", "num_slots=four"], "--grid num_slots=four: num_slots expects an integer"),
    (["--grid", "num_slots=0,2"], "variant num_slots=0: --num-slots must be >= 1, got 0"),
    (["--grid", "model.slot_dim=8,0"], "variant model.slot_dim=0: --model slot_dim must be >= 1"),
    (["--grid", "model.decoder_width=8"], "--grid model.decoder_width: unknown model setting"),
    (["--grid", "seed=1,2"], "--grid seed: not a grid key (use --seeds)"),
    (["--grid", "lr"], "--grid expects KEY=V1,V2,..."),
    (["--seeds", "1,x"], "--seeds expects integers"),
    (["--rank-by", "fg_aril"], "--rank-by fg_aril: unknown metric"),
    (["--rank-by", "mean_kept_slots"], "--rank-by mean_kept_slots is a stage-2 metric"),
    (["--warmstart", "auto"], "--warmstart is for stage 2"),
    (["--stage", "2", "--warmstart", "auto"], "--warmstart auto needs --stage1-sweep"),
])
def test_bad_settings_are_one_line_before_anything_runs(extra, message, tmp_path, monkeypatch, capsys,
                                                        train_store, val_store):
    code, err = run_cli(sweep_args(train_store, val_store, tmp_path / "s", *extra), monkeypatch, capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_no_val_data_is_refused(tmp_path, monkeypatch, capsys, train_store):
    code, err = run_cli(["sweep", "--out", str(tmp_path / "s"), "--from-cache", str(train_store)],
                        monkeypatch, capsys)
    assert code == 2 and "--val-from-cache VAL_STORE or --val-root R" in err


def test_toml_holds_the_same_settings_as_flags(tmp_path, monkeypatch, capsys, train_store, val_store):
    flags = sweep_args(train_store, val_store, tmp_path / "s", "--grid", "num_slots=3,4",
                       "--grid", "model.decoder_hidden=32x32,64", "--seeds", "1,2", "--print-commands")
    code, from_flags, err = cli(flags, monkeypatch, capsys)
    assert code == 0, err
    assert len(from_flags.splitlines()) == 8
    assert "--model decoder_hidden=32x32" in from_flags and "--model decoder_hidden=64 " in from_flags
    toml = tmp_path / "sweep.toml"
    toml.write_text(f'''
out = "{tmp_path / 's'}"
from-cache = "{train_store}"
batch_size = 4
lr_schedule = "constant"
lr = 1e-3
num_slots = 7
workers = 0
val_from_cache = "{val_store}"
log_every = 1
progress = false
seeds = [1, 2]

[model]
slot_dim = 32
input_mlp_hidden = 64
slot_mlp_hidden = 64
decoder_hidden = [64, 64]
selector_hidden = 32

[grid]
num_slots = [3, 4]
"model.decoder_hidden" = ["32x32", [64]]
''')
    # a flag replaces the file's value (num_slots 7 -> 4, as in the flags above)
    code, stdout, err = cli(["sweep", str(toml), "--num-slots", "4", "--print-commands"], monkeypatch, capsys)
    assert code == 0, err
    assert stdout == from_flags
    toml.write_text(toml.read_text().replace("batch_size", "batch_sise"))
    code, err = run_cli(["sweep", str(toml)], monkeypatch, capsys)
    assert code == 2 and "unknown setting 'batch_sise'" in err


def test_sigkill_and_rerun_give_the_uninterrupted_table_and_new_values_add_variants(
        tmp_path, monkeypatch, capsys, train_store, val_store):
    common = ["--num-iters", "30", "--ckpt-every", "5", "--grid", "num_slots=3,4", "--seeds", "1"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    code, err = run_cli(sweep_args(train_store, val_store, ref, *common), monkeypatch, capsys)
    assert code == 0, err

    # two worker processes, one variant each; SIGKILL the sweep process once a checkpoint exists
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = sweep_args(train_store, val_store, run, *common, "--jobs", "2")
    proc = subprocess.Popen(cli_command(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not list((run / "runs").glob("*/checkpoints/step-00000005.pt")) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # its workers notice their sweep is gone and stop by themselves
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the workers outlived the killed sweep")
    steps = [int(p.stem.split("-")[1]) for d in (run / "runs").iterdir()
             for p in list_checkpoints(d / "checkpoints")[-1:]]
    assert steps and min(steps) < 30, "the kill should land mid-run"

    code, err = run_cli(sweep_args(train_store, val_store, run, *common), monkeypatch, capsys)
    assert code == 0, err
    assert rows(run / "sweep.csv", TIMING) == rows(ref / "sweep.csv", TIMING)
    for name in ("num_slots=3_seed=1", "num_slots=4_seed=1"):
        assert losses(run / "runs" / name) == losses(ref / "runs" / name)

    # the same command again: nothing to do; a new value: one new variant, the old ones untouched
    before = {p: p.stat().st_mtime_ns for p in (run / "runs").glob("*/metrics.jsonl")}
    code, stdout, _ = cli(sweep_args(train_store, val_store, run, *common), monkeypatch, capsys)
    assert code == 0 and "2 of 2 variants are already trained and scored" in stdout
    wider = [*common[:5], "num_slots=3,4,5", *common[6:]]
    code, err = run_cli(sweep_args(train_store, val_store, run, *wider), monkeypatch, capsys)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in before} == before
    table = rows(run / "sweep.csv")
    assert [r["num_slots"] for r in table] == ["3", "4", "5"] and {r["status"] for r in table} == {"done"}


def test_work_is_shared_out_by_decoder_and_input_mlp_cost(tmp_path):
    from adaslot.config import TrainConfig
    from adaslot.sweep.plan import assign, step_cost

    def run(k: int, hidden: int) -> TrainConfig:
        return TrainConfig(out=str(tmp_path / f"{k}-{hidden}"), from_cache="s", preset="demo", num_slots=k,
                           batch_size=32, num_iters=300, model_overrides={"decoder_hidden": (hidden, hidden)})

    # demo model: T 64, D 128, slot dim 64, input MLP 128; decoder 64 -> h -> h -> 129, K times; batch 32
    assert step_cost(run(4, 64)) == 32 * 64 * (4 * (64 * 64 + 64 * 64 + 64 * 129) + 128 * 128 + 128 * 64)
    assert step_cost(run(6, 128)) == 555_220_992
    group = [run(4, 64), run(4, 128), run(6, 64), run(6, 128)]  # costs 185, 387, 252, 555 (x 1e6)
    workers = assign([group], 2)
    names = [[[Path(c.out).name for c in unit] for unit in w] for w in workers]
    assert names == [[["4-64", "6-128"]], [["4-128", "6-64"]]]  # 740 vs 639, not 572 vs 808 in order


def test_to_flags_gives_the_sweep_command_line_back():
    import typer

    from adaslot.cli import _build, app
    from adaslot.config import SweepConfig, TrainConfig
    from adaslot.config.base import to_flags
    from adaslot.config.sweep import PER_VARIANT, parse_grid

    cfg = SweepConfig(out="sw", base=TrainConfig(out=PER_VARIANT, from_cache="s.zarr", val_root="data",
                                                 num_iters=30),
                      grid=parse_grid(["num_slots=4,6", "model.decoder_hidden=64x64,128x128"]), seeds=(0, 2),
                      score_images=8, progress=False)
    flags = to_flags(cfg)
    assert flags[flags.index("--seeds") + 1] == "0,2" and "num_slots=4,6" in flags
    sweep = typer.main.get_command(app).commands["sweep"]  # the click command typer builds
    assert _build(SweepConfig, sweep.make_context("sweep", list(flags)).params) == cfg
