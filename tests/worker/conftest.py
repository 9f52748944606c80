"""The real PAPO worker in-process on CPU: verl's FSDP2 engine over the tiny Qwen2.5-VL.

A world-size-1 gloo process group is created once per test session (verl's
``initialize_global_process_group_ray`` skips re-initialisation). Batches are built with verl's own
agent-loop code for ``multi_modal_inputs`` and mRoPE ``position_ids`` and verl's
``list_of_dict_to_tensordict``, i.e. the layout the v1 trainer stores in TransferQueue.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

CONFIG_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.fixture(scope="session")
def cpu_process_group():
    """A world-size-1 distributed environment for the worker (the CPU backend is selected in tests/conftest.py)."""
    import recipe.papo.cpu as cpu_backend

    assert cpu_backend.is_enabled(), "tests/conftest.py selects the CPU backend before verl is imported"
    os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=_free_port())
    cpu_backend.activate()
    yield


def compose_config(model_dir, overrides: list[str]):
    """The composed ``configs/papo_trainer.yaml`` with the CPU overrides plus ``overrides``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from recipe.papo.cpu.launch import cpu_overrides

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        config = compose(
            "papo_trainer",
            overrides=[
                *cpu_overrides(model_dir, "unused.parquet", "unused.parquet", batch_size=2, rollout_n=2),
                # full precision so gradient comparisons are not dominated by bf16 rounding
                "actor_rollout_ref.actor.fsdp_config.dtype=float32",
                *overrides,
            ],
        )
    OmegaConf.resolve(config)
    return config


@pytest.fixture(scope="session")
def make_worker(cpu_process_group, tiny_model_dir):
    """Factory: an initialised ``PapoActorRolloutRefWorker`` (role actor) for PAPO overrides."""
    from recipe.papo.worker import PapoActorRolloutRefWorker

    def make(*overrides: str):
        config = compose_config(tiny_model_dir, list(overrides))
        worker = PapoActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
        worker.init_model()
        return worker

    return make


def random_image(seed: int, size: int = 56) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def build_batch(worker, samples):
    """A batch in the v1 trainer's layout from ``(image or None, uid, response_text)`` samples."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    processor = worker.actor.model_config.processor
    tokenizer = worker.actor.model_config.tokenizer
    agent_loop = SimpleNamespace(processor=processor, tokenizer=tokenizer, _get_mm_processor_kwargs=lambda audios=None: {})
    rows = []
    for image, uid, response in samples:
        if image is None:
            content = "How many shapes?"
        else:
            content = [{"type": "image", "image": image}, {"type": "text", "text": "How many shapes?"}]
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        images = None if image is None else [image]
        prompt_ids = processor(text=[text], images=images, return_tensors="pt")["input_ids"][0]
        response_ids = torch.tensor(tokenizer.encode(response) + [tokenizer.eos_token_id])
        input_ids = torch.cat([prompt_ids, response_ids])
        output = SimpleNamespace(multi_modal_data={} if image is None else {"images": images}, mm_processor_kwargs=None)
        inputs = AgentLoopWorker._compute_multi_modal_inputs(agent_loop, output, input_ids)
        ones = torch.ones_like(input_ids)
        position_ids = AgentLoopWorker._compute_position_ids(agent_loop, input_ids[None], ones[None], inputs)
        rows.append(
            dict(
                prompts=prompt_ids, responses=response_ids, response_mask=torch.ones_like(response_ids),
                loss_mask=torch.ones_like(response_ids), input_ids=input_ids, attention_mask=ones,
                position_ids=position_ids.squeeze(0), multi_modal_inputs=inputs, uid=uid,
            )
        )
    return list_of_dict_to_tensordict(rows)


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
