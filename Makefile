# EDIL: two commands on a fresh machine.
#   make demo   end-to-end demo on embedded defaults
#   make test   the whole test suite
# Both create .venv when missing and install what they need.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edil-installed
NPM_STAMP := node_modules/.edil-installed

.PHONY: demo test bench bench-quick contracts install clean

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

demo: $(STAMP)
	$(BIN)/python -m edil demo

test: $(STAMP) $(NPM_STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

contracts: $(NPM_STAMP)
	node contracts_abi/build.js

clean:
	rm -rf $(VENV) node_modules build dist *.egg-info
