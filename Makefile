# The README's two commands. Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= results/quickstart

.PHONY: demo test install install-dev lint bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch and torchvision come from pyproject's ranges; on this project's machines pip's local
# configuration resolves them to the CUDA build of torch 2.14.1 / torchvision 0.29.1 on disk.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/robustbench-er quickstart --out $(OUT)

test: install-dev
	$(BIN)/ruff check robustbench_er defenses attacks detectors analyses tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check robustbench_er defenses attacks detectors analyses tests benchmarks

bench: install
	$(BIN)/python benchmarks/sweep_efficiency.py

# Everything a lent GPU must show, in one command of at most 8 minutes (benchmarks/README.md);
# extra flags through GPU_CHECK_ARGS, e.g. GPU_CHECK_ARGS="--budget-s 300 --parts 1,2".
GPU_CHECK_ARGS ?=
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py --out results/gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
