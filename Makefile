# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install the project, train a metric on the bundled demo data
#   make test   create .venv if missing, install the project with [dev], run the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to releases that install from this workplace's local copy
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install install-dev lint reproduce

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'

demo: install
	$(BIN)/lpips-lightning fit --config configs/demo.yaml

test: install-dev
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check src tests bench scripts

# the paper's table from nothing: download BAPPS, pack, train the nine configurations, evaluate
# (GPU, hours; resumable: run it again after an interruption). ARGS: options of scripts/reproduce.py
reproduce: install
	$(BIN)/python scripts/reproduce.py $(ARGS)
