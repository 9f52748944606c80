"""Worker level: masked log-probs, and which branch carries gradient in each mode, on the real engine."""

from __future__ import annotations

from functools import partial

import papo_inprocess as inprocess
import pytest
import torch
from verl.workers.utils.losses import ppo_loss

from recipe.papo.batch_keys import IMAGE_ROW_KEY, MASKED_LOG_PROBS_KEY
from recipe.papo.objective import PapoCoefficients

# Builds verl workers, whose apply_monkey_patch replaces model class forwards for the rest of the process.
pytestmark = pytest.mark.own_process

SAMPLES = [(0, "a", "3 circles"), (0, "a", "two"), (None, "b", "no image here"), (1, "c", "1 square")]
ADVANTAGES = [1.0, -1.0, 0.5, -0.5]


@pytest.fixture(scope="module")
def precompute_worker(make_worker):
    return make_worker()


@pytest.fixture(scope="module")
def recompute_worker(make_worker):
    return make_worker("papo.masked_logprob_mode=recompute")


@pytest.fixture
def batch(precompute_worker):
    samples = [
        ([] if seed is None else [inprocess.random_image(seed)], uid, "How many shapes?", text)
        for seed, uid, text in SAMPLES
    ]
    return inprocess.worker_batch(precompute_worker, samples, step=3)


def test_masked_log_probs_differ_on_image_rows_and_equal_on_text_rows(precompute_worker, batch):
    old = list(inprocess.response_log_probs(precompute_worker, batch).unbind())
    out = precompute_worker.compute_masked_log_prob(batch.copy())
    masked = list(out[MASKED_LOG_PROBS_KEY].unbind())
    assert out[IMAGE_ROW_KEY].tolist() == [True, True, False, True]
    for row in (0, 1, 3):
        assert (old[row] - masked[row]).abs().max() > 1e-4, f"image row {row} unchanged by masking"
    assert torch.equal(old[2], masked[2]), "text-only row must see identical inputs"


def training_batch(worker, data, coefs, advantages=ADVANTAGES):
    """``data`` plus what the trainers write before the update, in micro-batches of 2 rows."""
    return inprocess.training_batch(worker, data, PapoCoefficients(*coefs), advantages, micro_batch_size=2)


def max_grad_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_zero_coefficients_give_grpos_loss_and_gradient(precompute_worker, batch):
    actor_config = precompute_worker.loss_fn.keywords["config"]
    data = training_batch(precompute_worker, batch, coefs=(0.0, 0.0, 0.0))
    papo_loss, papo_grads = inprocess.loss_and_grads(precompute_worker, data)
    grpo_loss, grpo_grads = inprocess.loss_and_grads(
        precompute_worker, data, partial(ppo_loss, config=inprocess.vanilla_config(actor_config))
    )
    assert papo_loss == grpo_loss
    assert max_grad_difference(papo_grads, grpo_grads) == 0.0
    assert max(g.abs().max().item() for g in grpo_grads.values()) > 0


def test_positive_gamma_reaches_the_model_gradient(precompute_worker, batch):
    grads = {}
    for gamma in (0.0, 0.5):
        data = training_batch(precompute_worker, batch, coefs=(gamma, 0.0, 0.0))
        grads[gamma] = inprocess.loss_and_grads(precompute_worker, data)[1]
    assert max_grad_difference(grads[0.0], grads[0.5]) > 1e-6


def test_h_aug_has_no_gradient_when_precomputed_and_gradient_when_recomputed(
    precompute_worker, recompute_worker, batch
):
    """Only eta_aug > 0 and zero advantages: the whole gradient is H_aug's."""
    zero_advantages = [0.0] * 4
    results = {}
    for name, worker in (("precompute", precompute_worker), ("recompute", recompute_worker)):
        data = training_batch(worker, batch, coefs=(0.0, 0.0, 1.0), advantages=zero_advantages)
        loss, grads = inprocess.loss_and_grads(worker, data)
        results[name] = (loss, max(g.abs().max().item() for g in grads.values()))
    assert results["precompute"][1] == 0.0
    assert results["recompute"][1] > 1e-6
    # same H_aug value either way: the recomputed masked forward sees the same masked inputs
    assert results["precompute"][0] == pytest.approx(results["recompute"][0], rel=1e-4)
