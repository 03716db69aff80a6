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

.PHONY: help setup debs binaries helm4 security-tools test test-unit test-integration lint demo bench clean \
	manifests requirements docs

help:
	@echo "make demo   - the whole flow on a local control plane (builds it on first use)"
	@echo "make test   - the whole test suite (what CI runs)"
	@echo "make lint   - ruff, mypy --strict, import-linter, hadolint, checkov"
	@echo "make manifests / requirements / docs - regenerate manifests/install.yaml, requirements.txt, the README's values reference"
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

# helm 4, for the chart checks (built from the Go module proxy into the devstack's cache, once).
helm4: setup
	PYTHONPATH=. $(PY) scripts/build_helm4.py

# checkov cannot share the project's venv (its pins conflict with pytest's), so it gets its own.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := $(VENV)/tools/checkov
$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION): | $(VENV)/.installed
	@echo "[setup] installing checkov $(CHECKOV_VERSION) into $(CHECKOV_VENV)"
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check 'checkov==$(CHECKOV_VERSION)'
	touch $@

security-tools: $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

# Generated files (tests fail when they are stale).
manifests: binaries
	PYTHONPATH=. $(PY) scripts/render_bundle.py

requirements: setup
	PYTHONPATH=. $(PY) scripts/pin_requirements.py

docs: setup
	PYTHONPATH=. $(PY) scripts/values_reference.py

test: setup binaries helm4 security-tools
	$(PY) -m pytest tests

test-unit: setup binaries helm4 security-tools
	$(PY) -m pytest tests/unit

test-integration: setup binaries
	$(PY) -m pytest tests/integration

lint: setup
	$(VENV)/bin/ruff check controller devstack tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile
	$(MAKE) --no-print-directory security-tools
	@rendered=$$(mktemp -d) && for values in helm/filescan-operator/ci/*-values.yaml; do \
	  "$$(PYTHONPATH=. $(PY) -c 'from devstack.build import ensure_binaries; print(ensure_binaries().helm)')" \
	    template filescan-operator helm/filescan-operator -n filescan --kube-version 1.37.2 -f "$$values" \
	    > "$$rendered/$$(basename $$values)" 2>/dev/null; done && \
	  $(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml -d "$$rendered" --framework kubernetes && \
	  $(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml -f Dockerfile --framework dockerfile; \
	  status=$$?; rm -rf "$$rendered"; exit $$status

demo: setup binaries
	$(PY) -m devstack demo

bench: setup binaries
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
