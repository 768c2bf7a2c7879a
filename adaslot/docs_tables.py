"""`make docs`: render the tables of README.md and docs/*.md from the results files that measured them.

A table lives between two markers in a Markdown page:

    <!-- table: docs/results/demo.json adaslot/assets/demo-metrics.json keys=fg_ari,mbo_i -->
    ...rendered, never edited by hand...
    <!-- end -->

The marker names one or more JSON files (paths from the repository root) and options:
- `keys=a,b,...`     a key | value table of those keys of each file (one value column per file);
- `columns=a,b,...`  for a file holding `rows` (a list of objects), a list of objects, or an object of
                     objects (a row per key, the key in column ""): those fields, one row per entry
                     (several files: their rows one after another; default: the first row's fields);
- `labels=A|B|...`   the header text of each key or column (default: the key; `_` for a space);
- `headers=A|B|...`  the header of each file's value column in a keys table (default: the file's `title`);
- `percent=a,b`      show those keys as percent with one decimal;
- `digits=N`         other floats to at most N decimals (default 3);
- `at=a.b`           read the object at that key path of each file instead of the whole file.
Every rendered block ends with a line naming its files and the machine and date each file records.

    python -m adaslot.docs_tables            # rewrite every block in README.md and docs/*.md
    python -m adaslot.docs_tables --check    # exit 1 naming each block that differs from its files
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^(<!-- table: (?P<spec>[^\n]*?) -->\n)(?P<body>.*?)^(<!-- end -->)", re.S | re.M)


@dataclass
class Spec:
    """One marker: its files and options."""

    files: list[str]
    options: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Spec:
        files, options = [], {}
        for word in text.split():
            if "=" in word:
                key, value = word.split("=", 1)
                options[key] = value
            else:
                files.append(word)
        if not files:
            raise ValueError(f"table marker names no file: {text!r}")
        return cls(files, options)

    def list(self, key: str, sep: str = ",") -> list[str]:
        """Option `key` split at `sep` ([] if absent); in labels and headers `_` stands for a space (a
        marker's words are separated by spaces)."""
        if key not in self.options:
            return []
        value = self.options[key]
        return (value.replace("_", " ") if key in ("labels", "headers") else value).split(sep)


def load(path: str, root: Path = ROOT, at: str | None = None) -> Any:
    """The JSON of `path` (relative to root), or the object at key path `at` inside it."""
    data = json.loads((root / path).read_text())
    for part in at.split(".") if at else []:
        data = data[part]
    return data


def fmt(value: Any, key: str, spec: Spec) -> str:
    """One cell: floats to at most `digits` decimals (percent keys x 100, one decimal), None/NaN as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in spec.list("percent") and isinstance(value, int | float):
        return f"{100 * value:.1f} %"
    if isinstance(value, float):  # trailing zeros dropped: 4.93 stays 4.93, not 4.930
        text = f"{value:.{int(spec.options.get('digits', 3))}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, list):
        return ", ".join(fmt(v, key, spec) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _provenance(spec: Spec, root: Path) -> str:
    """The line under a table: its files, each group of files followed by the machine and date they record."""
    groups: dict[str, list[str]] = {}
    for f in spec.files:
        data = load(f, root)
        said = [str(data[k]) for k in ("machine", "date") if isinstance(data, dict) and data.get(k)]
        groups.setdefault(", ".join(said), []).append(f"`{f}`")
    parts = [", ".join(files) + (f" ({said})" if said else "") for said, files in groups.items()]
    return f"*Rendered by `make docs` from {' and '.join(parts)}.*"


def _rows(data: Any) -> list[dict]:
    """The rows of a file: its `rows` list, a list of objects, or an object of objects (a row per key,
    the key in the first column, named "")."""
    if isinstance(data, list):
        return data
    if "rows" in data:
        return data["rows"]
    return [{"": key, **value} for key, value in data.items() if isinstance(value, dict)]


def render(spec: Spec, root: Path = ROOT) -> str:
    """The Markdown of one block (without its markers), ending in a newline."""
    data = [load(f, root, spec.options.get("at")) for f in spec.files]
    if "keys" in spec.options:
        keys = spec.list("keys")
        labels = spec.list("labels", "|") or keys
        headers = spec.list("headers", "|") or [
            str(load(f, root).get("title", f)) if isinstance(load(f, root), dict) else f for f in spec.files]
        lines = [_row(["", *headers]), _row(["---"] * (len(headers) + 1))]
        lines += [_row([label, *(fmt(d.get(k), k, spec) for d in data)]) for k, label in zip(keys, labels,
                                                                                             strict=True)]
    else:
        rows = [r for d in data for r in _rows(d)]
        columns = spec.list("columns") or (list(rows[0]) if rows else [])
        labels = spec.list("labels", "|") or columns
        lines = [_row(labels), _row(["---"] * len(columns))]
        lines += [_row([fmt(r.get(c), c, spec) for c in columns]) for r in rows]
    return "\n".join(lines) + "\n\n" + _provenance(spec, root) + "\n"


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every docs/*.md page."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def refresh(text: str, root: Path = ROOT) -> str:
    """`text` with every block rendered afresh from its files."""
    return BLOCK.sub(lambda m: m.group(1) + render(Spec.parse(m.group("spec")), root) + m.group(4), text)


def stale_blocks(path: Path, root: Path = ROOT) -> list[str]:
    """The markers of `path` whose rendered block differs from a fresh rendering of their files."""
    text = path.read_text()
    return [m.group("spec") for m in BLOCK.finditer(text)
            if m.group("body") != render(Spec.parse(m.group("spec")), root)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report blocks that differ; exit 1 if any")
    args = ap.parse_args(argv)
    bad = 0
    for page in pages():
        if args.check:
            for spec in stale_blocks(page):
                print(f"{page.relative_to(ROOT)}: stale table <!-- table: {spec} -->; run `make docs`")
                bad += 1
        else:
            text = page.read_text()
            new = refresh(text)
            if new != text:
                page.write_text(new)
                print(f"rendered {page.relative_to(ROOT)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
