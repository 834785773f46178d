# SpecVQGAN pipeline: `make demo` runs the whole pipeline on generated data, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel by default; GPU users: make install TORCH_SPEC="torch"
TORCH_SPEC ?= torch==2.13.0
# where stages.make_demo_data writes (dataset=demo's root)
DEMO_DIR ?= $(or $(SPECVQGAN_OUTPUTS),outputs)/demo_data
export WANDB_MODE ?= offline
export PYTHONHASHSEED := 0

.PHONY: help install system-packages demo demo-seeds test test-fast bench bench-gpu lint clean

help:  ## list the targets
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: setup.cfg
	@command -v ffmpeg >/dev/null || true
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[dev,app]"
	touch $@

install: $(VENV)/.installed  ## make a .venv with everything (CPU torch unless TORCH_SPEC says otherwise)

# the demo is the chain on a generated folder of videos (class subfolders); its events.json gives the synchrony target
demo: install  ## the whole pipeline on a generated data set, on CPU: stages.chain on its folder of videos
	$(PY) -m stages.make_demo_data
	$(PY) -m stages.chain dataset=folder dataset.root=$(DEMO_DIR)/videos dataset.events=$(DEMO_DIR)/events.json dataset.shares.valid=0.43 models=tiny

demo-seeds: install  ## the demo for seeds 0, 1 and 2 (outputs/demo_seeds/), the worst seed beside each target
	$(PY) -m pipeline.demo.demo_seeds

# Debian packages of the real components the tests start (a SLURM cluster with accounting, a headless browser for
# report.html); one list, extend it
APT_PACKAGES := slurmctld slurmd slurm-client munge slurmdbd mariadb-server chromium

system-packages:  ## the Debian packages the tests start (installed as root when missing; else the tests skip)
	launch/apt_install.sh $(APT_PACKAGES)

# --dist loadfile: a file's tests share a worker, so tests/test_slurm.py starts one SLURM cluster (xdist 3.8's
# loadgroup does not group under pytest 9)
test: install system-packages  ## the tests (real data from ../shared; a real local SLURM cluster)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# the edit loop: everything but the tests that start SLURM, Chromium or stages in subprocesses (no Debian packages)
test-fast: install  ## the fast lane (under 2 minutes on 2 idle cores): make test runs everything
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slurm and not browser and not slow" tests

# OMP_WAIT_POLICY=PASSIVE: idle OpenMP workers sleep instead of spinning; on a shared machine a spinning worker that
# lost its core stalls every parallel region (a paper-size batch-1 decoding step at 2 threads and load 3.5 on 2
# cores: median 0.53 s spinning, 0.21 s passive, 0.10 s on one thread)
bench: install  ## benchmarks, as ratios against baselines measured in the same run (QUICK=1: a shorter run)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} BENCH_QUICK=$(QUICK) $(PY) -m pipeline.bench

# on a CUDA machine after `make install TORCH_SPEC=torch`; SMOKE=1 runs every part on the CPU with tiny models
# (tests/test_bench.py does, inside `make test`)
bench-gpu: install  ## paper-size models on a GPU: clips end to end, the decoding bound, training MFU, extraction
	BENCH_GPU_SMOKE=$(SMOKE) $(PY) -m pipeline.bench gpu

lint: install  ## ruff over the code
	$(VENV)/bin/ruff check pipeline stages models tests hydra_plugins

clean:  ## remove outputs and caches (keeps the .venv)
	rm -rf outputs/* .pytest_cache
	touch outputs/.gitkeep
	find . -path ./$(VENV) -prune -o -name __pycache__ -prune -exec rm -rf {} +  # not the venv's: its bytecode and numba caches
