"""What the PAPO trainer hands the workers once, and how verl's base trainer sees it.

The trainer is built from the composed ``configs/papo_trainer.yaml`` (its constructor starts no
worker and no Ray): ``PapoTrainer.__init__`` runs verl's own ``PPOTrainer.__init__``.
"""

from __future__ import annotations

import papo_inprocess as inprocess
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer


def test_mm_processor_kwargs_of_carries_the_runs_processor_options():
    from recipe.papo.trainer import mm_processor_kwargs_of

    config = OmegaConf.create({"data": {"mm_processor_kwargs": {"min_pixels": 200704, "max_pixels": 1003520}}})
    assert mm_processor_kwargs_of(config) == {"min_pixels": 200704, "max_pixels": 1003520}
    assert mm_processor_kwargs_of(OmegaConf.create({"data": {}})) == {}


def test_registered_as_papo_and_built_by_verl_as_its_sync_trainer(tiny_model_dir):
    """main_ppo finds the class by ``trainer_mode=papo``; verl's base class runs it as ``sync``
    (its synchronous replay buffer), and the run's config keeps the registered name."""
    from verl.trainer.ppo.v1 import get_trainer_cls

    from recipe.papo.trainer import PapoTrainer

    config = inprocess.compose_config(tiny_model_dir)
    assert config.trainer.v1.trainer_mode == "papo"
    assert get_trainer_cls("papo") is PapoTrainer
    trainer = PapoTrainer(config)
    assert trainer.trainer_mode == "sync"
    assert type(trainer.replay_buffer) is ReplayBuffer
    assert trainer.config.trainer.v1.trainer_mode == "papo"
    assert trainer.papo.enabled
