"""The docs quote every number from one source: the tables of README.md and docs/*.md are rendered by
`make docs` (adaslot/docs_tables.py) from the results files that measured them, and must match them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import REPO

from adaslot import docs_tables

README = REPO / "README.md"
# Figures that disagreed between copies before the tables were rendered from one file (each its own context).
STALE = ["10 300", "19 600", "0.721", "1.56x", "| 5 / 6 |", "1-5 objects", "38 %"]


def _outside_blocks(text: str) -> str:
    """The prose of a page: without rendered tables and without code blocks."""
    text = docs_tables.BLOCK.sub("", text)
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_every_rendered_table_matches_its_results_file():
    stale = {str(p.relative_to(REPO)): docs_tables.stale_blocks(p) for p in docs_tables.pages()}
    assert not {k: v for k, v in stale.items() if v}, "run `make docs`"
    blocks = [m for p in docs_tables.pages() for m in docs_tables.BLOCK.finditer(p.read_text())]
    assert len(blocks) >= 8
    for m in blocks:  # every file a table names exists and is in the repository
        for f in docs_tables.Spec.parse(m.group("spec")).files:
            assert (REPO / f).is_file(), f


def test_a_changed_number_makes_its_table_stale(tmp_path):
    (tmp_path / "docs" / "results").mkdir(parents=True)
    src = tmp_path / "docs" / "results" / "x.json"
    src.write_text(json.dumps({"machine": "m", "date": "d", "rows": [{"what": "a", "ratio": 1.5}]}))
    page = tmp_path / "README.md"
    page.write_text("text\n<!-- table: docs/results/x.json digits=2 -->\nhand-typed\n<!-- end -->\nmore\n")
    assert docs_tables.stale_blocks(page, tmp_path) == ["docs/results/x.json digits=2"]
    page.write_text(docs_tables.refresh(page.read_text(), tmp_path))
    assert "| a | 1.5 |" in page.read_text() and "hand-typed" not in page.read_text()
    assert "`docs/results/x.json` (m, d)" in page.read_text() and page.read_text().endswith("more\n")
    assert docs_tables.stale_blocks(page, tmp_path) == []
    src.write_text(json.dumps({"machine": "m", "date": "d", "rows": [{"what": "a", "ratio": 1.625}]}))
    assert docs_tables.stale_blocks(page, tmp_path) == ["docs/results/x.json digits=2"]
    # a keys table: one value column per file, percent and n/a
    (tmp_path / "b.json").write_text(json.dumps({"title": "B", "r": 0.25, "s": None}))
    spec = docs_tables.Spec.parse("b.json keys=r,s labels=the_r|s percent=r")
    assert docs_tables.render(spec, tmp_path).splitlines()[2:4] == ["| the r | 25.0 % |", "| s | n/a |"]


def test_readme_is_short_and_quotes_measured_figures_only_from_rendered_tables():
    text = README.read_text()
    assert len(text.splitlines()) < 300
    prose = _outside_blocks(text)
    # measured-looking figures (3-decimal scores, speed ratios, samples/s) only inside rendered tables
    for pattern in (r"\b\d\.\d{3}\b", r"\b\d+(\.\d+)?x\b", r"samples/s"):
        assert not re.findall(pattern, prose), pattern
    for page in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for figure in STALE:
            assert figure not in page.read_text(), (page.name, figure)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    heads = re.findall(r"^#+ (.+)$", _outside_blocks(page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_links_between_pages_resolve():
    for page in docs_tables.pages():
        for target, anchor in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", page.read_text()):
            path = (page.parent / target).resolve() if target else page
            assert path.exists(), (page.name, target)
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), (page.name, target, anchor)


@pytest.mark.parametrize("name", ["LICENSE", "CITATION.cff"])
def test_license_and_citation(name):
    text = (REPO / name).read_text()
    assert "Apache License" in text and "Version 2.0" in text if name == "LICENSE" else "Apache-2.0" in text
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text()
    assert "@inproceedings{fan2024adaslot" in README.read_text()
    assert "@inproceedings{seitzer2023dinosaur" in README.read_text()


def test_method_preset_table_matches_the_code():
    """docs/method.md#presets quotes each preset's K for stage 1 / stage 2: the values of config/model.py."""
    from adaslot.config.model import PRESETS, model_config_for

    text = (REPO / "docs" / "method.md").read_text().split("## Presets", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([\w-]+)`.*\| (\d+ / \d+) \|$", text, re.M)}
    assert set(rows) == set(PRESETS)
    for name, ks in rows.items():
        assert ks == f"{model_config_for(name, 1).num_slots} / {model_config_for(name, 2).num_slots}", name
