# Two commands (README): `make study` and `make test`. Both create .venv and install the package when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PARAMS ?= params/paper.yaml
STUDY  ?= $(basename $(notdir $(PARAMS)))
ARGS   ?=

.PHONY: setup study tables test clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	touch $@

setup: $(BIN)/.installed

# The study: the paper's protocol by default (fetches missing official files: running it is the consent).
# Offline: make study PARAMS=params/offline.yaml
study: setup
	$(BIN)/stmedfm study $(PARAMS) --out results/$(STUDY) -p download=true $(ARGS)
	$(BIN)/stmedfm tables results/$(STUDY)

# All tests: unit tests (synthetic data; real files when $$STMEDFM_DATA has them).
test: setup
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
