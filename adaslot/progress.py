"""The one progress bar of adaslot (rich): label, bar, done/total, rate, ETA, optional live fields."""

from __future__ import annotations

from typing import Any


def progress_bar(label: str, enabled: bool = True, unit: str = "it", fields: str = "") -> Any:
    """A `rich.progress.Progress` (use as a context manager; `add_task(label, total=N, **field_values)`).

    `unit` names the rate (`img/s`; averaged over the whole run, steadier than rich's window; a task added
    with `completed=N, resumed=N` (a resumed job) counts from N; not `start=`, which is rich's own "start the
    clock" flag); `fields` is a format string over the task's fields, e.g.
    "loss {task.fields[loss]}". Disabled: draws nothing.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(TextColumn):
        def render(self, task: Any) -> Any:
            el = task.elapsed or 0.0
            done = task.completed - task.fields.get("resumed", 0)
            return Text(f"{done / el:8.1f} {unit}/s" if el > 0 else f"     --- {unit}/s")

    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), _Rate("")]
    if fields:
        columns.append(TextColumn(fields))
    columns += [TextColumn("ETA"), TimeRemainingColumn(), TextColumn("elapsed"), TimeElapsedColumn()]
    return Progress(*columns, disable=not enabled)
