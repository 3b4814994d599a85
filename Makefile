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

# The oldest versions pyproject.toml allows, in a venv of their own (make test-floors)
FLOORS_VENV ?= .venv-floors
FLOORS_EXTRAS ?= data eval onnx torch test
# A clean venv for the built wheel (make dist)
DIST_VENV ?= .venv-dist

.PHONY: install test test-slow test-gpu test-floors lint docs dist demo bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all,test,lint,diffusers,docs,release]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow" -q

test-gpu: $(STAMP)
	$(PY) -m pytest -m "gpu" -q

# The base install and the extras named in FLOORS_EXTRAS at their declared floors (uv's
# lowest-direct resolution, wheels only), checked to be those floors, then the suite (what needs
# a package not installed skips: diffusers, CuPy). torch itself is TORCH_SPEC, pinned: its floor
# (2.5) is a multi-GB CUDA download from PyPI. On the busy 2-core machine, with the suite of
# 2026-12-01: 9 min 45 s (FLOORS_EXTRAS="data eval onnx test", without torch: 1 min 48 s on the
# smaller suite before). See .ci/floors.py and CHANGELOG.md.
FLOORS_PINNED := $(if $(filter torch,$(FLOORS_EXTRAS)),--pinned torch)
test-floors:
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install -q "uv>=0.5" $(if $(FLOORS_PINNED),"$(TORCH_SPEC)")
	$(FLOORS_VENV)/bin/python .ci/floors.py requirements $(FLOORS_PINNED) $(FLOORS_EXTRAS) \
		> $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/uv pip install -q --python $(FLOORS_VENV)/bin/python \
		--resolution lowest-direct --only-binary :all: -r $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/uv pip install -q --python $(FLOORS_VENV)/bin/python --no-deps -e .
	$(FLOORS_VENV)/bin/python .ci/floors.py check $(FLOORS_PINNED) $(FLOORS_EXTRAS)
	$(FLOORS_VENV)/bin/python -m pytest -m "not slow" -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check refdiff export tests benchmarks .ci docs
	$(VENV)/bin/mypy

# The reference site: docs/*.md and the API reference from the docstrings, warnings as errors
# (docs/conf.py; docs/_ext/refdiff_apidoc.py writes the API pages and checks the public docstrings).
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html -d build/docs/doctrees docs build/docs/html
	@echo "docs: build/docs/html/index.html"

# sdist and wheel, twine's metadata check, then the wheel alone in a clean venv, from outside
# the source tree: its modules, license, console script and core (.ci/wheel_check.py).
dist: $(STAMP)
	rm -rf dist $(DIST_VENV) build/lib build/bdist.* *.egg-info && mkdir -p build
	$(PY) -m build --outdir dist . > build/dist.log 2>&1 || (cat build/dist.log; exit 1)
	$(VENV)/bin/twine check --strict dist/*
	$(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/python -m pip install -q dist/*.whl
	cd $(DIST_VENV) && bin/python $(CURDIR)/.ci/wheel_check.py $(CURDIR)

demo: $(STAMP)
	$(VENV)/bin/refdiff demo --out runs/demo --threads $(THREADS)

bench: $(STAMP)
	$(PY) benchmarks/core.py

clean:
	rm -rf $(VENV) $(FLOORS_VENV) $(DIST_VENV) build dist *.egg-info .pytest_cache .hypothesis

# -- the JavaScript examples: examples/node, examples/web (docs/web.md) ---------------------------
CHROMIUM ?= /usr/bin/chromium
WEB_DIR ?= build/web
WEB_PORT ?= 8000
JS_DEPS := examples/node/node_modules/.package-lock.json examples/web/node_modules/.package-lock.json

.PHONY: test-js web

# npm ci from the committed lock files; onnxruntime-node's install step would otherwise fetch
# CUDA binaries from outside the npm registry (the CPU build ships in the package)
examples/%/node_modules/.package-lock.json: examples/%/package.json examples/%/package-lock.json
	cd examples/$* && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
	touch $@

$(CHROMIUM):
	@echo "$(CHROMIUM) is missing: installing Debian's chromium for the browser test"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# the Node.js and headless-Chromium tests against refdiff sample; a missing tool fails, never skips
test-js: $(STAMP) $(JS_DEPS) $(CHROMIUM)
	REFDIFF_REQUIRE_JS=1 REFDIFF_CHROMIUM=$(CHROMIUM) $(PY) -m pytest tests/test_examples_js.py -q

runs/demo/generator.onnx: | $(STAMP)
	test -f runs/demo/model.onnx || $(MAKE) demo
	test -f $@ || $(VENV)/bin/refdiff export runs/demo/model.onnx --out $@ \
		--sampler "$$($(PY) -c 'from refdiff.samplers import DEFAULT_SAMPLER; print(DEFAULT_SAMPLER)')"

# the page around the demo's generator, served on http://127.0.0.1:$(WEB_PORT)/ until Ctrl-C
web: $(STAMP) examples/web/node_modules/.package-lock.json runs/demo/generator.onnx
	node examples/web/build.mjs runs/demo/generator.onnx --out $(WEB_DIR)
	node examples/web/serve.mjs $(WEB_DIR) --port $(WEB_PORT)
