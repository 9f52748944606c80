"""The real PAPO worker in *this* process on CPU, and batches in the v1 trainer's layout.

Test support, not runtime code: importable as ``papo_inprocess`` once ``tests/support`` is on
``sys.path`` (``tests/conftest.py`` and ``benchmarks/bench_common.py`` put it there; the verl wheel
installs its own top-level ``tests`` package, so ``tests.support`` would not resolve to this folder).

Used by the worker-level tests and the step-cost benchmark: no Ray, no rollout, but verl 0.9.1's
own ``ActorRolloutRefWorker`` machinery (FSDP2 engine on a world-size-1 gloo group), composed from
``configs/papo_trainer.yaml`` with the CPU overrides. Batches are built with verl's own agent-loop
code for ``multi_modal_inputs`` and mRoPE ``position_ids`` and stacked like TransferQueue holds them;
:func:`with_trainer_fields` and :func:`training_batch` add what the trainers write before an update,
and :func:`loss_and_grads` runs one update's forward and backward on the worker's engine.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from papo_tools.cpu.launch import cpu_overrides

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
    from papo_tools.cpu import activate

    activate()


def compose_config(
    model_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    prompts: int = 2,
    rollout_n: int = 2,
):
    """``configs/papo_trainer.yaml`` + the CPU overrides + float32 params + padded inputs + ``overrides``, resolved.

    float32 parameters keep gradient comparisons from being dominated by bf16 rounding; verl's engine
    still computes under bf16 autocast unless ``+actor_rollout_ref.actor.fsdp_config.mixed_precision.
    param_dtype=fp32`` is passed. Padded by default; tests that want remove-padding pass
    ``actor_rollout_ref.model.use_remove_padding=True``. Building any worker runs verl's
    ``apply_monkey_patch``, which replaces model class forwards for the rest of the process: a module
    that builds workers is marked ``own_process`` (``tests/support/own_process.py``).
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(
            "papo_trainer",
            overrides=[
                *cpu_overrides(
                    model_dir, "unused.parquet", "unused.parquet", batch_size=prompts, rollout_n=rollout_n, rollout="hf"
                ),
                "actor_rollout_ref.actor.fsdp_config.dtype=float32",
                "actor_rollout_ref.model.use_remove_padding=False",
                *overrides,
            ],
        )
    OmegaConf.resolve(config)
    return config


def make_worker(config):
    """An initialised ``PapoActorRolloutRefWorker`` (role ``actor``) for a composed config.

    Started as the PAPO trainer starts it: ``init_model``, then ``init_papo`` with the run's
    ``data.mm_processor_kwargs`` (``PapoTrainer.on_init_end``).
    """
    from recipe.papo.trainer import mm_processor_kwargs_of
    from recipe.papo.worker import PapoActorRolloutRefWorker

    worker = PapoActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    worker.init_papo(mm_processor_kwargs=mm_processor_kwargs_of(config))
    return worker


# A worker whose updates leave its weights as they are (lr 0) and compute in float32 (no bf16 autocast):
# the loss and gradient tests compare numbers, not training.
FROZEN_FP32 = (
    "actor_rollout_ref.actor.optim.lr=0.0",
    "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32",
)


def frozen_fp32_worker(model_dir: str | Path, papo_overrides: Sequence[str], *, prompts: int):
    """:func:`make_worker` of ``model_dir`` with :data:`FROZEN_FP32` and ``papo_overrides``, in this process."""
    activate_in_process()
    return make_worker(compose_config(model_dir, [*FROZEN_FP32, *papo_overrides], prompts=prompts))


def prepared_batch(worker, samples: Sequence[tuple[int | None, str, str]], advantages: Sequence[float]):
    """The batch the trainer hands the update at step 2, of ``(image seed or None, uid, response)`` rows
    asked "How many shapes?": old and masked log-probs, weights and ``advantages``."""
    rows = [
        ([] if seed is None else [random_image(seed)], uid, "How many shapes?", text) for seed, uid, text in samples
    ]
    return with_trainer_fields(worker, worker_batch(worker, rows, step=2), advantages)


def random_image(seed: int, size: int = 56) -> Image.Image:
    """A ``size`` x ``size`` RGB image of uniform noise, a pure function of ``seed``."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


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


def worker_batch(worker, samples: Sequence[tuple[list, str, str, str]], *, step: int):
    """:func:`build_batch` with ``worker``'s processor and tokenizer, plus the metadata of a log-prob call.

    The metadata is what the trainers set for ``compute_log_prob`` / ``compute_masked_log_prob``
    (temperature 1, no entropy, no loss) and the masking step (:data:`recipe.papo.batch_keys.STEP_KEY`),
    which copies of the batch carry into an update (where ``recompute`` mode masks).
    """
    from verl.utils import tensordict_utils as tu

    from recipe.papo.batch_keys import STEP_KEY

    model_config = worker.actor.model_config
    batch = build_batch(model_config.processor, model_config.tokenizer, samples)
    tu.assign_non_tensor(batch, temperature=1.0, calculate_entropy=False, compute_loss=False, **{STEP_KEY: step})
    return batch


def response_log_probs(worker, batch):
    """Nested ``(batch, response_len)`` log-probs of the responses under ``worker``'s policy (no grad)."""
    from verl.workers.utils.padding import response_from_nested

    return response_from_nested(worker.compute_log_prob(batch.copy())["log_probs"], batch["response_mask"])


@contextmanager
def masked_pass_shared(worker, shared: bool) -> Iterator[None]:
    """Within the block, ``worker``'s masked pass is the shared one (``shared``, if it applies) or the full one.

    ``papo.share_masked_prompt=false`` as a switch on a built worker: the full pass runs the whole masked
    sequence per rollout (``infer_batch``), as where sharing does not apply.
    """
    keep = worker.shared_masked_pass
    worker.shared_masked_pass = keep if shared else None
    try:
        yield
    finally:
        worker.shared_masked_pass = keep


def masked_response_log_probs(worker, batch):
    """Nested ``(batch, response_len)`` masked-image log-probs of the responses (``precompute`` mode)."""
    from recipe.papo.batch_keys import MASKED_LOG_PROBS_KEY

    return worker.compute_masked_log_prob(batch.copy())[MASKED_LOG_PROBS_KEY]


def with_trainer_fields(worker, batch, advantages: Sequence[float]):
    """A copy of ``batch`` with what the trainers write into it before the actor update.

    verl's trainer: ``old_log_probs`` (:func:`response_log_probs`) and ``advantages`` (``advantages[i]``
    on every response token of row ``i``). The PAPO trainer: the masked pass's outputs (masked
    log-probs in ``precompute`` mode, has-image flags) and KL_prcp weight 1 on every row
    (``papo.apply_mode=all``).
    """
    import torch

    from recipe.papo.batch_keys import IMAGE_ROW_KEY, KL_WEIGHT_KEY, MASKED_LOG_PROBS_KEY

    data = batch.copy()
    data["old_log_probs"] = response_log_probs(worker, data).float()
    masked = worker.compute_masked_log_prob(data.copy())
    if MASKED_LOG_PROBS_KEY in masked.keys():  # noqa: SIM118  (TensorDict has no `in`)
        data[MASKED_LOG_PROBS_KEY] = masked[MASKED_LOG_PROBS_KEY]
    data[IMAGE_ROW_KEY] = masked[IMAGE_ROW_KEY]
    data[KL_WEIGHT_KEY] = torch.ones(len(data))
    data["advantages"] = torch.nested.as_nested_tensor(
        [
            a * torch.ones_like(m, dtype=torch.float32)
            for a, m in zip(advantages, data["response_mask"].unbind(), strict=True)
        ],
        layout=torch.jagged,
    )
    return data


def with_engine_update_metadata(
    data,
    coefficients,
    *,
    micro_batch_size: int,
    use_remove_padding: bool = False,
    calculate_entropy: bool = False,
):
    """A copy of ``data`` ready for ``engine.forward_backward_batch`` as one global batch.

    Adds the step's :class:`recipe.papo.objective.PapoCoefficients` (as the PAPO trainer does) and the
    engine options verl's ``update_actor`` would otherwise set from the worker config: fixed
    micro-batches of ``micro_batch_size`` rows, no fused kernels, the padded or remove-padding path.
    """
    from verl.utils import tensordict_utils as tu

    from recipe.papo.batch_keys import COEFFICIENTS_KEY

    data = data.copy()
    tu.assign_non_tensor(
        data,
        **{COEFFICIENTS_KEY: coefficients},
        global_batch_size=len(data),
        calculate_entropy=calculate_entropy,
        use_remove_padding=use_remove_padding,
        use_dynamic_bsz=False,
        micro_batch_size_per_gpu=micro_batch_size,
        use_fused_kernels=False,
    )
    return data


# The splits of one 8-row mini-batch that the split-independence tests compare; "two rows" is a token
# budget of twice the longest row (resolved by :func:`split_options`).
MICRO_BATCH_SPLITS: dict[str, dict[str, Any]] = {
    "1 micro-batch": dict(micro_batch_size=8),
    "2 micro-batches": dict(micro_batch_size=4),
    "4 micro-batches": dict(micro_batch_size=2),
    "dynamic batch size": dict(max_token_len="two rows"),
}


def split_options(batch, split: dict[str, Any]) -> dict[str, Any]:
    """``split`` (a :data:`MICRO_BATCH_SPLITS` value) with the "two rows" token budget resolved for ``batch``."""
    if split.get("max_token_len") != "two rows":
        return split
    return dict(max_token_len=2 * int(batch["input_ids"].offsets().diff().max()))


def update_actor_metrics(
    worker,
    prepared,
    coefficients,
    *,
    micro_batch_size: int | None = None,
    max_token_len: int | None = None,
    mini_batch_size: int | None = None,
) -> dict[str, float]:
    """One ``update_actor`` call on ``prepared`` (one mini-batch unless ``mini_batch_size``); the step's metrics.

    ``prepared`` holds what the trainer writes before the update (old and masked log-probs,
    advantages, ...). The learning rate is whatever the worker was built with. Fixed micro-batches of
    ``micro_batch_size`` rows, or dynamic batches of at most ``max_token_len`` tokens. The metrics are
    reduced exactly as ``PPOTrainer._update_actor`` does (``rename_dict(..., "actor/")`` and
    ``reduce_metrics``).
    """
    from verl.utils import tensordict_utils as tu
    from verl.utils.metric import reduce_metrics
    from verl.utils.py_functional import rename_dict

    from recipe.papo.batch_keys import COEFFICIENTS_KEY

    data = prepared.copy()
    mini_batch_size = mini_batch_size or len(data)
    tu.assign_non_tensor(
        data,
        **{COEFFICIENTS_KEY: coefficients},
        calculate_entropy=False,
        distillation_use_topk=False,
        distillation_only=False,
        global_batch_size=mini_batch_size,
        mini_batch_size=mini_batch_size,
        epochs=1,
        seed=1,
        dataloader_kwargs={"shuffle": False},
        temperature=1.0,
        use_dynamic_bsz=max_token_len is not None,
        micro_batch_size_per_gpu=micro_batch_size or len(data),
        max_token_len_per_gpu=max_token_len or 10**6,
    )
    return reduce_metrics(rename_dict(worker.update_actor(data)["metrics"], "actor/"))


def training_batch(worker, batch, coefficients, advantages: Sequence[float], **engine_options):
    """:func:`with_trainer_fields` then :func:`with_engine_update_metadata` (``engine_options``)."""
    return with_engine_update_metadata(with_trainer_fields(worker, batch, advantages), coefficients, **engine_options)


def forward_backward(worker, data, loss_fn: Callable | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One forward and backward of ``data`` on ``worker``'s engine, without an optimiser step.

    Args:
        worker: an initialised PAPO worker.
        data: a :func:`training_batch` (copied: the engine sees a fresh copy each call).
        loss_fn: the loss (default: the worker's, ``papo_ppo_loss``).

    Returns:
        ``(output, grads)``: the engine's output (``loss`` per micro-batch or in total, ``metrics``)
        and every parameter's gradient (full tensor, cloned) by parameter name. The gradients are
        zeroed again after.
    """
    engine = worker.actor.engine
    with engine.train_mode():
        engine.optimizer_zero_grad()
        output = engine.forward_backward_batch(data.copy(), loss_function=loss_fn or worker.loss_fn, forward_only=False)
        grads = {
            name: (param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad).detach().clone()
            for name, param in engine.module.named_parameters()
            if param.grad is not None
        }
        engine.optimizer_zero_grad()
    return output, grads


def loss_and_grads(worker, data, loss_fn: Callable | None = None) -> tuple[Any, dict[str, Any]]:
    """:func:`forward_backward`, with the loss summed over micro-batches: ``(loss, grads)``."""
    output, grads = forward_backward(worker, data, loss_fn)
    loss = sum(output["loss"]) if isinstance(output["loss"], list) else output["loss"]
    return loss, grads


def update_loss_and_gradient(worker, batch, coefficients, advantages: Sequence[float], **engine_options):
    """The loss of one update over ``batch`` and its gradient as one vector: ``(loss, gradient)``.

    :func:`training_batch` (``engine_options`` as there), :func:`loss_and_grads`, :func:`flat_gradient`;
    the loss is a 0-dim float tensor.
    """
    import torch

    loss, grads = loss_and_grads(worker, training_batch(worker, batch, coefficients, advantages, **engine_options))
    return torch.tensor(float(loss)), flat_gradient(grads)


def flat_gradient(grads: dict[str, Any]):
    """The gradients of :func:`loss_and_grads` as one float32 vector, parameters in name order."""
    import torch

    return torch.cat([grads[name].float().flatten() for name in sorted(grads)])


def vanilla_config(actor_config):
    """A copy of verl's ``ActorConfig`` whose policy loss is plain verl ``vanilla`` (GRPO/DAPO surrogate)."""
    from verl.workers.config import PolicyLossConfig

    return dataclasses.replace(actor_config, policy_loss=PolicyLossConfig(loss_mode="vanilla"), global_batch_info={})
