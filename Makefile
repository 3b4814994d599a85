# refdiff: `make test` and `make demo` work from a fresh clone with only Python 3.10+ installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch first, pinned to the local CPU build: an unpinned `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.refdiff-installed
# CPU threads of the demo (PyTorch and onnxruntime): the figures depend on it; 1 is as fast as 2
# for the tiny model on an idle 2-core machine and does not collapse beside a busy process.
THREADS ?= 1

.PHONY: install test test-slow test-gpu lint demo bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all,test,diffusers]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow" -q

test-gpu: $(STAMP)
	$(PY) -m pytest -m "gpu" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check refdiff export tests benchmarks

demo: $(STAMP)
	$(VENV)/bin/refdiff demo --out runs/demo --threads $(THREADS)

bench: $(STAMP)
	$(PY) benchmarks/core.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
