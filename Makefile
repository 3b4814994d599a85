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
