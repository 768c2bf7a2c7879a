"""The rehearsal's results: the memory ratios, the markdown table, and the JSON + table written after every
step (so a run stopped early leaves what it measured)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any


class Results:
    """The measured steps of one rehearsal, saved to `json_path` (and its table to `md_path`) after each one.
    meta: the run's sizes (train_images, scale, ...), written at the top of the JSON."""

    def __init__(self, json_path: Path | None, md_path: Path | None, meta: dict[str, Any]) -> None:
        self.steps: list[dict[str, Any]] = []
        self.json_path, self.md_path, self.meta = json_path, md_path, meta
        self.t0 = time.perf_counter()

    def append(self, r: dict[str, Any]) -> None:
        self.steps.append(r)
        self.save(finished=False)

    def result(self, finished: bool) -> dict[str, Any]:
        return {
            **self.meta,
            "finished": finished,
            "total_s": round(time.perf_counter() - self.t0, 1),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            **memory_ratios(self.steps),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "results": [
                {**{k: v for k, v in r.items() if k != "output_tail"}, "notes": notes(r)} for r in self.steps
            ],
        }

    def save(self, finished: bool) -> dict[str, Any]:
        result = self.result(finished)
        if self.json_path is not None:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.json_path.with_name(self.json_path.name + ".partial")
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, self.json_path)
        if self.md_path is not None:
            self.md_path.write_text(table(result))
        return result

    def failed(self) -> bool:
        return any(r["exit_code"] != 0 and "killed_at_s" not in r for r in self.steps)


def memory_ratios(res: list[dict[str, Any]]) -> dict[str, float]:
    """Peak RSS of the big run / the run on a tenth of the images (goal <= 1.5)."""
    out = {}
    for kind in ("eval", "segment"):
        runs = [r for r in res if r["step"].startswith(f"{kind} ") and r["step"].endswith(" images")]
        if len(runs) == 2 and runs[1]["peak_rss_mb"]:
            out[f"peak RSS {runs[0]['step']} / {runs[1]['step']}"] = round(
                runs[0]["peak_rss_mb"] / runs[1]["peak_rss_mb"], 3
            )
    return out


NOTE_KEYS = (
    "open_store_s",
    "loader_init_s",
    "epoch_plan_s",
    "resume_position_200k_steps_s",
    "dataset_open_s",
    "annotations",
    "images",
    "workers",
    "steps",
    "samples_per_s",
    "variants",
    "ranks",
    "killed_at_s",
    "done_before",
    "redone",
    "metrics_lines_before",
)


def notes(r: dict[str, Any]) -> str:
    """The step's other measurements in words ("images 5000, killed_at_s 46"), and FAILED if it failed."""
    out = [f"{key} {_num(r[key])}" for key in NOTE_KEYS if r.get(key) is not None]
    if r["exit_code"] != 0 and "killed_at_s" not in r:
        out.append(f"FAILED (exit {r['exit_code']})")
    return ", ".join(out)


def table(result: dict[str, Any]) -> str:
    rows = ["| step | wall s | start-up s | peak RSS MB | files | notes |", "|---|---:|---:|---:|---:|---|"]
    for r in result["results"]:
        rows.append(
            f"| {r['step']} | {r['wall_s']} | {r['startup_s'] if r['startup_s'] is not None else '-'} | "
            f"{r['peak_rss_mb']} | {r['files'] if r['files'] is not None else '-'} | {notes(r)} |"
        )
    return "\n".join(rows) + "\n"


def refresh(json_path: Path) -> dict[str, Any]:
    """Add each step's notes (what docs/scale.md's rendered tables show) to a results file written by an
    older run, and write its table beside it."""
    result = json.loads(json_path.read_text())
    for r in result["results"]:
        r["notes"] = notes(r)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    json_path.with_suffix(".md").write_text(table(result))
    return result


def _num(v: Any) -> str:
    """A note's value: whole numbers from 100 up, three significant digits below (0.123 s, 12.3 s)."""
    if not isinstance(v, float):
        return str(v)
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
