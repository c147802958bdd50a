# dp-studio: the README's two commands are `make studio` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOST ?= 127.0.0.1
PORT ?= 7860
PYTEST_ARGS ?=

.PHONY: studio test venv chromium demo-assets lint bench clean-venv docs-screenshots docker hadolint

studio: venv  ## create the venv if missing, install, prepare the demo, serve on http://127.0.0.1:7860
	$(PY) -m trainers.cli prepare-demo
	$(PY) app.py --host $(HOST) --port $(PORT)

test: venv chromium  ## create/refresh the venv, install test needs (Debian chromium too), run every test
	$(PY) -m pytest $(PYTEST_ARGS)

venv: $(STAMP)

# Re-installs whenever pyproject.toml changes. torch is pinned and installed in the same pip command, so
# nothing upgrades it; DeepSpeed's CUDA ops are not compiled at install (they JIT when a GPU run needs them).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "dp-studio needs Python >= 3.11 (set PYTHON=python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	DS_BUILD_OPS=0 $(PY) -m pip install --disable-pip-version-check -q -e ".[test]"
	touch $(STAMP)

chromium:  ## Debian's chromium for the browser tests (never a downloaded browser)
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

demo-assets: venv  ## rebuild the embedded demo model and dataset from scratch (deterministic; minutes)
	$(PY) -m trainers.native.demo build

lint: venv
	$(VENV)/bin/ruff check .

docs-screenshots: venv chromium  ## regenerate docs/images/*.png from the browser tests (never edit them by hand)
	DP_STUDIO_DOC_SHOTS=1 $(PY) -m pytest -q tests/e2e/test_docs_and_layout.py

docker:  ## build the CUDA image (needs Docker); `docker compose up -d` serves it (see README)
	docker build -t dp-studio:latest .

hadolint:  ## lint the Dockerfile (needs hadolint on PATH)
	hadolint --config .hadolint.yaml Dockerfile

bench: venv chromium  ## speed and memory measurements (method and results in docs/benchmarks.md)
	$(PY) bench/overhead.py --steps 1 --rounds 1000
	$(PY) bench/preview_cost.py
	$(PY) bench/cold_start.py
	$(PY) bench/dataset_scan.py --images 10000
	$(PY) bench/ui_latency.py

clean-venv:
	rm -rf $(VENV)
