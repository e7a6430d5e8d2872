# sambay: two commands on a fresh machine.
#   make demo   install everything into .venv, run the whole CPU pipeline (recipes/pipeline/demo.yaml)
#   make test   install everything into .venv, run the test suite (slow end-to-end tests included)
# Installing is idempotent: a stamp file keyed on a hash of pyproject.toml skips pip when nothing changed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON3 ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel version verified with this stack. It must be installed before the package: an unpinned torch
# resolves to a multi-GB CUDA build. On a CUDA machine install your CUDA torch first and set TORCH_SPEC to it.
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRAS ?= dev
STAMP := $(VENV)/.sambay-installed-$(shell sha256sum pyproject.toml | cut -c1-16)-$(PIP_EXTRAS)

# Arguments for the pipeline driver (Hydra overrides or --config-name), e.g.
#   make demo DEMO_ARGS="--config-name=smoke"
DEMO_ARGS ?=
# Arguments for pytest, e.g. make test PYTEST_ARGS="-m 'not slow'"
PYTEST_ARGS ?=

# Nothing reaches a model/dataset hub at run time; W&B logs offline unless a key is configured.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= $(if $(WANDB_API_KEY),online,offline)
# DeepSpeed JIT-builds a shared-memory comm op on CPU (~30-45 s); keep it once per checkout.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: help install demo test test-fast

help:
	@echo "make demo   - install into $(VENV) and run the CPU demo pipeline (report in runs/demo/report.md)"
	@echo "make test   - install into $(VENV) and run all tests"
	@echo "make install / make test-fast (no slow tests)"

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(PIP_EXTRAS)]"
	@# Without a GPU the torch must be the CPU build; a CUDA build here means the resolver pulled the wrong wheel.
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -c 'import sys, torch; sys.exit(0 if torch.version.cuda is None else "torch " + torch.__version__ + " is a CUDA build on a machine without a GPU; install the CPU wheel (TORCH_SPEC)")'; \
	fi
	@rm -f $(VENV)/.sambay-installed-*
	@touch $@
	@echo "installed into $(VENV)"

demo: install
	$(PY) scripts/pipeline.py $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)
