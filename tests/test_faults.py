"""Storage faults, for real: a file-size limit (writes fail with EFBIG, as on a full disk), a read-only
`--out`, and damaged checkpoints. Each test checks the one-line message, the exit code and what is left on
disk.

The store's own faults (a cut or changed shard, zarr.json cut short) are tested with the store.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from helpers import TINY_FLAGS, faulty_cli, losses, read_only_prefix, run_cli, tiny_train, torch_threads

from adaslot import faults
from adaslot.checkpoint import load_checkpoint
from adaslot.train import run_train

pytestmark = pytest.mark.e2e  # commands meeting faults, in subprocesses

# 10 steps, a checkpoint every 5, two kept: the run folder the tests damage or fill up.
KW = dict(ckpt_every=5, keep_last=2, seed=3)


def train_flags(store: Path, out: Path, num_iters: int) -> list[str]:
    """The CLI form of tiny_train(out, from_cache=store, num_iters=num_iters, **KW)."""
    return ["train", "--from-cache", str(store), *TINY_FLAGS, "--num-slots", "4", "--batch-size", "4",
            "--lr-schedule", "constant", "--lr", "1e-3", "--num-iters", str(num_iters), "--ckpt-every", "5",
            "--keep-last", "2", "--log-every", "1", "--seed", "3", "--workers", "0", "--device", "cpu",
            "--no-progress", "--out", str(out)]


@pytest.fixture(scope="module")
def runs(train_store, tmp_path_factory) -> dict[str, Path]:
    """"ref": an uninterrupted 20-step run; "run10": the same run stopped after step 10 (checkpoints 5, 10).
    One torch thread, as the child processes use."""
    base = tmp_path_factory.mktemp("runs")
    with torch_threads(1):
        run_train(tiny_train(base / "ref", from_cache=str(train_store), num_iters=20, **KW))
        run_train(tiny_train(base / "run10", from_cache=str(train_store), num_iters=10, **KW))
    return {"ref": base / "ref", "run10": base / "run10"}


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_disk_fills_at_a_checkpoint(runs, train_store, tmp_path):
    """Checkpoint 15 does not fit: one line naming it and the last good checkpoint, exit 2, nothing half
    written; rerunning the same command continues and gives the uninterrupted run's losses."""
    run = tmp_path / "run"
    shutil.copytree(runs["run10"], run, symlinks=True)
    ckpts = run / "checkpoints"
    size = (ckpts / "step-00000010.pt").stat().st_size
    done = faulty_cli(*train_flags(train_store, run, 20), fsize=size // 2)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"adaslot: error: cannot write {ckpts / 'step-00000015.pt'}: file too large for the file system or "
        f"`ulimit -f` (EFBIG); the last good checkpoint is step 10 ({ckpts / 'step-00000010.pt'}); raise the "
        "limit or write to another file system, then rerun the same command to continue")
    assert names(ckpts) == ["last.pt", "step-00000005.pt", "step-00000010.pt"]  # no temp file, no step 15
    assert os.readlink(ckpts / "last.pt") == "step-00000010.pt"
    assert load_checkpoint(ckpts / "step-00000010.pt")["step"] == 10
    assert max(losses(run)) == 15  # steps 11-15 were logged before the checkpoint failed

    with torch_threads(1):
        run_train(tiny_train(run, from_cache=str(train_store), num_iters=20, **KW))
    assert losses(run) == losses(runs["ref"]) and sorted(losses(run)) == list(range(1, 21))
    assert os.readlink(ckpts / "last.pt") == "step-00000020.pt"


def test_eval_outputs_over_the_size_limit(runs, synthetic_coco, tmp_path):
    """The results do not fit: one line, exit 2; the masks are complete, and neither the count picture nor
    metrics.json is there (not even the earlier eval's, which must not pass for this run's), no temp file."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("{}\n")  # an earlier eval's result
    # masks ~300 B each, crop_boxes.json ~1 kB; count_confusion.png ~50 kB, then metrics.json ~7 kB. No loader
    # workers: the limit would also stop their shared-memory files (a full disk does not touch /dev/shm).
    done = faulty_cli("eval", str(runs["run10"] / "checkpoints" / "step-00000010.pt"), "--root",
                      str(synthetic_coco), "--save-masks", "--num-vis", "0", "--workers", "0", "--device",
                      "cpu", "--no-progress", "--out", str(out), fsize=2000)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"adaslot: error: cannot write {out / 'count_confusion.png'}: file too large for the file system or "
        f"`ulimit -f` (EFBIG); {out / 'metrics.json'} is not written (it comes last); raise the limit or "
        "write to another file system, then rerun the same command")
    assert names(out) == ["masks"]
    boxes = json.loads((out / "masks" / "crop_boxes.json").read_text())
    assert names(out / "masks") == sorted(f"{int(i):012d}.png" for i in boxes) + ["crop_boxes.json"]
    assert len(boxes) == 6  # every val image


@pytest.mark.parametrize("command", ["train", "cache-features"])
def test_out_on_a_read_only_folder(command, train_store, synthetic_coco, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    prefix, fault = read_only_prefix(folder)
    try:
        if command == "train":
            out = folder / "run"
            done = faulty_cli(*train_flags(train_store, out, 10), prefix=prefix)
            kept, rerun = "no checkpoint was written yet", "to continue"
        else:
            out = folder / "train.zarr"
            done = faulty_cli("cache-features", "--root", str(synthetic_coco), "--encoder", "random-vit-tiny",
                              "--chunk-size", "4", "--shard-size", "8", "--workers", "0", "--device", "cpu",
                              "--no-progress", "--out", str(out), prefix=prefix)
            kept, rerun = "nothing was written yet", "(it computes only the missing shards)"
        fix = ("fix the permissions or use another folder" if "EACCES" in fault
               else "write to a writable folder (or remount it read-write)")
        where = f"cannot write {out}" if "EROFS" in fault else str(out)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (
            f"adaslot: error: {where}: {fault}; {kept}; {fix}, then rerun the same command {rerun}")
        assert names(folder) == []
    finally:
        folder.chmod(0o755)
    (folder / "writable").write_text("the read-only view was the child's alone")


def test_describe_names_path_fault_kept_and_fix():
    """The one-line format, and a note that fails to compute is left out rather than hiding the fault."""
    try:
        faults.note(kept="the last good checkpoint is step 30 (run/step-30.pt)", rerun="to continue")
        assert faults.describe(OSError(errno.ENOSPC, "No space left on device", "run/step-40.pt")) == (
            "cannot write run/step-40.pt: no space left on device (ENOSPC); the last good checkpoint is step "
            "30 (run/step-30.pt); free space, then rerun the same command to continue")
        faults.note(kept=lambda: str(1 / 0))
        rename = OSError(errno.EROFS, "Read-only file system", "out/.m.json.tmp-7", None, "out/m.json")
        assert faults.describe(rename) == (
            "cannot write out/m.json: read-only file system (EROFS); write to a writable folder (or remount "
            "it read-write), then rerun the same command to continue")
        faults.reset()
        assert faults.describe(OSError("Unable to open file (bad superblock)\ndetails")) == (
            "Unable to open file (bad superblock); rerun the same command")
    finally:
        faults.reset()


def _flip_a_tensor_byte(path: Path) -> str:
    """Flip one byte in the middle of the largest tensor of a torch zip file; returns that entry's name."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        n_name, n_extra = (int.from_bytes(f.read(2), "little") for _ in range(2))
    pos = info.header_offset + 30 + n_name + n_extra + info.file_size // 2
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))
    return info.filename


@pytest.mark.parametrize("damage", ["cut-short", "bytes-changed"])
def test_resume_steps_over_a_damaged_newest_checkpoint(damage, runs, train_store, tmp_path, monkeypatch,
                                                       capsys):
    """The newest checkpoint (10) is damaged, 5 is kept by --keep-last: one warning line, the run resumes
    from 5, the losses equal the uninterrupted run's, and the damaged file is kept aside."""
    run = tmp_path / "run"
    shutil.copytree(runs["run10"], run, symlinks=True)
    ckpts = run / "checkpoints"
    newest = ckpts / "step-00000010.pt"
    if damage == "cut-short":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        why = "is cut short (no zip directory at its end)"
    else:
        why = f"has changed bytes (checksum mismatch in {_flip_a_tensor_byte(newest)})"
    damaged = newest.read_bytes()
    with torch_threads(1):
        code, err = run_cli(train_flags(train_store, run, 20), monkeypatch, capsys)
    assert code == 0
    assert err == (f"adaslot: warning: step-00000010.pt {why}; kept as step-00000010.pt.damaged, resuming "
                   "from step-00000005.pt, the newest readable checkpoint")
    assert losses(run) == losses(runs["ref"]) and sorted(losses(run)) == list(range(1, 21))
    assert names(ckpts) == ["last.pt", "step-00000010.pt.damaged", "step-00000015.pt", "step-00000020.pt"]
    assert (ckpts / "step-00000010.pt.damaged").read_bytes() == damaged
    assert os.readlink(ckpts / "last.pt") == "step-00000020.pt"


def test_resume_stops_when_no_checkpoint_can_be_read(runs, train_store, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["run10"], run, symlinks=True)
    ckpts = run / "checkpoints"
    for p in ckpts.glob("step-*.pt"):
        p.write_bytes(p.read_bytes()[:1000])
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    code, err = run_cli(train_flags(train_store, run, 20), monkeypatch, capsys)
    assert code == 2
    cut = "is cut short (no zip directory at its end)"
    assert err == (f"adaslot: error: no checkpoint in {ckpts} can be read: step-00000010.pt {cut}, "
                   f"step-00000005.pt {cut}; move them aside to start the run again, or use a new --out")
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before  # nothing renamed or rewritten
    assert os.readlink(ckpts / "last.pt") == "step-00000010.pt"


def test_disk_fills_while_caching(synthetic_coco, tmp_path):
    """A shard that does not fit: one line naming the store and what is kept, exit 2, the store left
    incomplete (refused by train); the same command without the limit then finishes it."""
    from adaslot.store import open_store

    out = tmp_path / "train.zarr"
    args = ["cache-features", "--root", str(synthetic_coco), "--encoder", "random-vit-tiny", "--image-size",
            "64", "--chunk-size", "2", "--shard-size", "4", "--workers", "0", "--device", "cpu",
            "--no-progress", "--out", str(out)]
    done = faulty_cli(*args, fsize=30_000)  # one shard: 4 samples x 2 views x 16 x 192 fp16 = 49 kB
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.startswith(f"adaslot: error: cannot write {out}") and "\n" not in err
    assert "(EFBIG); 0 of 3 shards" in err
    assert err.endswith("rerun the same command (it computes only the missing shards)")
    assert not open_store(out).complete
    assert faulty_cli(*args).returncode == 0 and open_store(out).complete
