"""Run every benchmark in this folder, one after another, and print one table of their ratio lines.

Each benchmark is a standalone script that measures ours and the plain way in the same run and prints its
ratios last (lines containing "ratio"). This runner collects those lines, so the table is exactly what
the scripts printed. `make bench` runs it; `--only NAME` runs a subset. Each benchmark that finishes has its
ratio lines written to docs/results/NAME.json with the machine and date (the file the docs' tables are
rendered from by `make docs`; `--no-results` leaves those files alone).

    python benchmarks/run_all.py [--only sparse_decoding cache_throughput] [--timeout 900] [--no-results]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "docs" / "results"
ORDER = ["cache_throughput", "cache_host", "loader_throughput", "train_step", "sparse_decoding",
         "decoder_arithmetic", "precision", "sweep_throughput", "movi_read", "coco_scale"]
LONG = {"coco_scale": 2400}  # seconds: the COCO-cardinality rehearsal runs every command (docs/scale.md)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    py = platform.python_version()
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, Python {py}"


def write_results(name: str, ratios: list[str], machine_text: str, folder: Path = RESULTS) -> Path:
    """FOLDER/NAME.json (docs/results by default): one row per ratio line -> measure, ratio."""
    from adaslot.files import write_json

    rows = []
    for line in ratios:  # "ratio MEASURE = VALUE ..." or "ratio MEASURE: VALUE ..."
        text = line.removeprefix("ratio").strip()
        sep = " = " if " = " in text else ": " if ": " in text else None
        measure, value = text.split(sep, 1) if sep else (text, "")
        rows.append({"benchmark": name, "measure": measure.strip(), "ratio": value.strip()})
    return write_json(folder / f"{name}.json", {
        "title": name, "benchmark": f"benchmarks/{name}.py", "machine": machine_text,
        "date": time.strftime("%Y-%m-%d"), "command": f"python benchmarks/run_all.py --only {name}",
        "note": "written by benchmarks/run_all.py from the benchmark's ratio lines", "rows": rows})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="benchmark names (file stems) to run")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per benchmark")
    ap.add_argument("--no-results", action="store_true", help="do not write docs/results/NAME.json")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the NAME.json files")
    args = ap.parse_args()
    here = machine()
    names = args.only or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    rows: list[tuple[str, str, float]] = []
    for name in names:
        script = HERE / f"{name}.py"
        if not script.exists():
            sys.exit(f"run_all: no benchmark {name!r} in {HERE}")
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                  timeout=max(args.timeout, LONG.get(name, 0)))
            out, ok = proc.stdout, proc.returncode == 0
            if not ok:
                out += proc.stderr[-2000:]
        except subprocess.TimeoutExpired:
            out, ok = "", False
        secs = time.perf_counter() - t0
        print(out, flush=True)
        ratios = [ln.strip() for ln in out.splitlines() if "ratio" in ln.lower()]
        if not ok:
            ratios = ratios or ["FAILED (see output above)"]
        rows.extend((name, r, secs) for r in ratios)
        if ok and ratios and not args.no_results:
            print(f"wrote {write_results(name, ratios, here, args.results)}", flush=True)
    print(f"\nmachine: {here}")
    width = max(len(n) for n, _, _ in rows) if rows else 10
    print(f"{'benchmark':{width}s}  {'seconds':>7s}  result")
    for name, line, secs in rows:
        print(f"{name:{width}s}  {secs:7.0f}  {line}")


if __name__ == "__main__":
    main()
