# kubeaccel — every target installs what it needs into .venv (torch pinned to the CPU wheel).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
PACKAGES := operator/kubeaccel_api operator/kubeaccel_operator runtime/kubeaccel_runtime

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint crds demo bench clean

help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=25.1"
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[operator,runtime,cpu,optimize,s3]" --group dev
	touch $@

install: $(STAMP) ## create .venv with everything (CPU onnxruntime, torch 2.13.0 CPU)

include $(wildcard mk/*.mk)

test: $(STAMP) examples ## run the test suite (what CI runs)
	$(PY) -m pytest

test-fast: $(STAMP) ## the suite without tests marked slow
	$(PY) -m pytest -m "not slow"

lint: $(STAMP) ## ruff (lint + format) and mypy --strict on the three packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(PACKAGES)

crds: $(STAMP) ## regenerate crds/ and the chart's CRD template from kubeaccel_api
	$(VENV)/bin/kubeaccel crd --write

demo: $(STAMP) examples ## the embedded default: optimize, serve and query the example CNN locally
	$(PY) -m kubeaccel_runtime.demo

clean: ## remove build outputs (keeps .venv)
	rm -rf .kubeaccel dist build report.png
