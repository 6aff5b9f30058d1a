# gpt2_tf: every target sets itself up (virtual environment in .venv, editable install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test lint format demo clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gpt2_tf pipelines tests
	$(BIN)/ruff format --check gpt2_tf pipelines tests

format: $(STAMP)
	$(BIN)/ruff format gpt2_tf pipelines tests
	$(BIN)/ruff check --fix gpt2_tf pipelines tests

# The main job on the embedded default (offline: bundled sample, small model).
demo: $(STAMP)
	$(BIN)/python -m pipelines.demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
