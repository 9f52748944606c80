"""Entry point: ``python -m recipe.papo.main_papo [key=value ...]``.

Composes ``configs/papo_trainer.yaml`` (verl's ``ppo_trainer`` from the installed wheel plus the
``papo`` block), validates the PAPO options and their consistency with verl's keys, then runs verl's
v1 ``TaskRunner`` with the PAPO trainer registered in its process.

``PAPO_DRY_RUN=1`` stops after composition and validation (verl's ``validate_config`` and the PAPO
checks), prints the resolved settings as JSON and exits 0 without starting Ray or touching a GPU.
"""

from __future__ import annotations

import json
import os

import hydra
import ray
from omegaconf import DictConfig
from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from .run_checks import check_papo_run_config, papo_summary

DRY_RUN_ENV = "PAPO_DRY_RUN"


@ray.remote
class PapoTaskRunner(TaskRunnerV1.__ray_actor_class__):
    """verl's v1 TaskRunner; defined here so its Ray process imports (and registers) the PAPO trainer."""

    def run(self, config: DictConfig):
        from . import trainer  # noqa: F401  registers trainer.v1.trainer_mode=papo in this process

        return super().run(config)


def prepare(config: DictConfig) -> dict:
    """All start-up validation; returns the resolved PAPO summary."""
    papo = check_papo_run_config(config)
    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    return papo_summary(config, papo)


@hydra.main(config_path="../../configs", config_name="papo_trainer", version_base=None)
def main(config: DictConfig) -> None:
    summary = prepare(config)
    if os.environ.get(DRY_RUN_ENV, "0") == "1":
        print("PAPO dry run: configuration composed and validated; resolved settings:")
        print(json.dumps(summary, indent=2, default=str))
        return
    run_ppo(config, task_runner_class=PapoTaskRunner)


if __name__ == "__main__":
    main()
