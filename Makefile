# One virtual environment, created once and reused.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lint test test-fast demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# ruff (format and lint) and mypy as configured in pyproject.toml (mypy: the modules listed under
# [tool.mypy]). `$(BIN)/ruff format .` rewrites the tree to the house style.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/aavs run experiments/demo.yaml --results results

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_data.py
	$(BIN)/python tests/benchmarks/bench_train.py
	$(BIN)/python tests/benchmarks/bench_model.py

clean:
	rm -rf $(VENV) build *.egg-info
