"""Shared fixtures: the tiny random Qwen2.5-VL saved to disk and loaded back with ``from_pretrained``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from recipe.papo.model_families import FAMILIES

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Test support modules (e.g. ``papo_inprocess``, ``vision_patches``), imported by name; shared with benchmarks/.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _select_cpu_backend() -> None:
    """Every test runs on CPU: switch verl's CPU backend on before any test module imports verl.

    verl fixes its platform the first time something asks for the device name (some verl modules do
    at import), so switching later in a fixture is too late once another test module has imported verl.
    """
    import papo_tools.cpu as cpu_backend
    from papo_tools.cpu.launch import cpu_env

    env = cpu_env()
    for key in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES"):
        os.environ.setdefault(key, env[key])  # inherited by subprocesses that import verl
    # papo_tools.cpu was imported above with the switch still off, so verl's import of it (through
    # VERL_USE_EXTERNAL_MODULES) would be a no-op in this process: activate it explicitly.
    cpu_backend.activate()


_select_cpu_backend()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Directory of a tiny random Qwen2.5-VL (model, tokenizer, PIL processor) built in code."""
    from papo_tools.demo.tiny_model import save_tiny_qwen2_5_vl

    return save_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), seed=0)


@pytest.fixture(scope="session")
def tiny_model_bundle(tiny_model_dir):
    """``(model, tokenizer, processor)`` loaded from :func:`tiny_model_dir` through ``from_pretrained``."""
    from papo_tools.demo.tiny_model import load_tiny_qwen2_5_vl

    return load_tiny_qwen2_5_vl(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_bundle):
    return tiny_model_bundle[2]


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def family_model_dir(request, tmp_path_factory) -> Path:
    """A tiny random model of each supported family (parametrized: tests using it run once per family)."""
    from papo_tools.demo.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp(f"tiny_{request.param}"), request.param, seed=0)


@pytest.fixture(scope="session")
def family_bundle(family_model_dir):
    """``(model, tokenizer, processor)`` of :func:`family_model_dir` loaded through ``from_pretrained``."""
    from papo_tools.demo.tiny_model import load_tiny_model

    return load_tiny_model(family_model_dir)


# The end-to-end modules, first, in this order. Their runs bound the suite: each Ray launch costs about
# 100 CPU-seconds (a dozen processes importing torch and verl), the suite keeps both cores busy, and the
# vLLM runs go one at a time (only one fits in memory beside the others: tests/support/memory_slots.py),
# so that chain (two-node cluster x2, journey x2, PAPO-D SMOKE, families x2) must start at once and
# not wait behind a worker that waits itself. The vLLM modules alternate with the HF-rollout ones, so
# that while one worker waits for the vLLM slot the others train on the HF rollout or run the short
# tests. With pytest-xdist (--dist loadfile --no-loadscope-reorder, Makefile) a file goes to the next
# free worker in this order; without --no-loadscope-reorder xdist would sort the files by their number
# of tests and run these last. Without xdist it changes nothing but the order.
SLOWEST_FIRST = (
    "tests/e2e/test_multi_node.py",  # the cluster slot, two vLLM runs
    "tests/e2e/test_journey.py",  # data prep and warm-up first, then two vLLM runs
    "tests/e2e/test_demo_e2e.py",  # HF rollout x2
    "tests/scripts/test_smoke_vppo_e2e.py",  # HF
    "tests/scripts/test_smoke_e2e.py",  # vLLM (PAPO-D), HF (PAPO-G SP=2)
    "tests/scripts/test_smoke_gspo_e2e.py",  # HF
    "tests/families/test_family_smoke.py",  # vLLM x2
    "tests/experiments/test_dynamics_e2e.py",  # HF
    "tests/experiments/test_hacking_guard_e2e.py",  # HF
    "tests/cpu/test_e2e_cpu.py",  # HF
    "tests/cpu/test_vllm_rollout.py",  # two in-process engines (a small slot)
)


def shared_run_params(item) -> tuple[str, ...]:
    """The values of ``item``'s module- or session-scoped fixture parameters (the runs its module shares)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return ()
    definitions = item._fixtureinfo.name2fixturedefs
    return tuple(
        str(callspec.params[name])
        for name in sorted(callspec.params)
        if name in definitions and definitions[name][-1].scope in ("module", "package", "session")
    )


def pytest_collection_modifyitems(session, config, items):
    """Move the modules of :data:`SLOWEST_FIRST` to the front, in that order; inside each, one run at a time.

    An end-to-end module's tests share its runs (a module-scoped fixture, parametrized for several
    runs): its tests are grouped by that parameter, so each run is built once, and kept in file order
    inside a group. Ordering by line alone would alternate the parameters and rebuild a run per test.
    """
    rank = {path: index for index, path in enumerate(SLOWEST_FIRST)}

    def key(item) -> tuple:
        position = rank.get(item.path.relative_to(config.rootpath).as_posix(), len(rank))
        if position == len(rank):
            return (position,)  # stable: the shuffled order of everything else is kept
        return position, shared_run_params(item), item.location[1] or 0

    items.sort(key=key)


def pytest_configure(config):
    """Modules marked ``own_process`` (they build verl workers, which patch model classes) run in a child process."""
    import own_process
    from folder_times import FolderTimes

    own_process.configure(config)
    if not hasattr(config, "workerinput"):  # the process that reports (xdist's controller, or the only one)
        config.pluginmanager.register(FolderTimes(), "folder_times")
