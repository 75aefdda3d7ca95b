# Everything a newcomer needs: `make dev` runs the demo, `make test` runs the checks.
# Only Python >= 3.11 and make are assumed; the virtualenv is made on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: install dev test lint typecheck pytest format openapi bench clean image-check

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e './clients/python[requests]'
	touch $(STAMP)

install: $(STAMP)

dev: install
	$(BIN)/python -m service dev

test: lint typecheck pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy service tests alembic bench clients/python

pytest: install
	@$(BIN)/python -m tests.support.chromium
	$(BIN)/pytest -q

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

openapi: install
	$(BIN)/python -m service.web.openapi_export openapi/openapi.json

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# The benchmarks of docs/benchmarks.md (needs wrk from the OS packages;
# BROKER_BENCH_DATABASE_URL for an existing PostgreSQL, else an embedded one).
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py

# Builds the Dockerfile with podman and starts the broker inside the image against
# the local PostgreSQL (root only; installs podman and debootstrap when missing).
image-check:
	bash deploy/image-check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
