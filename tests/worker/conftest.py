"""The real PAPO worker in-process on CPU: verl's FSDP2 engine over each family's tiny model.

A world-size-1 gloo process group is created once per test session (verl's
``initialize_global_process_group_ray`` skips re-initialisation); the CPU backend is selected in
``tests/conftest.py`` before verl is first imported. Workers, batches and the update helpers are
plain functions of ``tests/support/papo_inprocess.py`` (shared with the step-cost benchmark).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def make_worker(family_model_dir):
    """Factory: an initialised ``PapoActorRolloutRefWorker`` (role actor) for PAPO overrides.

    Parametrized through ``family_model_dir``: every worker test runs once per supported family.
    """
    import papo_inprocess as inprocess

    inprocess.activate_in_process()

    def make(*overrides: str):
        return inprocess.make_worker(inprocess.compose_config(family_model_dir, overrides))

    return make
