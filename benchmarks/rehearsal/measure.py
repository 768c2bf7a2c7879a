"""Run one command in its own process and measure it from outside: wall time, start-up seen on disk, peak RSS
(its waited-for children included, os.wait4), files left in its output folder; SIGKILL it on a condition."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent.parent


class Sink(Protocol):
    """Where a measured step goes: a list, or report.Results (which saves after each step)."""

    def append(self, r: dict[str, Any], /) -> None: ...


def cli(*args: str, code: Path = ROOT) -> list[str]:
    """`python CODE/cli.py ARGS`: the script's folder comes first on sys.path, so CODE's adaslot runs."""
    return [sys.executable, str(code / "cli.py"), *args]


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder)) if folder.exists() else 0


def run(
    name: str,
    cmd: list[str],
    out: Path | None,
    first: Callable[[], bool] | None = None,
    kill_when: Callable[[], bool] | None = None,
    results: Sink | None = None,
    code: Path = ROOT,
    **extra: Any,
) -> dict[str, Any]:
    """Run `cmd`, watching `first()` (start-up) and `kill_when()` (SIGKILL it then) -> its measurements."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True
    )
    seen: dict[str, float] = {}
    stop = threading.Event()
    output: list[str] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)

    def watch() -> None:
        while not stop.is_set():
            if first is not None and "startup" not in seen and first():
                seen["startup"] = time.perf_counter() - t0
            if kill_when is not None and "killed" not in seen and kill_when():
                seen["killed"] = time.perf_counter() - t0
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.05)

    threads = [threading.Thread(target=drain, daemon=True), threading.Thread(target=watch, daemon=True)]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(timeout=5)
    rc = os.waitstatus_to_exitcode(status)
    r = {
        "step": name,
        "wall_s": round(wall, 2),
        "startup_s": round(seen["startup"], 2) if "startup" in seen else None,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),  # user + system, its children included
        "exit_code": rc,
        "files": count_files(out) if out is not None else None,
        **extra,
    }
    if "killed" in seen:
        r["killed_at_s"] = round(seen["killed"], 2)
    text = "".join(output)
    if rc != 0 and "killed" not in seen:
        r["error"] = text[-1500:]
        print(text[-3000:], file=sys.stderr)
    r["output_tail"] = text[-400:]
    print(
        f"  {name}: {wall:.1f} s, start-up {r['startup_s']} s, peak RSS {r['peak_rss_mb']} MB, "
        f"files {r['files']}, exit {rc}",
        flush=True,
    )
    if results is not None:
        results.append(r)
    return r


def lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0
