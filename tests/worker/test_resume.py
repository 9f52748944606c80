"""Checkpoint resume at the worker: step k+1 from a step-k checkpoint equals the uninterrupted step k+1.

Issue 22 item 6. Given the same rollouts (responses and prompt uids, which verl does not restore:
``docs/training.md``, "Resuming"), everything PAPO computes for step k+1 is restored by verl's actor
checkpoint: the masks are a pure function of ``(papo.mask_seed, step, uid)`` and the row's inputs,
the coefficients of the step, and the masked log-probs, ``papo/*`` metrics and loss of the restored
weights and optimiser. Checked here without Ray: a worker trains step 1, saves its checkpoint
(verl's ``save_checkpoint``), trains step 2; a freshly built worker loads the checkpoint and trains
step 2 on the same rollouts; both must agree bit for bit. float32 compute: the test is about state,
not bf16 numerics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import papo_inprocess as inprocess
import pytest
import torch
from eager_masks import mask_batch_now
from verl.utils import tensordict_utils as tu

from recipe.papo.batch_keys import COEFFICIENTS_KEY, MASKED_LOG_PROBS_KEY, MULTI_MODAL_INPUTS_KEY
from recipe.papo.objective import coefficients_at_step
from recipe.papo.policy_loss import METRIC_PREFIX

# Builds verl workers, whose apply_monkey_patch replaces model class forwards for the rest of the process.
pytestmark = pytest.mark.own_process

OVERRIDES = (
    "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32",
    # PAPO-G 7B coefficients (arXiv 2507.06448): every PAPO term is computed and reaches the update.
    "papo.kl_prcp_coef=0.02",
    "papo.entropy_ori_coef=0.05",
    "papo.entropy_aug_coef=0.05",
    "actor_rollout_ref.actor.optim.lr=1e-2",  # a visible weight change per step
)
# Per step: (image seed or None for a text-only row, prompt uid, response), 2 prompts x n=2.
ROLLOUTS = {
    1: [(0, "s1-a", "3 circles"), (0, "s1-a", "two"), (None, "s1-b", "no image"), (1, "s1-c", "1 square")],
    2: [(2, "s2-a", "4 lines"), (2, "s2-a", "five"), (3, "s2-b", "a dot"), (None, "s2-c", "text row")],
}
ADVANTAGES = [1.0, -1.0, 0.5, -0.5]


def rollouts(worker, step: int):
    samples = [
        ([] if seed is None else [inprocess.random_image(seed)], uid, "How many shapes?", text)
        for seed, uid, text in ROLLOUTS[step]
    ]
    return inprocess.worker_batch(worker, samples, step=step)


def train_step(worker, step: int) -> dict[str, Any]:
    """One PAPO step of the worker calls the v1 trainer makes, on step ``step``'s rollouts.

    Returns what PAPO computes for the step: the masked ``pixel_values`` per row (``None`` for
    text-only rows), the masked log-probs (nested ``(batch, response_len)``), the update's metrics
    (``papo/*``, ``actor/pg_loss``, ...) and the updated parameters (full tensors by name).
    """
    batch = rollouts(worker, step)
    masked_batch, _ = mask_batch_now(worker.masked_input_builder, batch, step=step)
    masks = [None if row == {} else row["pixel_values"] for row in tu.get(masked_batch, MULTI_MODAL_INPUTS_KEY)]
    data = inprocess.with_trainer_fields(worker, batch, ADVANTAGES)
    actor_config = worker.config.actor
    rows = len(data)
    tu.assign_non_tensor(
        data,
        **{COEFFICIENTS_KEY: coefficients_at_step(worker.papo, step, total_steps=4)},
        calculate_entropy=True,
        distillation_use_topk=False,
        distillation_only=False,
        global_batch_size=rows,
        mini_batch_size=rows,
        epochs=actor_config.ppo_epochs,
        seed=actor_config.data_loader_seed,
        dataloader_kwargs={"shuffle": actor_config.shuffle},
        temperature=1.0,
        compute_loss=True,
    )
    output = worker.update_actor(data)
    params = {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in worker.actor.engine.module.named_parameters()
    }
    return {
        "masks": masks,
        "masked_log_probs": data[MASKED_LOG_PROBS_KEY],
        "metrics": dict(output["metrics"]),
        "params": params,
    }


def assert_same_step(resumed: dict[str, Any], uninterrupted: dict[str, Any]) -> None:
    for row, (x, y) in enumerate(zip(resumed["masks"], uninterrupted["masks"], strict=True)):
        assert (x is None and y is None) or torch.equal(x, y), f"row {row}: other masked pixel_values"
    for row, (x, y) in enumerate(
        zip(resumed["masked_log_probs"].unbind(), uninterrupted["masked_log_probs"].unbind(), strict=True)
    ):
        assert torch.equal(x, y), f"row {row}: other masked log-probs"
    papo_metrics = sorted(key for key in uninterrupted["metrics"] if key.startswith(METRIC_PREFIX))
    assert papo_metrics, f"no {METRIC_PREFIX}* metrics in {sorted(uninterrupted['metrics'])}"
    update_metrics = [key for key in uninterrupted["metrics"] if key.endswith(("pg_loss", "grad_norm"))]
    assert len(update_metrics) == 2, f"no loss or grad norm in {sorted(uninterrupted['metrics'])}"
    for key in [*papo_metrics, *update_metrics]:
        assert resumed["metrics"][key] == uninterrupted["metrics"][key], key
    assert resumed["params"].keys() == uninterrupted["params"].keys()
    for name, value in uninterrupted["params"].items():
        assert torch.equal(resumed["params"][name], value), f"{name}: other weights after the resumed update"


def test_step_after_loading_a_checkpoint_equals_the_uninterrupted_step(tiny_model_dir, tmp_path: Path):
    inprocess.activate_in_process()
    config = inprocess.compose_config(tiny_model_dir, OVERRIDES)
    checkpoint = tmp_path / "global_step_1" / "actor"

    uninterrupted = inprocess.make_worker(config)
    train_step(uninterrupted, 1)
    uninterrupted.save_checkpoint(str(checkpoint), global_step=1)
    expected = train_step(uninterrupted, 2)

    resumed = inprocess.make_worker(config)
    # Control: without the checkpoint the fresh worker's step-2 masked log-probs are not the expected ones.
    fresh = inprocess.masked_response_log_probs(resumed, rollouts(resumed, 2))
    pairs = zip(fresh.unbind(), expected["masked_log_probs"].unbind(), strict=True)
    assert any(not torch.equal(x, y) for x, y in pairs)
    resumed.load_checkpoint(str(checkpoint))
    assert_same_step(train_step(resumed, 2), expected)
