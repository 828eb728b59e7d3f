# Two commands (README): `make study` and `make test`. Both create .venv and install the package when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PARAMS ?= params/paper.yaml
STUDY  ?= $(basename $(notdir $(PARAMS)))
ARGS   ?=

.PHONY: setup study beyond tables test clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	touch $@

setup: $(BIN)/.installed

# The study: the paper's protocol by default (fetches missing official files: running it is the consent).
# Offline: make study PARAMS=params/offline.yaml. ARGS holds overrides as -p key=value (e.g. ARGS="-p seeds=5");
# they reach the study and, as papermill's -p key value, every notebook, so both see the same parameters.
# 1. compute every run (worker processes; stops at once, naming the missing files, without internet)
# 2. execute notebooks 01-08 with papermill into runs/<study>/ (they reuse the runs), 3. HTML of each,
# 4. every table into results/<study>/tables/ and every figure into figures/<study>/.
NOTEBOOKS := $(sort $(wildcard notebooks/0[1-8]_*.ipynb))
RUNS      := runs/$(STUDY)
NB_ARGS   := $(subst =, ,$(ARGS))

study: setup
	$(BIN)/stmedfm study $(PARAMS) --out results/$(STUDY) -p download=true $(ARGS)
	mkdir -p $(RUNS)
	for nb in $(NOTEBOOKS); do \
	  $(BIN)/papermill "$$nb" "$(RUNS)/$$(basename $$nb)" --cwd notebooks -k python3 --no-progress-bar \
	    -p params $(PARAMS) $(NB_ARGS) || exit 1; \
	done
	$(BIN)/jupyter nbconvert --to html --log-level WARN $(RUNS)/*.ipynb
	$(BIN)/stmedfm tables results/$(STUDY)
	$(BIN)/stmedfm figures results/$(STUDY)

# Beyond the paper (notebook 09, stmedfm.beyond): the variant studies of BEYOND into results/<name>/, their tables,
# figures into figures/<name>/, and the executed notebook into runs/<name>/ (+ HTML).
BEYOND ?= params/beyond.yaml
BEYOND_NAME ?= $(basename $(notdir $(BEYOND)))

beyond: setup
	$(BIN)/stmedfm beyond $(BEYOND)
	mkdir -p runs/$(BEYOND_NAME)
	$(BIN)/papermill notebooks/09_beyond.ipynb runs/$(BEYOND_NAME)/09_beyond.ipynb --cwd notebooks -k python3 \
	  --no-progress-bar -p params $(BEYOND)
	$(BIN)/jupyter nbconvert --to html --log-level WARN runs/$(BEYOND_NAME)/09_beyond.ipynb

# All tests: unit tests (synthetic data; real files when $$STMEDFM_DATA has them), then every notebook with its
# smoke defaults under nbval (needs the real files in $$STMEDFM_DATA; cells marked NBVAL_CHECK_OUTPUT must
# reproduce their committed output).
test: setup
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m pytest -q --nbval-lax --nbval-current-env notebooks/

clean-venv:
	rm -rf $(VENV)
