# SpecVQGAN pipeline: `make demo` runs the whole pipeline on generated data, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel by default; GPU users: make install TORCH_SPEC="torch"
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= outputs/demo_data
export WANDB_MODE ?= offline
export PYTHONHASHSEED := 0

.PHONY: help install demo test bench lint clean

help:  ## list the targets
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: setup.cfg
	@command -v ffmpeg >/dev/null || true
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## make a .venv with everything (CPU torch unless TORCH_SPEC says otherwise)

demo: install  ## the whole pipeline on a generated data set, on CPU
	$(PY) -m pipeline.demo

test: install  ## the tests (real data from ../shared)
	$(PY) -m pytest -q -n 2 tests

bench: install  ## benchmarks, as ratios against baselines measured in the same run
	$(PY) -m pipeline.bench

lint: install  ## ruff over the code
	$(VENV)/bin/ruff check pipeline stages models tests

clean:  ## remove outputs and caches (keeps the .venv)
	rm -rf outputs/* .pytest_cache
	touch outputs/.gitkeep
	find . -name __pycache__ -prune -exec rm -rf {} +
