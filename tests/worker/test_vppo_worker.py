"""VPPO (``papo.vppo_*``, arXiv 2510.09285) on the real PAPO worker: verl's engine, update and metrics.

* The step's ``vppo/*`` metrics and ``actor/pg_loss`` through the worker's ``update_actor`` (verl's
  ``train_mini_batch``, where the worker writes the shaping weights of each global mini-batch) and
  ``PPOTrainer._update_actor``'s reduction, for 1, 2 and 4 micro-batches and dynamic batch size:
  equal to values computed here independently, and to each other.
* Gradients through the engine: the VPPO loss's gradient equals that of verl's plain ``vanilla``
  loss on advantages filtered and scaled here by hand (so filtered tokens contribute exactly no
  policy gradient and shaping is a scaling of the advantages), and VPPO at its identity settings
  (p = 1, beta_min = 1, c = 0) gives the VPPO-off loss and gradient bit for bit.

The learning rate is 0 and the worker computes in float32 (``mixed_precision.param_dtype=fp32``):
these tests check bookkeeping, not bf16 numerics. With lr 0 the update's log-probs equal
``old_log_probs`` up to float rounding, so the surrogate is ``-A`` per kept token.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import papo_inprocess as inprocess
import pytest
import torch
from verl.utils import tensordict_utils as tu
from verl.workers.utils.losses import ppo_loss

from recipe.papo.batch_keys import IMAGE_ROW_KEY, MASKED_LOG_PROBS_KEY, VPPO_WEIGHT_KEY
from recipe.papo.objective import PapoCoefficients
from recipe.papo.policy_loss import papo_ppo_loss, papo_step_metrics, vppo_step_metrics
from recipe.papo.worker import assign_vppo_weights

# Builds verl workers, whose apply_monkey_patch replaces model class forwards for the rest of the process.
pytestmark = pytest.mark.own_process

FRACTION, BETA_MIN, ENTROPY_COEF = 0.4, 0.9, 0.06
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
NO_PAPO = PapoCoefficients(0.0, 0.0, 0.0)  # VPPO alone: the PAPO coefficients are 0


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    vppo = [
        "papo.kl_prcp_coef=0.0",
        f"papo.vppo_token_fraction={FRACTION}",
        f"papo.vppo_beta_min={BETA_MIN}",
        f"papo.vppo_entropy_coef={ENTROPY_COEF}",
    ]
    return inprocess.frozen_fp32_worker(tiny_model_dir, vppo, prompts=4)


@pytest.fixture(scope="module")
def prepared(worker):
    return inprocess.prepared_batch(worker, SAMPLES, ADVANTAGES)


def independent(prepared, fraction=FRACTION, beta_min=BETA_MIN):
    """Per row, in float64 with Python loops: kept token indices, s_t, and the shaping weight."""
    old = prepared["old_log_probs"].to_padded_tensor(0.0).double()
    masked = prepared[MASKED_LOG_PROBS_KEY].to_padded_tensor(0.0).double()
    lengths = prepared["response_mask"].to_padded_tensor(0).sum(-1).tolist()
    has_image = prepared[IMAGE_ROW_KEY].tolist()
    rows = []
    for r, n in enumerate(lengths):
        d = [min(max(m - o, -20.0), 20.0) for o, m in zip(old[r, :n].tolist(), masked[r, :n].tolist(), strict=True)]
        s = [min(max(math.exp(x) - x - 1.0, 0.0), 10.0) for x in d]
        k = math.ceil(round(fraction * n, 9)) if has_image[r] else n
        kept = set(sorted(range(n), key=lambda t, s=s: (-s[t], t))[:k])
        rows.append(dict(n=n, s=s, kept=kept, image=has_image[r], S=sum(s) / n))
    scores = [row["S"] for row in rows if row["image"]]
    low, high = min(scores), max(scores)
    norms = [(row["S"] - low) / (high - low) for row in rows if row["image"]]
    beta_max = beta_min + (1 - beta_min) / (sum(norms) / len(norms))
    for row in rows:
        row["w"] = beta_min + (row["S"] - low) / (high - low) * (beta_max - beta_min) if row["image"] else 1.0
    return rows, beta_max


def update_metrics(worker, prepared, **split):
    """One actor update (the batch as one mini-batch unless ``mini_batch_size``); the trainer's reduced metrics."""
    metrics = inprocess.update_actor_metrics(worker, prepared, NO_PAPO, **split)
    return metrics, papo_step_metrics(metrics), vppo_step_metrics(metrics)


SPLITS = inprocess.MICRO_BATCH_SPLITS


@pytest.fixture(scope="module")
def results(worker, prepared):
    return {
        name: update_metrics(worker, prepared, **inprocess.split_options(prepared, split))
        for name, split in SPLITS.items()
    }


@pytest.mark.parametrize("split", list(SPLITS))
def test_vppo_metrics_and_loss_equal_independent_values_for_every_split(results, prepared, split):
    metrics, papo, vppo = results[split]
    rows, beta_max = independent(prepared)
    image = [row for row in rows if row["image"]]
    tokens = sum(row["n"] for row in image)
    kept = sum(len(row["kept"]) for row in image)
    score_kept = sum(row["s"][t] for row in image for t in row["kept"])
    score_all = sum(sum(row["s"]) for row in image)
    expected = {
        "vppo/kept_frac": kept / tokens,
        "vppo/score_mean": score_all / tokens,
        "vppo/score_kept_mean": score_kept / kept,
        "vppo/score_dropped_mean": (score_all - score_kept) / (tokens - kept),
        "vppo/weight_mean": 1.0,
        "vppo/weight_min": BETA_MIN,
        "vppo/weight_max": beta_max,
    }
    for key, value in expected.items():
        assert vppo[key] == pytest.approx(value, rel=1e-5), key
    # every row's kept count is ceil(p |y|), so the kept fraction is within 1/|y| of p per row
    assert all(abs(len(row["kept"]) / row["n"] - FRACTION) < 1 / row["n"] for row in image)
    # pg_loss at lr 0 (ratio 1): -sum over kept tokens of w_i A_i / all response tokens, + c * mean(-log pi)
    n_all = sum(row["n"] for row in rows)
    surrogate = -sum(row["w"] * a * len(row["kept"]) for row, a in zip(rows, ADVANTAGES, strict=True)) / n_all
    old = prepared["old_log_probs"].to_padded_tensor(0.0).double()
    mask = prepared["response_mask"].to_padded_tensor(0).bool()
    penalty = ENTROPY_COEF * (-old * mask).sum().item() / n_all
    assert metrics["actor/pg_loss"] == pytest.approx(surrogate + penalty, rel=1e-4)
    assert vppo["vppo/entropy_loss"] == pytest.approx(penalty, rel=1e-4)
    assert papo["papo/loss"] == 0.0
    assert papo["papo/base_loss"] + vppo["vppo/entropy_loss"] == pytest.approx(metrics["actor/pg_loss"], rel=1e-5)
    assert not any(key.startswith("actor/vppo/") for key in metrics)


@pytest.mark.parametrize("split", [s for s in SPLITS if s != "1 micro-batch"])
def test_every_split_gives_the_same_metrics_and_loss(results, split):
    reference_metrics, _, reference = results["1 micro-batch"]
    metrics, _, vppo = results[split]
    assert vppo.keys() == reference.keys()
    for key in reference:
        assert vppo[key] == pytest.approx(reference[key], rel=1e-5), key
    assert metrics["actor/pg_loss"] == pytest.approx(reference_metrics["actor/pg_loss"], rel=1e-5)


def engine_batch(worker, prepared, micro_batch_size, beta_min=BETA_MIN):
    data = inprocess.with_engine_update_metadata(prepared, NO_PAPO, micro_batch_size=micro_batch_size)
    assign_vppo_weights(data, beta_min)
    return data


def with_papo_options(actor_config, **options):
    policy_loss = actor_config.policy_loss
    papo = dataclasses.replace(policy_loss.papo, **options)
    return dataclasses.replace(
        actor_config, policy_loss=dataclasses.replace(policy_loss, papo=papo), global_batch_info={}
    )


def test_gradient_equals_vanilla_on_hand_filtered_and_scaled_advantages(worker, prepared):
    """Filtered tokens get exactly no policy gradient; shaping is a scaling of the advantages."""
    actor_config = worker.loss_fn.keywords["config"]
    no_entropy = with_papo_options(actor_config, vppo_entropy_coef=0.0)
    rows, _ = independent(prepared)
    data = engine_batch(worker, prepared, micro_batch_size=4)
    assert data[VPPO_WEIGHT_KEY].tolist() == pytest.approx([row["w"] for row in rows], rel=1e-5)
    reference = data.copy()
    reference["advantages"] = torch.nested.as_nested_tensor(
        [
            torch.tensor([a * row["w"] if t in row["kept"] else 0.0 for t in range(row["n"])], dtype=torch.float32)
            for row, a in zip(rows, ADVANTAGES, strict=True)
        ],
        layout=torch.jagged,
    )
    vppo_loss, vppo_grads = inprocess.loss_and_grads(worker, data, partial(papo_ppo_loss, config=no_entropy))
    grpo_config = inprocess.vanilla_config(actor_config)
    grpo_loss, grpo_grads = inprocess.loss_and_grads(worker, reference, partial(ppo_loss, config=grpo_config))
    assert vppo_loss == pytest.approx(grpo_loss, rel=1e-5)
    ours, theirs = inprocess.flat_gradient(vppo_grads), inprocess.flat_gradient(grpo_grads)
    assert theirs.abs().max() > 0
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-7 * theirs.abs().max().item())
    # ... and differs from the unfiltered, unshaped gradient (the test can fail)
    _, plain_grads = inprocess.loss_and_grads(worker, data, partial(ppo_loss, config=grpo_config))
    assert not torch.allclose(ours, inprocess.flat_gradient(plain_grads), rtol=1e-2)


def test_identity_settings_are_bit_identical_to_vppo_off(worker, prepared):
    actor_config = worker.loss_fn.keywords["config"]
    off = with_papo_options(actor_config, vppo_token_fraction=None, vppo_beta_min=None, vppo_entropy_coef=0.0)
    identity = with_papo_options(actor_config, vppo_token_fraction=1.0, vppo_beta_min=1.0, vppo_entropy_coef=0.0)
    assert not off.policy_loss.papo.enabled and identity.policy_loss.papo.vppo
    data = engine_batch(worker, prepared, micro_batch_size=4, beta_min=1.0)
    assert data[VPPO_WEIGHT_KEY].tolist() == [1.0] * len(SAMPLES)
    off_out, off_grads = inprocess.forward_backward(worker, data, partial(papo_ppo_loss, config=off))
    id_out, id_grads = inprocess.forward_backward(worker, data, partial(papo_ppo_loss, config=identity))
    assert off_out["loss"] == id_out["loss"]
    assert off_grads.keys() == id_grads.keys() and len(off_grads) > 0
    assert all(torch.equal(off_grads[k], id_grads[k]) for k in off_grads)
    assert "vppo/sum/kept" in id_out["metrics"] and "vppo/sum/kept" not in off_out["metrics"]


def test_shaping_statistics_are_per_global_mini_batch(worker, prepared):
    """Two mini-batches of 4 rows (in order, no shuffle): each gets its own min, max and mu."""
    _, _, vppo = update_metrics(worker, prepared, micro_batch_size=2, mini_batch_size=4)
    rows, whole_beta_max = independent(prepared)

    def beta_max(part):
        scores = [row["S"] for row in part if row["image"]]
        low, high = min(scores), max(scores)
        mu = sum((s - low) / (high - low) for s in scores) / len(scores)
        return BETA_MIN + (1 - BETA_MIN) / mu

    per_mini_batch = [beta_max(rows[:4]), beta_max(rows[4:])]
    # the largest weight of the step (verl reduces a "max" metric over mini-batches with max)
    assert vppo["vppo/weight_max"] == pytest.approx(max(per_mini_batch), rel=1e-5)
    assert abs(vppo["vppo/weight_max"] - whole_beta_max) > 1e-3  # not the whole step's statistics
    assert vppo["vppo/weight_min"] == pytest.approx(BETA_MIN, rel=1e-6)
    assert vppo["vppo/weight_mean"] == pytest.approx(1.0, rel=1e-6)


def test_gradient_is_the_same_for_every_micro_batch_split(worker, prepared):
    """The VPPO loss's gradient through the engine for 1, 2 and 4 micro-batches and dynamic batch size."""
    longest = int(prepared["input_ids"].offsets().diff().max())
    gradients = {}
    for name, micro_batch_size in (("1", 8), ("2", 4), ("4", 2), ("dynamic", 8)):
        data = engine_batch(worker, prepared, micro_batch_size=micro_batch_size)
        if name == "dynamic":
            tu.assign_non_tensor(data, use_dynamic_bsz=True, max_token_len_per_gpu=2 * longest)
        output, grads = inprocess.forward_backward(worker, data)
        calls = len(output["loss"]) if isinstance(output["loss"], list) else 1
        assert name == "dynamic" and calls >= 2 or calls == 8 // micro_batch_size, (name, calls)
        gradients[name] = inprocess.flat_gradient(grads)
    reference = gradients["1"]
    assert reference.abs().max() > 0
    for name, gradient in gradients.items():
        assert torch.allclose(gradient, reference, rtol=1e-5, atol=1e-6 * reference.abs().max().item()), name
