"""Composed PAPO run configs for start-up-check tests (no Ray, no model download).

Test support, not runtime code: importable as ``papo_configs`` once ``tests/support`` is on ``sys.path``
(``tests/conftest.py`` puts it there).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def composed(*overrides: str) -> DictConfig:
    """``configs/papo_trainer.yaml`` with a supported model (Qwen2.5-VL-7B), the vLLM rollout and ``overrides``,
    composed as ``main_papo`` composes it (unresolved)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(
            "papo_trainer",
            overrides=[
                "actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-7B-Instruct",
                "actor_rollout_ref.rollout.name=vllm",
                *overrides,
            ],
        )
