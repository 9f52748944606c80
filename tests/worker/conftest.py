"""The real PAPO worker in-process on CPU: verl's FSDP2 engine over each family's tiny model.

A world-size-1 gloo process group is created once per test session (verl's
``initialize_global_process_group_ray`` skips re-initialisation); the CPU backend is selected in
``tests/conftest.py`` before verl is first imported. Workers and batches come from
``tests/support/papo_inprocess.py`` (shared with the step-cost benchmark).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image


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


def random_image(seed: int, size: int = 56) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def build_batch(worker, samples):
    """A batch in the v1 trainer's layout from ``(image or None, uid, response_text)`` samples."""
    from papo_inprocess import build_batch as build

    rows = [([] if image is None else [image], uid, "How many shapes?", response) for image, uid, response in samples]
    return build(worker.actor.model_config.processor, worker.actor.model_config.tokenizer, rows)


@pytest.fixture(name="build_batch")
def build_batch_fixture():
    return build_batch


@pytest.fixture(name="random_image")
def random_image_fixture():
    return random_image


def vanilla_config(actor_config):
    """A copy of verl's ActorConfig whose policy loss is plain verl ``vanilla`` (GRPO/DAPO surrogate)."""
    from verl.workers.config import PolicyLossConfig

    return dataclasses.replace(actor_config, policy_loss=PolicyLossConfig(loss_mode="vanilla"), global_batch_info={})


@pytest.fixture(name="vanilla_config")
def vanilla_config_fixture():
    return vanilla_config
