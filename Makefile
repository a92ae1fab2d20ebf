# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install the project, train a metric on the bundled demo data
#   make test   create .venv if missing, install the project with [dev], run the whole suite (CI runs it)
#   make test-fast   the same without the slow tests (training, compiling, ONNX export): the edit loop
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the releases the suite is tested with (newer releases are
# untested here); TORCH_INDEX=https://download.pytorch.org/whl/cpu installs their CPU-only builds
TORCH := torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
PIP_TORCH = $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple,)

.PHONY: demo test test-fast install install-dev lint reproduce

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(PIP_TORCH) $(TORCH)
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q $(PIP_TORCH) $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'

demo: install
	$(BIN)/lpips-lightning fit --config configs/demo.yaml

# one test process per core (pytest-xdist), each test file in one process: a file's shared fixtures are made once
PYTEST := WANDB_MODE=disabled $(BIN)/python -m pytest -q -n auto --dist loadfile

test: install-dev
	$(PYTEST)

test-fast: install-dev
	$(PYTEST) -m "not slow"

lint: install-dev
	$(BIN)/ruff check src tests bench scripts

# the paper's table from nothing: download BAPPS, pack, train the nine configurations, evaluate
# (GPU, hours; resumable: run it again after an interruption). ARGS: options of scripts/reproduce.py
reproduce: install
	$(BIN)/python scripts/reproduce.py $(ARGS)
