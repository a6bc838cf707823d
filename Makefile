# The README's two commands: `make demo` and `make test`. Both run `make setup` first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.headstart-setup
ASSETS := $(VENV)/share/headstart

.PHONY: setup demo test test-all test-fast bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/install_assets.sh scripts/install_browser.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch and torchvision first, pinned to a matching pair (the machine image keeps these wheels on disk).
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[test]"
	bash scripts/install_assets.sh $(PY) $(ASSETS)
	# Headless Chromium for the report's browser test; never fatal (the test skips with the reason).
	-bash scripts/install_browser.sh
	touch $(STAMP)

demo: setup
	$(VENV)/bin/headstart demo

# The suite: unit tests, CLI tests, the real-weight integration tests and every README/docs code
# block not marked skip-test. CI runs this target.
test: setup
	$(PY) -m pytest -q

# Kept as an alias of `test`, for old habits and scripts.
test-all: test

# Minutes, not tens: no real weights and no documentation examples.
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/extract.py

clean-venv:
	rm -rf $(VENV)
