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

.PHONY: install demo test test-fast bench clean-outputs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	dvc repro
	dvc metrics show metrics/perplexity.json metrics/reference.json

test: install
	python -m pytest

test-fast: install
	python -m pytest -m "not slow"

bench: install
	python -m pip install -q -e '.[bench]'
	python -m benchmarks

clean-outputs:
	rm -rf data/cleaned data/grouped data/splits models metrics
