"""``papo.vppo_shaping_stats=micro_batch`` on the real PAPO worker: the published statistics per micro-batch.

verl's ``update_actor`` (``train_mini_batch``, where the worker writes each row's n_i by this rank's
min and max) and verl's engine, which splits the mini-batch into micro-batches and calls the loss on
each: the step's ``actor/pg_loss`` and ``vppo/weight_max`` equal the published math computed here
independently over the engine's micro-batches (consecutive rows of a fixed size), and differ from the
global statistics' values. The learning rate is 0 and the worker computes in float32: at lr 0 the
surrogate of a row is ``-w_i A_i`` per token, so ``actor/pg_loss`` (token-mean) is
``-sum_i w_i A_i |y_i| / sum_i |y_i|``.
"""

from __future__ import annotations

import math

import papo_inprocess as inprocess
import pytest

from recipe.papo.batch_keys import IMAGE_ROW_KEY, MASKED_LOG_PROBS_KEY
from recipe.papo.objective import PapoCoefficients
from recipe.papo.policy_loss import vppo_step_metrics

# Builds verl workers, whose apply_monkey_patch replaces model class forwards for the rest of the process.
pytestmark = pytest.mark.own_process

BETA_MIN = 0.9
SAMPLES = [
    (3, "a", "2 circles"),
    (3, "a", "three squares, or so, in a row"),
    (4, "b", "1"),
    (None, "c", "no image here"),
    (4, "b", "one triangle and a long answer"),
    (5, "d", "4 shapes"),
    (5, "d", "five"),
    (6, "e", "2"),
]
ADVANTAGES = [1.0, -0.5, 0.75, 0.5, -1.0, 0.25, -0.25, 1.5]
NO_PAPO = PapoCoefficients(0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    options = ["papo.kl_prcp_coef=0.0", f"papo.vppo_beta_min={BETA_MIN}", "papo.vppo_shaping_stats=micro_batch"]
    return inprocess.frozen_fp32_worker(tiny_model_dir, options, prompts=4)


@pytest.fixture(scope="module")
def prepared(worker):
    return inprocess.prepared_batch(worker, SAMPLES, ADVANTAGES)


def scores_and_lengths(prepared) -> tuple[list[float | None], list[int]]:
    """Per row, in float64 with Python loops: S_i (None for a text row) and |y_i|."""
    old = prepared["old_log_probs"].to_padded_tensor(0.0).double()
    masked = prepared[MASKED_LOG_PROBS_KEY].to_padded_tensor(0.0).double()
    lengths = [int(n) for n in prepared["response_mask"].to_padded_tensor(0).sum(-1).tolist()]
    scores = []
    for r, n in enumerate(lengths):
        if not bool(prepared[IMAGE_ROW_KEY][r]):
            scores.append(None)
            continue
        values = []
        for o, m in zip(old[r, :n].tolist(), masked[r, :n].tolist(), strict=True):
            d = min(max(m - o, -20.0), 20.0)
            values.append(min(max(math.exp(d) - d - 1.0, 0.0), 10.0))
        scores.append(sum(values) / n)
    return scores, lengths


def published_weights(scores: list[float | None], micro: int) -> tuple[list[float], list[float]]:
    """The published weights (min/max over the rank's rows, mu per consecutive micro-batch) and each
    micro-batch's beta_max."""
    present = [s for s in scores if s is not None]
    low, high = min(present), max(present)
    weights, beta_maxes = [1.0] * len(scores), []
    for start in range(0, len(scores), micro):
        members = [i for i in range(start, start + micro) if scores[i] is not None]
        norm = {i: (scores[i] - low) / (high - low) for i in members}
        beta_max = BETA_MIN + (1 - BETA_MIN) / (sum(norm.values()) / len(members) + 1e-8)
        beta_maxes.append(beta_max)
        for i in members:
            weights[i] = BETA_MIN + norm[i] * (beta_max - BETA_MIN)
    return weights, beta_maxes


def pg_loss(weights: list[float], lengths: list[int]) -> float:
    return -sum(w * a * n for w, a, n in zip(weights, ADVANTAGES, lengths, strict=True)) / sum(lengths)


@pytest.mark.parametrize("micro", [4, 2])
def test_the_step_uses_the_published_weights_of_each_engine_micro_batch(worker, prepared, micro):
    scores, lengths = scores_and_lengths(prepared)
    weights, beta_maxes = published_weights(scores, micro)
    metrics = inprocess.update_actor_metrics(worker, prepared, NO_PAPO, micro_batch_size=micro)
    vppo = vppo_step_metrics(metrics)
    assert metrics["actor/pg_loss"] == pytest.approx(pg_loss(weights, lengths), rel=1e-5)
    # the largest row weight: a micro-batch's beta_max is reached only by the rank's max-S row
    assert vppo["vppo/weight_max"] == pytest.approx(max(weights), rel=1e-5)
    assert vppo["vppo/weight_min"] == pytest.approx(BETA_MIN, rel=1e-6) == min(weights)
    # ... which are not the global statistics' (one mu over all 8 rows): the test can tell them apart
    one_mu, _ = published_weights(scores, len(SAMPLES))
    assert abs(pg_loss(one_mu, lengths) - metrics["actor/pg_loss"]) > 1e-4
    assert len(set(beta_maxes)) == len(beta_maxes)  # each micro-batch has its own beta_max
