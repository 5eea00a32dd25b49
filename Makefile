# The two commands of the README: `make all` (run every paper at the ci profile) and `make test`.
# Everything else is a convenience around `python -m common.harness` (see CONTRIBUTING.md).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= ci
PARAMS ?=
PAPER ?=
# Notebooks run single-threaded unless told otherwise: results (and goldens) then do not depend on
# the machine's core count. A notebook that wants more threads sets them itself.
export OMP_NUM_THREADS ?= 1

.DEFAULT_GOAL := help
.PHONY: help all test run lab scoreboard bless verify new cite clean lock env lint zoo

help:
	@echo "make all                      run every paper's notebooks at the ci profile, check claims and goldens, write results/"
	@echo "make test                     run the whole test suite (contract, harness, unit tests, notebooks)"
	@echo "make run PAPER=svarm [PROFILE=full] [PARAMS='seed=3 n_runs=5']"
	@echo "make lab                      JupyterLab on the notebooks"
	@echo "make scoreboard               regenerate results/README.md, results/index.json and generated sections"
	@echo "make bless PAPER=x            rewrite papers/x/expected/ci.json from fresh runs (tolerances from the seed spread)"
	@echo "make verify PAPER=x           re-execute results/x/ci/*.ipynb with nbval and check the claims verdicts"
	@echo "make new PAPER=slug           scaffold papers/slug/ (passes the contract tests)"
	@echo "make zoo MODEL=name [PARAMS='steps=200']  train a zoo model (common/zoo/notebooks/name.ipynb); writes its checkpoint"
	@echo "make cite PAPER=x             BibTeX for the paper and a citation line for our artifact"
	@echo "make clean                    remove caches, failed runs and custom runs (keeps results/ and .venv)"

# The environment: created on first use, re-installed when the dependencies change.
# One source of truth: pyproject.toml names the dependencies, requirements.lock pins them.
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

env: $(STAMP)

all: $(STAMP)
	$(PY) -m common.harness all --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

run: $(STAMP)
	@test -n "$(PAPER)" || { echo "error: give a paper, e.g. make run PAPER=svarm"; exit 2; }
	$(PY) -m common.harness run $(PAPER) --profile $(PROFILE) --params "$(PARAMS)"

lab: $(STAMP)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[lab]'
	$(VENV)/bin/jupyter lab papers/

scoreboard: $(STAMP)
	$(PY) -m common.harness scoreboard

bless: $(STAMP)
	@test -n "$(PAPER)" || { echo "error: give a paper, e.g. make bless PAPER=svarm"; exit 2; }
	$(PY) -m common.harness bless $(PAPER)

verify: $(STAMP)
	@test -n "$(PAPER)" || { echo "error: give a paper, e.g. make verify PAPER=svarm"; exit 2; }
	@ls results/$(PAPER)/ci/*.ipynb >/dev/null 2>&1 || { echo "error: no executed notebooks in results/$(PAPER)/ci/ (run make run PAPER=$(PAPER))"; exit 2; }
	REPRO_PAPER=$(PAPER) REPRO_PROFILE=ci $(PY) -m pytest -p no:xdist --nbval-lax --nbval-current-env -o testpaths= -q results/$(PAPER)/ci/*.ipynb

new: $(STAMP)
	@test -n "$(PAPER)" || { echo "error: give a slug from papers/catalog.yaml, e.g. make new PAPER=umap"; exit 2; }
	$(PY) -m common.harness new $(PAPER)

cite: $(STAMP)
	@test -n "$(PAPER)" || { echo "error: give a paper, e.g. make cite PAPER=svarm"; exit 2; }
	@$(PY) -m common.harness cite $(PAPER)

zoo: $(STAMP)
	@test -n "$(MODEL)" || { $(PY) -m common.zoo list; echo "error: give a zoo notebook, e.g. make zoo MODEL=train_digits_eps"; exit 2; }
	$(PY) -m common.zoo train $(MODEL) $(foreach p,$(PARAMS),-p $(p))

lint: $(STAMP)
	$(VENV)/bin/ruff check common papers tests

# Re-pin every dependency after editing pyproject.toml (review the diff of requirements.lock).
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.lock

clean:
	rm -rf .cache runs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
