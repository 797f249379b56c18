# The one entry point for humans and CI. `make demo` and `make test` set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SAM    := $(VENV)/sam/bin/sam
KSERVE := $(VENV)/kserve/.installed
KSERVE_VERSION ?= 0.21.0

.PHONY: setup sam kserve demo test test-fast lint typecheck local build validate openapi clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $@

# The SAM CLI pins old libraries: it lives in its own environment inside .venv/.
sam: $(SAM)
$(SAM):
	$(PYTHON) -m venv $(VENV)/sam
	$(VENV)/sam/bin/python -m pip install -q --upgrade pip
	$(VENV)/sam/bin/python -m pip install -q aws-sam-cli

# KServe's SDK (its InferenceRESTClient, for the client e2e tests) pins pandas<3 and
# protobuf<7, which the project's own environment has outgrown: it gets its own.
kserve: $(KSERVE)
$(KSERVE):
	$(PYTHON) -m venv $(VENV)/kserve
	$(VENV)/kserve/bin/python -m pip install -q --upgrade pip
	$(VENV)/kserve/bin/python -m pip install -q 'kserve==$(KSERVE_VERSION)'
	touch $@

demo: setup
	$(BIN)/maas demo

test: setup sam kserve
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not e2e"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

local: setup
	$(BIN)/maas local up

# docs/openapi.json from the pydantic models the handlers validate with (a test checks it).
openapi: setup
	$(BIN)/python -m maas_local.openapi

validate: sam
	AWS_DEFAULT_REGION=us-east-1 $(SAM) validate --lint

build: sam
	PATH="$$(dirname $$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12)):$$PATH" $(SAM) build

clean:
	rm -rf .aws-sam .maas .pytest_cache .ruff_cache .mypy_cache
