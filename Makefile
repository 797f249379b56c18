# The one entry point for humans and CI. `make demo` and `make test` set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SAM    := $(VENV)/sam/bin/sam
KSERVE := $(VENV)/kserve/.installed
KSERVE_VERSION ?= 0.21.0
CHECKOV := $(VENV)/checkov/.installed
CHECKOV_VERSION ?= 3.3.30
GRPC := $(VENV)/grpc/.installed

.PHONY: setup sam kserve checkov grpc reliability-table demo test unit integration e2e test-fast lint typecheck local build validate openapi clean bench bench-generation bench-streaming bench-table-splits llamacpp

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

# checkov pins older boto3/botocore than the project uses: it gets its own environment too.
# tests/unit/test_security.py runs it over template.yaml (skipped, saying why, when absent).
checkov: $(CHECKOV)
$(CHECKOV):
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install -q --upgrade pip
	$(VENV)/checkov/bin/python -m pip install -q 'checkov==$(CHECKOV_VERSION)'
	touch $@

# The gRPC clients of tests/e2e/test_grpc_clients.py: connect-python with its code generator
# (Connect and gRPC-Web), sonora's gRPC-Web channel, grpcio-tools (protoc and the grpc stubs).
# connect-python's runtime and generator are released in pairs: keep their versions equal.
grpc: $(GRPC)
$(GRPC):
	$(PYTHON) -m venv $(VENV)/grpc
	$(VENV)/grpc/bin/python -m pip install -q --upgrade pip
	$(VENV)/grpc/bin/python -m pip install -q 'connect-python==0.9.0' \
		'protoc-gen-connect-python==0.9.0' 'grpcio-tools==1.85.1' 'sonora==0.2.3' 'numpy==2.4.6'
	touch $@

demo: setup
	$(BIN)/maas demo

# Everything: lint, types, then the three tiers in one pytest run.
test: setup sam kserve checkov grpc
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The tiers on their own. unit: pure, no subprocess, no network, under a minute on 2 cores;
# integration: moto in process, handlers with real events, subprocess training, the SAM build,
# cfn-lint and checkov; e2e: the local stack over HTTP with real clients.
unit: setup
	$(BIN)/python -m pytest tests/unit

integration: setup sam checkov
	$(BIN)/python -m pytest tests/integration

e2e: setup kserve grpc
	$(BIN)/python -m pytest tests/e2e

# The benchmark suite (bench/): about 10 minutes on 2 vCPUs. Writes bench/results.json,
# bench/results.md, the plots the README shows and bench/baseline.json (the regression check's).
bench: setup sam
	$(BIN)/python -m bench
	$(BIN)/python -m bench.generation
	$(BIN)/python -m bench.streaming

# llama.cpp for bench/generation.py's comparison: llama-cpp-python builds from source (cmake,
# a few minutes on 2 cores), with the gguf writer, in an environment of its own.
LLAMACPP := $(VENV)/llamacpp/.installed
llamacpp: $(LLAMACPP)
$(LLAMACPP):
	$(PYTHON) -m venv $(VENV)/llamacpp
	$(VENV)/llamacpp/bin/python -m pip install -q 'llama-cpp-python==0.3.36' 'gguf==0.19.0' 'safetensors==0.8.0'
	touch $@

# Text generation alone (bench/generation.py): served loop vs transformers, one thread.
bench-generation: setup
	$(BIN)/python -m bench.generation

# The small regression tables over four splits (bench/table_splits.py): served R² against
# both scikit-learn baselines on each; about 2 minutes.
bench-table-splits: setup
	$(BIN)/python -m bench.table_splits

# Token streaming alone (bench/streaming.py): streamed vs buffered over the local HTTP API,
# the streaming handler per token vs the bare loop.
bench-streaming: setup
	$(BIN)/python -m bench.streaming

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
	$(BIN)/python -m maas_devkit.openapi

# The README's reliability table, from the figures the last test run wrote (.maas/).
reliability-table: setup
	$(BIN)/python tests/reliability.py --readme

validate: sam
	AWS_DEFAULT_REGION=us-east-1 $(SAM) validate --lint

build: sam
	PATH="$$(dirname $$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12)):$$PATH" $(SAM) build

clean:
	rm -rf .aws-sam .maas .pytest_cache .ruff_cache .mypy_cache
