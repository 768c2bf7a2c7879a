"""The run's log: metrics.jsonl (one JSON object per logged step) and, optionally, Weights & Biases."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from adaslot.files import write_text


class MetricsLog:
    """Appends records to `path` (rank 0 only: `enabled`); a resumed run first drops the lines written after
    its resume step by the killed run (and a last line cut short by a full disk), so the file reads as one
    uninterrupted run."""

    def __init__(self, path: Path, resume_step: int, use_wandb: bool, wandb_project: str,
                 config: dict[str, Any], enabled: bool) -> None:
        self.path, self.enabled, self.wandb = path, enabled, None
        if not enabled:
            return
        if path.exists():
            keep = [ln for ln, r in _parsed(path.read_text()) if r["step"] <= resume_step]
            write_text(path, "".join(ln + "\n" for ln in keep))
        self.file = path.open("a")
        if use_wandb:
            import wandb

            self.wandb = wandb
            # One wandb run per run folder, so a resumed run continues its curves.
            run_id = hashlib.sha1(str(path.parent.resolve()).encode()).hexdigest()[:16]
            wandb.init(project=wandb_project, name=path.parent.name, id=run_id, config=config, resume="allow")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:  # a failed write names no file; the one-line error should (adaslot/faults.py)
            e.filename = e.filename or str(self.path)
            with contextlib.suppress(OSError):  # close now: a retried flush at exit would print a traceback
                self.file.close()
            raise
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.wandb is not None:
                self.wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's metrics.jsonl, in order ([] if there is none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for _, r in _parsed(path.read_text())]


def _parsed(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for the lines of `text`, without a last line cut short (a full disk or a kill)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out = []
    for i, ln in enumerate(lines):
        try:
            out.append((ln, json.loads(ln)))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return out
