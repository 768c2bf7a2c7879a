# Two commands: `make demo` and `make test`. Both create/refresh .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench docs clean

venv: $(STAMP)

# Reinstall when the dependency declarations change; constraints.txt pins the exact tested versions.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/adaslot demo

test: $(STAMP)
	$(BIN)/ruff check adaslot tests benchmarks scripts cli.py
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check adaslot tests benchmarks scripts cli.py
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Render the tables of README.md and docs/*.md from their results files (docs/results/*.json, ...).
docs: $(STAMP)
	$(BIN)/python -m adaslot.docs_tables

clean:
	rm -rf $(VENV)
