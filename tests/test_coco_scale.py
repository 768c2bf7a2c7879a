"""benchmarks/coco_scale.py: its measuring of one command (wall time, start-up seen on disk, peak RSS, files,
SIGKILL at a condition) on small real subprocesses; the whole --quick rehearsal is a benchmark-marked test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import coco_scale  # noqa: E402

WRITER = (
    "import sys, time, pathlib\nout = pathlib.Path(sys.argv[1]); out.mkdir(exist_ok=True)\n"
    "x = bytearray(60 * 2**20)\nfor i in range(40):\n    (out / f'{i}.txt').write_text('x')\n"
    "    time.sleep(0.02)\n"
)


def test_run_measures_startup_rss_files_and_kills_on_condition(tmp_path):
    out = tmp_path / "out"
    res: list[dict] = []
    r = coco_scale.run(
        "writes",
        [sys.executable, "-c", WRITER, str(out)],
        out,
        first=lambda: (out / "0.txt").exists(),
        results=res,
    )
    assert r["exit_code"] == 0 and r["files"] == 40 and res == [r]
    assert 0 < r["startup_s"] <= r["wall_s"]
    assert r["peak_rss_mb"] > 60  # the 60 MiB buffer of the child, seen through os.wait4
    assert 0 < r["cpu_s"] <= r["wall_s"] * (os.cpu_count() or 1)
    out2 = tmp_path / "killed"
    k = coco_scale.run(
        "killed", [sys.executable, "-c", WRITER, str(out2)], out2, kill_when=lambda: (out2 / "5.txt").exists()
    )
    assert k["exit_code"] == -9 and "killed_at_s" in k and 6 <= k["files"] < 40
    assert coco_scale.lines(out2 / "none") == 0


def test_table_and_memory_ratio():
    res = [
        {
            "step": "eval 500 images",
            "wall_s": 1.0,
            "startup_s": 0.5,
            "peak_rss_mb": 300.0,
            "exit_code": 0,
            "files": 3,
            "images": 500,
        },
        {
            "step": "eval 50 images",
            "wall_s": 1.0,
            "startup_s": None,
            "peak_rss_mb": 250.0,
            "exit_code": 1,
            "files": None,
        },
    ]
    assert coco_scale.memory_ratios(res) == {"peak RSS eval 500 images / eval 50 images": 1.2}
    md = coco_scale.table({"results": res})
    assert "| eval 500 images | 1.0 | 0.5 | 300.0 | 3 | images 500 |" in md
    assert "FAILED (exit 1)" in md


@pytest.mark.benchmark
def test_quick_rehearsal_runs_every_step(tmp_path):
    subprocess.run(
        [sys.executable, str(Path(coco_scale.__file__)), "--quick", "--work", str(tmp_path)], check=True
    )
    import json

    result = json.loads((tmp_path / "coco_scale.json").read_text())
    steps = {r["step"]: r for r in result["results"]}
    assert steps["segment resumed"]["redone"] == 0
    assert all(r["exit_code"] == 0 for r in result["results"] if "killed_at_s" not in r)
