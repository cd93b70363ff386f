# One virtual environment, created once and reused.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lint test test-fast test-faults demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# pip byte-compiles what it installs on one core; compileall does it on every core (about 30 s
	# less on 2 cores). The environment may set PYTHONDONTWRITEBYTECODE, so nothing compiles later.
	$(BIN)/python -m pip install -q --no-compile -e '.[test]'
	$(BIN)/python -m compileall -q -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" > /dev/null
	touch $(STAMP)

install: $(STAMP)

# ruff (format and lint) and mypy on every module of the three packages. mypy sees them under their
# import names (aavs.models, ...) through a tree of links in build/mypy, the layout package-dir makes at
# install time: without it every `aavs.*` import would be an unchecked Any. `$(BIN)/ruff format .`
# rewrites the tree to the house style.
MYPY_TREE := build/mypy/aavs

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	mkdir -p $(MYPY_TREE)
	for p in models datasets orchestrator; do ln -sfn ../../../$$p $(MYPY_TREE)/$$p; done
	MYPYPATH=build/mypy $(BIN)/mypy -p aavs.models -p aavs.datasets -p aavs.orchestrator

# Two pytest processes (pytest-xdist): one runs every module that starts Ray, in order; the other the
# rest (tests/conftest.py, tests/README.md).
test: lint
	$(BIN)/python -m pytest -q -m "not faults" -n 2

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not faults"

# The fault matrix's long runs and the full crash-position sweep (tests/README.md says what each covers).
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m faults
	$(BIN)/python tests/crash_consistency.py --all

demo: $(STAMP)
	$(BIN)/aavs run experiments/demo.yaml --results results

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_data.py
	$(BIN)/python tests/benchmarks/bench_train.py
	$(BIN)/python tests/benchmarks/bench_model.py

clean:
	rm -rf $(VENV) build *.egg-info
