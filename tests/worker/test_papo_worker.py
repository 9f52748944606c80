"""Worker level: masked log-probs, and which branch carries gradient in each mode, on the real engine."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from verl.utils import tensordict_utils as tu
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import response_from_nested

from recipe.papo.policy_loss import COEF_KEYS, IMAGE_ROW_KEY, KL_WEIGHT_KEY, MASKED_LOG_PROBS_KEY
from recipe.papo.worker import STEP_KEY

SAMPLES = [(0, "a", "3 circles"), (0, "a", "two"), (None, "b", "no image here"), (1, "c", "1 square")]


@pytest.fixture(scope="module")
def precompute_worker(make_worker):
    return make_worker()


@pytest.fixture(scope="module")
def recompute_worker(make_worker):
    return make_worker("papo.masked_logprob_mode=recompute")


@pytest.fixture
def batch(precompute_worker, build_batch, random_image):
    samples = [(None if seed is None else random_image(seed), uid, text) for seed, uid, text in SAMPLES]
    data = build_batch(precompute_worker, samples)
    tu.assign_non_tensor(data, temperature=1.0, calculate_entropy=False, compute_loss=False, **{STEP_KEY: 3})
    return data


def response_log_probs(output, data) -> list[torch.Tensor]:
    return list(response_from_nested(output["log_probs"], data["response_mask"]).unbind())


def test_masked_log_probs_differ_on_image_rows_and_equal_on_text_rows(precompute_worker, batch):
    old = response_log_probs(precompute_worker.compute_log_prob(batch.copy()), batch)
    out = precompute_worker.compute_masked_log_prob(batch.copy())
    masked = list(out[MASKED_LOG_PROBS_KEY].unbind())
    assert out[IMAGE_ROW_KEY].tolist() == [True, True, False, True]
    for row in (0, 1, 3):
        assert (old[row] - masked[row]).abs().max() > 1e-4, f"image row {row} unchanged by masking"
    assert torch.equal(old[2], masked[2]), "text-only row must see identical inputs"


def training_batch(worker, data, coefs, advantages=None):
    """``data`` plus what the PAPO trainer and verl's update add before ``train_mini_batch``."""
    data = data.copy()
    old = worker.compute_log_prob(data.copy())
    data["old_log_probs"] = response_from_nested(old["log_probs"], data["response_mask"]).float()
    masked = worker.compute_masked_log_prob(data.copy())
    if MASKED_LOG_PROBS_KEY in masked.keys():
        data[MASKED_LOG_PROBS_KEY] = masked[MASKED_LOG_PROBS_KEY]
    data[IMAGE_ROW_KEY] = masked[IMAGE_ROW_KEY]
    data[KL_WEIGHT_KEY] = torch.ones(len(data))
    if advantages is None:
        advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    data["advantages"] = torch.nested.as_nested_tensor(
        [
            a * torch.ones_like(m, dtype=torch.float32)
            for a, m in zip(advantages, data["response_mask"].unbind(), strict=False)
        ],
        layout=torch.jagged,
    )
    tu.assign_non_tensor(
        data, **dict(zip(COEF_KEYS, coefs, strict=False)), global_batch_size=len(data), calculate_entropy=False
    )
    for key, value in dict(
        use_remove_padding=False, use_dynamic_bsz=False, micro_batch_size_per_gpu=2, use_fused_kernels=False
    ).items():
        tu.assign_non_tensor(data, **{key: value})
    return data


def loss_and_grads(worker, data, loss_fn):
    """Sum of micro-batch losses and every parameter's gradient for one backward over ``data``."""
    engine = worker.actor.engine
    with engine.train_mode():
        engine.optimizer_zero_grad()
        output = engine.forward_backward_batch(data, loss_function=loss_fn, forward_only=False)
        grads = {}
        for name, param in engine.module.named_parameters():
            if param.grad is not None:
                grad = param.grad
                grads[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().clone()
        engine.optimizer_zero_grad()
    return sum(output["loss"]) if isinstance(output["loss"], list) else output["loss"], grads


def max_grad_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_zero_coefficients_give_grpos_loss_and_gradient(precompute_worker, batch, vanilla_config):
    actor_config = precompute_worker.loss_fn.keywords["config"]
    data = training_batch(precompute_worker, batch, coefs=(0.0, 0.0, 0.0))
    papo_loss, papo_grads = loss_and_grads(precompute_worker, data, precompute_worker.loss_fn)
    grpo_loss, grpo_grads = loss_and_grads(
        precompute_worker, data, partial(ppo_loss, config=vanilla_config(actor_config))
    )
    assert papo_loss == grpo_loss
    assert max_grad_difference(papo_grads, grpo_grads) == 0.0
    assert max(g.abs().max().item() for g in grpo_grads.values()) > 0


def test_positive_gamma_reaches_the_model_gradient(precompute_worker, batch):
    grads = {}
    for gamma in (0.0, 0.5):
        data = training_batch(precompute_worker, batch, coefs=(gamma, 0.0, 0.0))
        grads[gamma] = loss_and_grads(precompute_worker, data, precompute_worker.loss_fn)[1]
    assert max_grad_difference(grads[0.0], grads[0.5]) > 1e-6


def test_h_aug_has_no_gradient_when_precomputed_and_gradient_when_recomputed(
    precompute_worker, recompute_worker, batch
):
    """Only eta_aug > 0 and zero advantages: the whole gradient is H_aug's."""
    zero_advantages = torch.zeros(4)
    results = {}
    for name, worker in (("precompute", precompute_worker), ("recompute", recompute_worker)):
        data = training_batch(worker, batch, coefs=(0.0, 0.0, 1.0), advantages=zero_advantages)
        loss, grads = loss_and_grads(worker, data, worker.loss_fn)
        results[name] = (loss, max(g.abs().max().item() for g in grads.values()))
    assert results["precompute"][1] == 0.0
    assert results["recompute"][1] > 1e-6
    # same H_aug value either way: the recomputed masked forward sees the same masked inputs
    assert results["precompute"][0] == pytest.approx(results["recompute"][0], rel=1e-4)
