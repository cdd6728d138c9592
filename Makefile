# Forest carbon sink pipeline. The two commands a fresh machine needs:
#   make region=nanping    install, build the demo data if missing, run the pipeline
#   make test              install, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
region ?= nanping
DATA := data/$(region)

.PHONY: run data test bench lint clean venv

run: $(STAMP) data
	$(BIN)/forest-carbon run --region $(region)

venv: $(STAMP)

# The environment is rebuilt when the lock file or the project metadata changes.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# The embedded demo region is built from the region config's seed when missing.
data: $(STAMP)
	@test -f $(DATA)/.complete || $(BIN)/forest-carbon simulate --region $(region) --out $(DATA)

# System packages some tests need (a PostgreSQL/PostGIS STAC server, a headless browser),
# installed once by the project's own scripts (Debian packages; needs root or sudo).
SYSDEPS := $(VENV)/.sysdeps
$(SYSDEPS): $(wildcard scripts/install-*.sh) | $(STAMP)
	@for s in $(wildcard scripts/install-*.sh); do echo "== $$s"; bash $$s || exit 1; done
	@touch $@

test: $(STAMP) $(SYSDEPS)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
	@echo "== benchmarks/scale.py"; $(BIN)/python benchmarks/scale.py

lint: $(STAMP)
	$(BIN)/ruff check pipeline models tests benchmarks
	$(BIN)/ruff format --check pipeline models tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) outputs .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
