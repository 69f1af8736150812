# One entry point for set-up, lint, types, tests, demo and benchmarks.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := ledger streams projections primeledger

.PHONY: install lint typecheck test demo bench docs up down status clean

$(STAMP): pyproject.toml setup.py projections/_native.c ledger/_fastpath.c ledger/_store.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(PACKAGES) tests bench setup.py
	$(BIN)/ruff format --check $(PACKAGES) tests bench setup.py

typecheck: $(STAMP)
	$(BIN)/mypy $(PACKAGES)

test: lint typecheck
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/primeledger demo

bench: $(STAMP)
	$(BIN)/python -m bench.write
	$(BIN)/python -m bench.relay
	$(BIN)/python -m bench.lag
	$(BIN)/python -m bench.replay

docs: $(STAMP)
	$(BIN)/primeledger schema
	$(BIN)/primeledger asyncapi

up: $(STAMP)
	$(BIN)/primeledger up

down: $(STAMP)
	$(BIN)/primeledger down

status: $(STAMP)
	$(BIN)/primeledger status

clean:
	rm -rf $(VENV) .primeledger .mypy_cache .ruff_cache
