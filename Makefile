# EDIL: two commands on a fresh machine.
#   make demo   end-to-end demo on embedded defaults
#   make test   the whole test suite
#   make lint   ruff check + mypy on edil, edil.proofs, edil.runtime, edil.app
# Both create .venv when missing and install what they need.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edil-installed
NPM_STAMP := node_modules/.edil-installed

.PHONY: demo test lint bench bench-quick contracts install clean browser

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,ray]"
	touch $(STAMP)

$(NPM_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

install: $(STAMP) $(NPM_STAMP)

# make demo DEMO_ARGS=--serve keeps the network up afterwards and serves the explorer on 127.0.0.1:8090.
DEMO_ARGS ?=

demo: $(STAMP) $(NPM_STAMP)
	$(BIN)/python -m edil.app demo $(DEMO_ARGS)

# The explorer's browser tests drive Debian's headless Chromium (chromium, chromium-driver) with selenium.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update && $$SUDO apt-get install -y chromium chromium-driver; }

test: $(STAMP) $(NPM_STAMP) browser
	$(BIN)/python -m pytest -q

# mypy cannot follow the editable install's package-dir mapping (proofs/ -> edil.proofs, ...), so it
# reads the packages through a tree of links laid out as they are installed.
TYPECHECK := build/typecheck

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/edil
	for f in edil/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/edil/; done
	ln -s "$(CURDIR)/proofs" $(TYPECHECK)/edil/proofs
	ln -s "$(CURDIR)/runtime" $(TYPECHECK)/edil/runtime
	ln -s "$(CURDIR)/app" $(TYPECHECK)/edil/app
	ln -s "$(CURDIR)/contracts_abi" $(TYPECHECK)/edil/contracts
	$(BIN)/python -m mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

contracts: $(NPM_STAMP)
	node contracts_abi/build.js

clean:
	rm -rf $(VENV) node_modules build dist *.egg-info
