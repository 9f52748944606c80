"""Every arm of the dynamics experiment composes into a valid PAPO run with its own coefficients.

Each arm's ``main_papo`` command (``papo_tools.experiments.run.arm_command``) is composed from
``configs/papo_trainer.yaml`` in this process and passed through ``main_papo.prepare``: the start-up
checks a real launch runs before Ray. ``test_dynamics_e2e.py`` trains two of the arms through Ray.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from papo_tools.experiments.arms import SELECTABLE_ARMS
from papo_tools.experiments.run import RunSize, arm_command

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def resolved_settings(command: list[str]) -> dict:
    """``main_papo.prepare`` of the Hydra overrides in ``command`` (after ``python -m recipe.papo.main_papo``)."""
    from hydra import compose, initialize_config_dir

    from recipe.papo.main_papo import prepare

    assert command[1:3] == ["-m", "recipe.papo.main_papo"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose("papo_trainer", overrides=command[3:])
    return prepare(config)


@pytest.mark.parametrize("arm", SELECTABLE_ARMS, ids=lambda arm: arm.name)
def test_arm_composes_with_its_own_coefficients(arm, tiny_model_dir, tmp_path):
    command = arm_command(arm, 0, tiny_model_dir, tmp_path / "t.parquet", tmp_path / "v.parquet", tmp_path, RunSize(2))
    settings = resolved_settings(command)
    expected = dict(override.split("=", 1) for override in arm.overrides)
    for key, value in expected.items():
        resolved = settings[key]
        if isinstance(resolved, bool):
            assert str(resolved).lower() == value, key
        else:
            assert float(resolved) == float(value), key
    assert settings["papo.monitor"] is (arm.name == "grpo")
    assert settings["papo.enabled"] is True
