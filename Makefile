# Three commands (README): `make study` (the paper's protocol), `make quick` (the offline protocol at one seed, in
# minutes, on the files at hand) and `make test`. Each creates .venv and installs the package when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PARAMS ?= params/paper.yaml
ARGS   ?=

.PHONY: setup study quick variants beyond peft-methods export-reference test clean-venv

# pip shows its progress bars: the first install downloads torch and friends (minutes), and silence looked stuck.
$(BIN)/.installed: pyproject.toml constraints.txt
	@echo "== setup: a virtual environment in $(VENV) with the pinned dependencies (first time: a few minutes) =="
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt -e ".[dev,notebooks]"
	touch $@

setup: $(BIN)/.installed

# The study: the paper's protocol by default (fetches missing official files: running it is the consent).
# Offline: make study PARAMS=params/offline.yaml. ARGS holds overrides as -p key=value (e.g. ARGS="-p seeds=5");
# they reach the study and, as papermill's -p key value, every notebook, so both see the same parameters.
# The study's name is its `study` parameter (the file's `study:` key, or -p study=NAME), asked of the CLI, so
# results/<study>/, runs/<study>/ and figures/<study>/ are named as the notebooks name them.
# 1. compute every run (worker processes; stops at once, naming the missing files, without internet)
# 2. execute notebooks 01-08 with papermill into runs/<study>/ (they reuse the runs), 3. HTML of each,
# 4. every table into results/<study>/tables/ and every figure into figures/<study>/.
NOTEBOOKS := $(sort $(wildcard notebooks/0[1-8]_*.ipynb))
NB_ARGS   := $(subst =, ,$(ARGS))
# The notebooks run on tools/jupyter/kernels/stmedfm: python3 with the kernel's own log silenced, because every
# kernel shutdown starts with an interrupt that ipykernel may log as "ERROR | KeyboardInterrupt caught in kernel",
# and it warns about TCP on every start; cell errors still stop papermill with the cell's traceback.
# papermill calls parameters injected with ARGS "unknown" (they are read from the notebook's namespace,
# stmedfm.core.config.notebook_params); without ARGS (make quick) it has none to call so.
NB_RUN    := JUPYTER_PATH=$(CURDIR)/tools/jupyter $(BIN)/papermill

study: setup
	@study=$$($(BIN)/stmedfm config $(PARAMS) --get study $(ARGS)) || exit 1; \
	set -e; \
	echo "== 1/4 study $$study: stmedfm study $(PARAMS) $(ARGS) (a progress bar counts the runs) =="; \
	$(BIN)/stmedfm study $(PARAMS) -p download=true $(ARGS); \
	mkdir -p runs/$$study; \
	n=0; for nb in $(NOTEBOOKS); do n=$$((n + 1)); \
	  echo "== 2/4 notebook $$n of $(words $(NOTEBOOKS)): papermill $$nb runs/$$study/$$(basename $$nb) =="; \
	  $(NB_RUN) "$$nb" "runs/$$study/$$(basename $$nb)" --cwd notebooks -k stmedfm --no-progress-bar \
	    -p params $(PARAMS) $(NB_ARGS); \
	done; \
	echo "== 3/4 HTML of the executed notebooks in runs/$$study/ =="; \
	$(BIN)/jupyter nbconvert --to html --log-level ERROR runs/$$study/*.ipynb; \
	echo "== 4/4 tables and figures of results/$$study =="; \
	$(BIN)/stmedfm tables results/$$study; \
	$(BIN)/stmedfm figures results/$$study

# The first real result without internet: params/quick.yaml, the offline protocol's main experiment at one seed, on
# the official files found in $$STMEDFM_DATA or ~/.medmnist, into results/quick/ (the reference stays untouched).
# The whole offline protocol at one seed is one command further:
#   make study PARAMS=params/offline.yaml ARGS="-p study=offline_1seed -p seeds=1"
quick:
	$(MAKE) study PARAMS=params/quick.yaml

# Variant studies beyond the paper (notebook 09, stmedfm.analysis.variants): the variants of VARIANTS into results/<name>/,
# their tables, figures into figures/<name>/, and the executed notebook into runs/<name>/ (+ HTML).
# `make beyond` (and BEYOND=file) is the former name of the same target.
VARIANTS ?= $(or $(BEYOND),params/beyond.yaml)

variants: setup
	@name=$$($(BIN)/stmedfm config $(VARIANTS) --get study) || exit 1; \
	set -ex; \
	$(BIN)/stmedfm variants $(VARIANTS); \
	mkdir -p runs/$$name; \
	$(NB_RUN) notebooks/09_beyond.ipynb runs/$$name/09_beyond.ipynb --cwd notebooks -k stmedfm \
	  --no-progress-bar -p params $(VARIANTS); \
	$(BIN)/jupyter nbconvert --to html --log-level WARN runs/$$name/09_beyond.ipynb

beyond: variants

# Every PEFT method (issue 22; notebook 10, stmedfm.analysis.methods): every registered strategy of PEFT_METHODS (default
# params/peft_methods_lr.yaml, rates selected on validation, 10 seeds; params/peft_methods.yaml: one rate for all)
# into results/<study>/, then notebook 10 executed on it into runs/<study>/
# (+ HTML; it writes results/<study>/methods_*.csv and figures/<study>/), then the paper tables and the generated
# blocks of docs/peft_methods.md. `stmedfm bench --methods PEFT_METHODS` adds each method's seconds and peak
# memory per run (results/<study>/bench_methods.csv), which notebook 10 shows beside the accuracy. Smoke: make peft-methods PEFT_METHODS=params/peft_methods_smoke.yaml
# REUSE: stores whose runs of the same id are taken instead of computed (results/offline, once its run store
# exists on this machine, holds the paper strategies' runs and the checkpoints of seeds 0-9: 420 of 1,710 runs;
# the committed results/offline has no run files); REUSE= computes everything.
PEFT_METHODS ?= params/peft_methods_lr.yaml
REUSE ?= $(wildcard results/offline)

peft-methods: setup
	@study=$$($(BIN)/stmedfm config $(PEFT_METHODS) --get study $(ARGS)) || exit 1; \
	set -ex; \
	$(BIN)/stmedfm study $(PEFT_METHODS) $(addprefix --reuse ,$(REUSE)) $(ARGS); \
	mkdir -p runs/$$study; \
	$(NB_RUN) notebooks/10_peft_methods.ipynb runs/$$study/10_peft_methods.ipynb --cwd notebooks -k stmedfm \
	  --no-progress-bar -p params $(PEFT_METHODS) $(NB_ARGS); \
	$(BIN)/jupyter nbconvert --to html --log-level WARN runs/$$study/10_peft_methods.ipynb; \
	$(BIN)/stmedfm tables results/$$study; \
	case "$$study" in peft_methods|peft_methods_lr) \
	  $(BIN)/stmedfm report results/$$study --markdown docs/peft_methods.md;; \
	esac

# The reference's models to share (docs/models.md): from STORE, a store that still has its runs/ and checkpoints/
# (the machine that computed the reference; the committed results/offline keeps tables only), the pretrained
# backbone of EXPORT_SEED and one model per downstream task adapted by EXPORT_STRATEGY, each a folder of models/
# (model.safetensors, config.json, model card). Then: git add models/.
STORE ?= results/offline
EXPORT_SEED ?= 0
EXPORT_STRATEGY ?= adapter

export-reference: setup
	@study=$$($(BIN)/stmedfm config $(STORE)/config.yaml --get study) || exit 1; \
	tasks=$$($(BIN)/stmedfm config $(STORE)/config.yaml --get downstream_tasks | tr -d '[],') || exit 1; \
	set -ex; \
	$(BIN)/stmedfm export $(STORE) models/stmedfm-$$study-backbone-seed$(EXPORT_SEED) --pretrained --seed $(EXPORT_SEED); \
	for task in $$tasks; do \
	  $(BIN)/stmedfm export $(STORE) models/stmedfm-$$study-$$task-$(EXPORT_STRATEGY)-seed$(EXPORT_SEED) \
	    --task $$task --strategy $(EXPORT_STRATEGY) --seed $(EXPORT_SEED); \
	done

# All tests: unit tests (synthetic data; real files when $$STMEDFM_DATA has them), then every notebook with its
# smoke defaults under nbval (needs the real files in $$STMEDFM_DATA; cells marked NBVAL_CHECK_OUTPUT must
# reproduce their committed output).
test: setup
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m pytest -q --nbval-lax --nbval-current-env notebooks/

clean-venv:
	rm -rf $(VENV)
