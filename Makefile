# The two set-up commands from the README:
#   make demo   creates .venv, installs toolgym and its built-in packs (packs/) and runs the default training recipe
#   make test   creates .venv, installs toolgym with test extras, starts a Docker engine when it
#               can (root, none running), then runs ruff and the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the built-in environment packs install beside toolgym, exactly as third-party packs do
PACKS := $(addprefix -e ,$(sort $(wildcard packs/*)))

.PHONY: demo test venv lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]' $(PACKS)

demo: venv
	$(BIN)/toolgym train

lint: venv
	$(BIN)/ruff check .

test: venv
	bash .ci/docker-up.sh || { [ "$${CI:-}" != "true" ] && echo "make test: no Docker engine, docker tests will skip"; }
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
