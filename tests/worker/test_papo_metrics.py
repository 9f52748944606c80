"""``papo/*`` metrics through verl's own update and metric reduction, for any micro-batch split.

The PAPO worker's ``update_actor`` (verl's ``train_mini_batch`` -> ``train_batch`` -> engine
micro-batches -> ``_postprocess_output``), then exactly what ``PPOTrainer._update_actor`` does with
the output (``rename_dict(..., "actor/")`` and ``reduce_metrics``) and
:func:`recipe.papo.policy_loss.papo_step_metrics`. The learning rate is 0, so every update sees the
same weights and the metrics of different splits are comparable; log-probs under the update then
equal ``old_log_probs`` up to float rounding, which lets the expected values be computed here
independently. One family (Qwen2.5-VL): the aggregation is family-independent.

The worker computes in float32 (``mixed_precision.param_dtype=fp32``, so verl's engine runs no
autocast): these tests check aggregation, not bf16 numerics. Under bf16 autocast the rounding of the
update's log-probs depends on the micro-batch's padded shape and on the CPU's kernels (AMX, AVX-512,
AVX2 round differently), and it moved KL_prcp, a small difference of log-probs, by about 1%.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import papo_inprocess as inprocess
import pytest
import torch
from verl.workers.utils.losses import ppo_loss

from recipe.papo.batch_keys import IMAGE_ROW_KEY, MASKED_LOG_PROBS_KEY
from recipe.papo.objective import PapoCoefficients
from recipe.papo.policy_loss import papo_ppo_loss, papo_step_metrics

# Builds verl workers, whose apply_monkey_patch replaces model class forwards for the rest of the process.
pytestmark = pytest.mark.own_process

GAMMA, ETA_ORI, ETA_AUG = 0.5, 0.05, 0.03
# (image seed or None, uid, response): ragged responses, two text-only rows, 8 rows in all.
SAMPLES = [
    (0, "a", "3 circles"),
    (0, "a", "two red squares and a long tail of words"),
    (None, "b", "no image"),
    (1, "c", "1 square"),
    (1, "c", "one"),
    (2, "d", "four triangles, I think, maybe five"),
    (None, "e", "text"),
    (2, "d", "4"),
]
ADVANTAGES = [1.0, -1.0, 0.5, -0.5, 0.25, -0.25, 0.75, -0.75]
COEFFICIENTS = PapoCoefficients(GAMMA, ETA_ORI, ETA_AUG)


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    papo = [f"papo.kl_prcp_coef={GAMMA}", f"papo.entropy_ori_coef={ETA_ORI}", f"papo.entropy_aug_coef={ETA_AUG}"]
    return inprocess.frozen_fp32_worker(tiny_model_dir, papo, prompts=4)


@pytest.fixture(scope="module")
def prepared(worker):
    """The batch with what the trainer writes before the update: old and masked log-probs, weights."""
    return inprocess.prepared_batch(worker, SAMPLES, ADVANTAGES)


def update_metrics(worker, prepared, *, micro_batch_size=None, max_token_len=None, loss_fn=None):
    """One actor update over the whole batch as one mini-batch; the step's metrics as the trainer logs them.

    Returns ``(metrics, papo_metrics, number of loss calls = micro-batches)``.
    """
    calls = []
    inner = loss_fn or worker.loss_fn

    def counting_loss(**kwargs):
        calls.append(1)
        return inner(**kwargs)

    worker.actor.set_loss_fn(counting_loss)
    try:
        metrics = inprocess.update_actor_metrics(
            worker, prepared, COEFFICIENTS, micro_batch_size=micro_batch_size, max_token_len=max_token_len
        )
    finally:
        worker.actor.set_loss_fn(worker.loss_fn)
    return metrics, papo_step_metrics(metrics), len(calls)


def expected_step_values(prepared) -> dict[str, float]:
    """Independent: token means over the image rows' response tokens, and the PAPO loss part
    (token-mean over *all* response tokens, verl's global normalisation), with log pi = old log-probs."""
    old = prepared["old_log_probs"].to_padded_tensor(0.0).double()
    masked = prepared[MASKED_LOG_PROBS_KEY].to_padded_tensor(0.0).double()
    response = prepared["response_mask"].to_padded_tensor(0).bool()
    papo_tokens = response & prepared[IMAGE_ROW_KEY].bool().unsqueeze(-1)
    d = (masked - old).clamp(-20, 20)
    kl = (d.exp() - d - 1).clamp(-10, 10)  # low_var_kl of KL(pi(.|I) || pi(.|I_mask)) on sampled tokens
    n_papo, n_all = papo_tokens.sum(), response.sum()
    total = lambda x: (x * papo_tokens).sum()  # noqa: E731
    return {
        "papo/kl_prcp": (total(kl) / n_papo).item(),
        "papo/entropy_ori": (total(-old) / n_papo).item(),
        "papo/entropy_aug": (total(-masked) / n_papo).item(),
        "papo/loss": ((-GAMMA * total(kl) + ETA_ORI * total(-old) + ETA_AUG * total(-masked)) / n_all).item(),
    }


SPLITS = inprocess.MICRO_BATCH_SPLITS


@pytest.fixture(scope="module")
def results(worker, prepared):
    return {
        name: update_metrics(worker, prepared, **inprocess.split_options(prepared, split))
        for name, split in SPLITS.items()
    }


@pytest.mark.parametrize("split", list(SPLITS))
def test_papo_loss_parts_add_up_to_pg_loss(results, split):
    """Issue 9.4: with M micro-batches papo/loss and papo/base_loss used to come out M times too small."""
    metrics, papo, calls = results[split]
    expected_calls = {"1 micro-batch": 1, "2 micro-batches": 2, "4 micro-batches": 4}.get(split)
    assert calls == expected_calls if expected_calls else calls >= 2
    assert papo["papo/loss"] + papo["papo/base_loss"] == pytest.approx(metrics["actor/pg_loss"], rel=1e-4)
    assert abs(papo["papo/loss"]) > 1e-3 * abs(metrics["actor/pg_loss"])  # both parts are non-trivial


@pytest.mark.parametrize("split", list(SPLITS))
def test_papo_metrics_are_step_token_means_independent_of_the_split(results, prepared, split):
    _, papo, _ = results[split]
    expected = expected_step_values(prepared)
    for key, value in expected.items():
        assert papo[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
    reference = results["1 micro-batch"][1]
    for key in ("papo/kl_prcp_clipfrac", "papo/kl_prcp_kept_frac", "papo/loss"):
        assert papo[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-9), key
    assert papo["papo/kl_prcp_kept_frac"] == 1.0 and papo["papo/kl_prcp_clipfrac"] == 0.0
    assert not any(key.startswith("actor/papo/") for key in results[split][0])


def test_monitor_mode_gives_grpos_loss_and_gradient_bit_for_bit_and_logs_the_metrics(worker, prepared):
    """Issue 12.1: papo.monitor=true, even with non-zero coefficients, trains exactly the base loss."""
    actor_config = worker.loss_fn.keywords["config"]
    policy_loss = actor_config.policy_loss
    monitor_config = dataclasses.replace(
        actor_config,
        policy_loss=dataclasses.replace(policy_loss, papo=dataclasses.replace(policy_loss.papo, monitor=True)),
        global_batch_info={},
    )
    grpo_config = inprocess.vanilla_config(actor_config)
    data = inprocess.with_engine_update_metadata(prepared, COEFFICIENTS, micro_batch_size=4)
    monitor_out, monitor_grads = inprocess.forward_backward(worker, data, partial(papo_ppo_loss, config=monitor_config))
    grpo_out, grpo_grads = inprocess.forward_backward(worker, data, partial(ppo_loss, config=grpo_config))
    assert monitor_out["loss"] == grpo_out["loss"]
    assert monitor_grads.keys() == grpo_grads.keys() and len(grpo_grads) > 0
    assert all(torch.equal(monitor_grads[k], grpo_grads[k]) for k in grpo_grads)
    assert max(g.abs().max().item() for g in grpo_grads.values()) > 0
    # ... while the PAPO metrics are there: the terms' part of the loss is 0, KL_prcp is measured
    metrics = monitor_out["metrics"]
    assert metrics["papo/loss"].values == [0.0, 0.0]  # one entry per micro-batch
    assert metrics["papo/token_sum/kl_prcp"].aggregate() > 0
