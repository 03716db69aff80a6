# The two commands the README promises: `make demo` and `make test`. Every target sets up what it
# needs itself; nothing here relies on something installed by hand.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS := clamav clamav-daemon clamdscan
# Programs that the Debian packages above provide; their absence triggers the install.
DEB_PROGRAMS := clamd clamscan clamdscan

.PHONY: help setup debs binaries test test-unit test-integration lint demo bench clean

help:
	@echo "make demo   - the whole flow on a local control plane (builds it on first use)"
	@echo "make test   - the whole test suite (what CI runs)"
	@echo "make lint   - ruff, mypy --strict, import-linter"
	@echo "make bench  - the benchmarks; figures go to bench/RESULTS.md by hand"

$(VENV)/.installed: pyproject.toml
	@echo "[setup] creating $(VENV) and installing filescan-operator with its dev tools"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

debs:
	@missing=""; for p in $(DEB_PROGRAMS); do command -v $$p >/dev/null || [ -x /usr/sbin/$$p ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "[setup] installing Debian packages: $(DEBS)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(DEBS) >/dev/null; \
	fi

setup: $(VENV)/.installed debs

binaries: setup
	$(PY) -m devstack build

test: setup binaries
	$(PY) -m pytest tests

test-unit: setup
	$(PY) -m pytest tests/unit

test-integration: setup binaries
	$(PY) -m pytest tests/integration

lint: setup
	$(VENV)/bin/ruff check controller devstack tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

demo: setup binaries
	$(PY) -m devstack demo

bench: setup binaries
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
