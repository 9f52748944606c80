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


# End-to-end modules, longest first (the user's journey: scorer warm-up and two vLLM runs; multi-node:
# two vLLM SMOKE runs on a two-node Ray cluster; SMOKE on vLLM x2, main_papo x3, demo x2, warm-up + 1 arm,
# VPPO and GSPO SMOKE, main_ppo), then the families
# (Qwen3-VL on vLLM) and the two in-process vLLM engines. A scheduling hint only: with pytest-xdist
# (--dist loadfile) a file goes to the next free worker in collection order, so the long runs start at
# once and the short tests fill the gaps; without xdist it changes nothing but the order. The families'
# vLLM run comes late because only one vLLM run fits beside the others in memory
# (tests/support/memory_slots.py): started early, it would wait for the SMOKE module's two vLLM runs on
# a worker that could run other tests meanwhile.
SLOWEST_FIRST = (
    "tests/e2e/test_journey.py",
    "tests/e2e/test_multi_node.py",
    "tests/scripts/test_smoke_e2e.py",
    "tests/e2e/test_demo_e2e.py",
    "tests/experiments/test_dynamics_e2e.py",
    "tests/experiments/test_hacking_guard_e2e.py",
    "tests/scripts/test_smoke_vppo_e2e.py",
    "tests/scripts/test_smoke_gspo_e2e.py",
    "tests/cpu/test_e2e_cpu.py",
    "tests/families/test_family_smoke.py",
    "tests/cpu/test_vllm_rollout.py",
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
