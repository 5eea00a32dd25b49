# The two commands of the README: `make all` (run every paper at the ci profile) and `make test`.
# Everything else is a convenience around `python -m common.harness` (see CONTRIBUTING.md).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= ci
PARAMS ?=
PAPER ?=
PAPERS ?=
JOBS ?= 1
FORCE ?=
BACKEND ?= local
RAY_ADDRESS ?=
ALLOW_BREAKING ?=
# Notebooks run single-threaded unless told otherwise: results (and goldens) then do not depend on
# the machine's core count. A notebook that wants more threads sets them itself.
export OMP_NUM_THREADS ?= 1

# --- Bad input stops here, while make reads this file: before the environment is built or a shell runs.
# User values are read with $(value X) (the text as typed, never expanded by make), checked with make's
# own text functions, and reach recipes only single-quoted through $(call shell_quote,...). They are not exported
# (make would expand them to build the environment of every recipe).
unexport PAPER PROFILE PARAMS MODEL PAPERS JOBS FORCE BACKEND RAY_ADDRESS ALLOW_BREAKING
shell_quote = '$(subst ','\'',$(1))'
SLUG_CHARS := a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9 _
strip_chars = $(if $(2),$(call strip_chars,$(subst $(firstword $(2)),,$(1)),$(wordlist 2,$(words $(2)),$(2))),$(1))
# an identifier: one word, only [a-z0-9_], starting with a letter (^[a-z][a-z0-9_]*$)
is_slug = $(and $(filter 1,$(words $(1))),$(if $(call strip_chars,$(1),$(SLUG_CHARS)),,ok),$(if $(filter 0% 1% 2% 3% 4% 5% 6% 7% 8% 9% _%,$(1)),,ok))
CATALOG_SLUGS = $(shell sed -n 's/^ *- *slug: *\([a-z0-9_]*\) *$$/\1/p' papers/catalog.yaml)
ifneq ($(filter run bless verify new cite,$(MAKECMDGOALS)),)
  ifeq ($(strip $(value PAPER)),)
    $(error give a paper, e.g. make $(firstword $(filter run bless verify new cite,$(MAKECMDGOALS))) PAPER=svarm)
  endif
  ifeq ($(call is_slug,$(value PAPER)),)
    $(error PAPER=$(value PAPER) is not a paper slug: lowercase letters, digits and underscores, from papers/catalog.yaml)
  endif
  ifeq ($(filter $(value PAPER),$(CATALOG_SLUGS)),)
    $(error PAPER=$(value PAPER) is not in papers/catalog.yaml)
  endif
endif
ifneq ($(strip $(value ALLOW_BREAKING)),)
  ifneq ($(MAKECMDGOALS),bless)
    $(error ALLOW_BREAKING is a reason for make bless PAPER=x alone (it is recorded in the goldens' provenance))
  endif
endif
ifneq ($(strip $(value PAPERS)),)
  ifneq ($(filter-out $(CATALOG_SLUGS),$(value PAPERS)),)
    $(error PAPERS: $(filter-out $(CATALOG_SLUGS),$(value PAPERS)) not in papers/catalog.yaml)
  endif
endif
ifneq ($(call strip_chars,$(value JOBS),0 1 2 3 4 5 6 7 8 9),)
  $(error JOBS=$(value JOBS) is not a positive integer)
endif
ifneq ($(filter-out local ray,$(value BACKEND)),)
  $(error BACKEND=$(value BACKEND) is not a backend: use local or ray)
endif
ifneq ($(filter-out ci full,$(value PROFILE)),)
  $(error PROFILE=$(value PROFILE) is not a profile: use ci or full)
endif
ifneq ($(filter zoo,$(MAKECMDGOALS)),)
  ifneq ($(strip $(value MODEL)),)
    ifeq ($(and $(call is_slug,$(value MODEL)),$(wildcard common/zoo/notebooks/$(value MODEL).ipynb)),)
      $(error MODEL=$(value MODEL) is not a zoo notebook (make zoo lists them))
    endif
  endif
endif

.DEFAULT_GOAL := help
.PHONY: help all test test-kernels run lab scoreboard bless verify new cite clean lock env lint zoo site site-test

help:
	@echo "make all                      run every paper whose results are stale (ci profile), check claims and goldens, write results/"
	@echo "   [JOBS=2] [FORCE=1] [PAPERS='a b'] [PROFILE=full] [BACKEND=ray [RAY_ADDRESS=host:6379]]"
	@echo "make test                     run the whole test suite (contract, harness, unit tests, notebooks)"
	@echo "make test-kernels             every paper's notebooks again under another CPU's numeric kernels (CI's second pass)"
	@echo "make run PAPER=svarm [PROFILE=full] [PARAMS='seed=3 n_runs=5']"
	@echo "make lab                      JupyterLab at the repository root, on localhost (prints the URL with its token)"
	@echo "make scoreboard               regenerate results/README.md, results/index.json and generated sections"
	@echo "make bless PAPER=x            rewrite papers/x/expected/ci.json from fresh runs (tolerances from the seed spread)"
	@echo "  [ALLOW_BREAKING='reason']     ...even though earlier blessings with the same code and inputs fail them"
	@echo "make verify PAPER=x           re-execute results/x/ci/*.ipynb with nbval and check the claims verdicts"
	@echo "make new PAPER=slug           scaffold papers/slug/ (passes the contract tests)"
	@echo "make zoo MODEL=name [PARAMS='steps=200']  train a zoo model (common/zoo/notebooks/name.ipynb); writes its checkpoint"
	@echo "make site                     build the browsable site from results/ (open docs/_build/html/index.html)"
	@echo "make cite PAPER=x             BibTeX for the paper and a citation line for our artifact"
	@echo "make clean                    remove caches, failed runs and custom runs (keeps results/ and .venv)"

# The environment: created on first use, re-installed when the dependencies change.
# One source of truth: pyproject.toml names the dependencies; requirements.lock pins them, and
# requirements-extras.lock pins what single papers add (the `papers` extra, and wonderlic-nlp, whose data
# pickles tubelex reads: its own dependencies do not install, so it goes in with --no-deps).
$(STAMP): pyproject.toml requirements.lock requirements-extras.lock
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -c requirements-extras.lock -e '.[dev,papers]'
	$(PY) -m pip install --quiet --no-deps -c requirements-extras.lock wonderlic-nlp
	@touch $(STAMP)

env: $(STAMP)

# Incremental: papers whose results are current are skipped (FORCE=1 re-runs them); PAPERS='a b' selects,
# JOBS=N runs N papers at once (each single-threaded), BACKEND=ray [RAY_ADDRESS=host:port] uses a Ray cluster.
all: $(STAMP)
	$(PY) -m common.harness all --profile $(call shell_quote,$(value PROFILE)) --papers $(call shell_quote,$(value PAPERS)) --jobs $(call shell_quote,$(or $(value JOBS),1)) --backend $(call shell_quote,$(value BACKEND)) $(if $(value FORCE),--force) $(if $(value RAY_ADDRESS),--ray-address $(call shell_quote,$(value RAY_ADDRESS)))

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# The second CI pass: every paper's notebooks again under another CPU's numeric kernels (torch's generic
# kernels, MKL's AVX2 path as on AMD, two threads), so a golden that holds only on the machine that blessed
# it fails here. The goldens' tolerances come from such emulated kernels (see CONTRIBUTING.md, Goldens).
KERNELS_ENV := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 OMP_NUM_THREADS=2
test-kernels: $(STAMP)
	env $(KERNELS_ENV) $(PY) -m pytest -n 2 -q tests/test_notebooks.py

run: $(STAMP)
	$(PY) -m common.harness run $(call shell_quote,$(value PAPER)) --profile $(call shell_quote,$(value PROFILE)) --params $(call shell_quote,$(value PARAMS))

# JupyterLab (pinned in the lock, installed by `make env`) on localhost only, opened at the repository root
# (papers/, results/ and common/ all visible); it prints its URL with the token. As root (Docker, many cloud
# notebooks) Jupyter refuses to start without --allow-root, so it is added then. JUPYTER_PORT picks the port.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser --ServerApp.root_dir=$(call shell_quote,$(CURDIR)) $$(test "$$(id -u)" = 0 && echo --allow-root)

# The static site (Sphinx + myst-nb, notebooks never re-executed, MathJax served locally): docs/_build/html/
site: $(STAMP)
	$(PY) docs/build_site.py

# The site's test in headless Chromium (Debian's package; installed here when missing and run as root)
site-test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { test "$$(id -u)" = 0 && apt-get install -y -q chromium; } || { echo "error: headless Chromium is needed: sudo apt-get install chromium"; exit 1; }
	$(PY) -m pytest -p no:xdist -q tests/test_site.py

scoreboard: $(STAMP)
	$(PY) -m common.harness scoreboard

bless: $(STAMP)
	$(PY) -m common.harness bless $(call shell_quote,$(value PAPER)) $(if $(strip $(value ALLOW_BREAKING)),--allow-breaking-previous $(call shell_quote,$(value ALLOW_BREAKING)))

verify: $(STAMP)
	@ls results/$(call shell_quote,$(value PAPER))/ci/*.ipynb >/dev/null 2>&1 || { echo "error: no executed notebooks in results/$(value PAPER)/ci/ (run make run PAPER=$(value PAPER))"; exit 2; }
	REPRO_PAPER=$(call shell_quote,$(value PAPER)) REPRO_PROFILE=ci $(PY) -m pytest -p no:xdist --nbval-lax --nbval-current-env -o testpaths= -q results/$(call shell_quote,$(value PAPER))/ci/*.ipynb

new: $(STAMP)
	$(PY) -m common.harness new $(call shell_quote,$(value PAPER))

cite: $(STAMP)
	@$(PY) -m common.harness cite $(call shell_quote,$(value PAPER))

zoo: $(STAMP)
	@test -n $(call shell_quote,$(value MODEL)) || { $(PY) -m common.zoo list; echo "error: give a zoo notebook, e.g. make zoo MODEL=train_digits_eps"; exit 2; }
	$(PY) -m common.zoo train $(call shell_quote,$(value MODEL)) --params $(call shell_quote,$(value PARAMS))

lint: $(STAMP)
	$(VENV)/bin/ruff check common papers tests

# Re-pin every dependency after editing pyproject.toml (review the diffs of both lock files). A distribution
# named in requirements-extras.lock stays there (to add one, add its name there first); the rest go to
# requirements.lock, which every result's code hash covers.
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/' > .lock.tmp
	sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/\1/p' requirements-extras.lock | tr 'A-Z_.' 'a-z--' > .lock.extras
	awk -F'==' 'NR==FNR {x[$$1]=1; next} {n=tolower($$1); gsub(/[_.]/, "-", n); print > ((n in x) ? "requirements-extras.lock" : "requirements.lock")}' .lock.extras .lock.tmp
	rm -f .lock.tmp .lock.extras

clean:
	rm -rf .cache runs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
