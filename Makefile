# papo-verl: set-up, lint + tests and the CPU demo. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.papo-installed
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k masking"`.
PYTEST_ARGS ?=
# Arguments of `make experiment`, e.g. `make experiment EXPERIMENT_ARGS="--quick --out quick_output"`.
EXPERIMENT_ARGS ?= --out experiment_output

.PHONY: install test demo experiment clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# No CUDA: install the CPU torch first so that verl keeps it (verl pins no torch itself).
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet torch==2.13.0; fi
	@# compat mode puts the repo root on sys.path, so our regular `recipe` package wins over the
	@# namespace folder TransferQueue installs as site-packages/recipe.
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(PY) -c "import recipe.papo, data_prep, verl, torch; print('papo-verl installed: verl', verl.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m recipe.papo.demo.run_demo

experiment: $(STAMP)
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install --quiet -e '.[experiments]' --config-settings editable_mode=compat
	$(PY) -m recipe.papo.experiments.dynamics $(EXPERIMENT_ARGS)

clean-venv:
	rm -rf $(VENV)
