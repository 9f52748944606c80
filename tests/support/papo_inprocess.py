"""The real PAPO worker in *this* process on CPU, and batches in the v1 trainer's layout.

Test support, not runtime code: importable as ``papo_inprocess`` once ``tests/support`` is on
``sys.path`` (``tests/conftest.py`` and ``benchmarks/bench_common.py`` put it there; the verl wheel
installs its own top-level ``tests`` package, so ``tests.support`` would not resolve to this folder).

Used by the worker-level tests and the step-cost benchmark: no Ray, no rollout, but verl 0.9.1's
own ``ActorRolloutRefWorker`` machinery (FSDP2 engine on a world-size-1 gloo group), composed from
``configs/papo_trainer.yaml`` with the CPU overrides. Batches are built with verl's own agent-loop
code for ``multi_modal_inputs`` and mRoPE ``position_ids`` and stacked like TransferQueue holds them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from recipe.papo.cpu.launch import cpu_overrides

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# Per-row sequence fields; the trainer's batches keep them jagged.
SEQUENCE_KEYS = ("prompts", "responses", "response_mask", "loss_mask", "input_ids", "attention_mask", "position_ids")


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def activate_in_process() -> None:
    """Switch the CPU backend on with a world-size-1 distributed environment (idempotent).

    Must run before anything in this process asks verl for its device (verl fixes its platform then).
    """
    # A fresh port: an inherited MASTER_PORT may belong to the parent's process group. (Once this
    # process's group exists verl does not re-initialise it, so the value no longer matters.)
    os.environ.update(
        VERL_PLATFORM="cpu", WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=_free_port()
    )
    from recipe.papo.cpu import activate

    activate()


def compose_config(
    model_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    prompts: int = 2,
    rollout_n: int = 2,
):
    """``configs/papo_trainer.yaml`` + the CPU overrides + float32 params + padded inputs + ``overrides``, resolved.

    float32 keeps gradient comparisons from being dominated by bf16 rounding. Padded by default:
    building a remove-padding worker makes verl's ``apply_monkey_patch`` replace the model's attention
    class forward for the rest of the process, so tests that want remove-padding pass
    ``actor_rollout_ref.model.use_remove_padding=True`` and run last (``tests/conftest.py``).
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(
            "papo_trainer",
            overrides=[
                *cpu_overrides(model_dir, "unused.parquet", "unused.parquet", batch_size=prompts, rollout_n=rollout_n),
                "actor_rollout_ref.actor.fsdp_config.dtype=float32",
                "actor_rollout_ref.model.use_remove_padding=False",
                *overrides,
            ],
        )
    OmegaConf.resolve(config)
    return config


def make_worker(config):
    """An initialised ``PapoActorRolloutRefWorker`` (role ``actor``) for a composed config."""
    from recipe.papo.worker import PapoActorRolloutRefWorker

    worker = PapoActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    return worker


def build_batch(processor: Any, tokenizer: Any, samples: Sequence[tuple[list, str, str, str]]):
    """A batch in the v1 trainer's layout from ``(images, uid, question, response_text)`` samples.

    ``images`` may be empty (a text-only row). Returns the TensorDict the trainer would hand the
    worker: jagged ``input_ids`` / ``position_ids`` (``(4, L)`` mRoPE per row) / ``prompts`` /
    ``responses`` / masks, a ``multi_modal_inputs`` stack of per-row dicts and the ``uid`` column.
    """
    import torch
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    agent_loop = SimpleNamespace(
        processor=processor, tokenizer=tokenizer, _get_mm_processor_kwargs=lambda audios=None: {}
    )
    rows = []
    for images, uid, question, response in samples:
        content = [*({"type": "image", "image": image} for image in images), {"type": "text", "text": question}]
        messages = [{"role": "user", "content": content if images else question}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = processor(text=[text], images=list(images) or None, return_tensors="pt")["input_ids"][0]
        response_ids = torch.tensor(tokenizer.encode(response) + [tokenizer.eos_token_id])
        input_ids = torch.cat([prompt_ids, response_ids])
        output = SimpleNamespace(multi_modal_data={"images": list(images)} if images else {}, mm_processor_kwargs=None)
        inputs = AgentLoopWorker._compute_multi_modal_inputs(agent_loop, output, input_ids)
        ones = torch.ones_like(input_ids)
        position_ids = AgentLoopWorker._compute_position_ids(agent_loop, input_ids[None], ones[None], inputs)
        rows.append(
            dict(
                prompts=prompt_ids,
                responses=response_ids,
                response_mask=torch.ones_like(response_ids),
                loss_mask=torch.ones_like(response_ids),
                input_ids=input_ids,
                attention_mask=ones,
                position_ids=position_ids.squeeze(0),
                multi_modal_inputs=inputs,
                uid=uid,
            )
        )
    batch = list_of_dict_to_tensordict(rows)
    # list_of_dict_to_tensordict stacks equal-length rows densely; keep them jagged as the trainer does.
    for key in SEQUENCE_KEYS:
        if not batch[key].is_nested:
            batch[key] = torch.nested.as_nested_tensor([row[key] for row in rows], layout=torch.jagged)
    return batch
