"""VPPO (arXiv 2510.09285) pure functions, and the ``papo`` loss with the ``papo.vppo_*`` options.

Expected values are hand-computed or computed here independently (plain Python loops, float64); the
loss is checked against a from-scratch clipped surrogate. The worker-level tests (gradients through
verl's engine, micro-batch splits) are in ``tests/worker/test_vppo_worker.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from papo_loss_batches import make_actor_config, make_batch
from verl.trainer.ppo.core_algos import get_policy_loss_fn

from recipe.papo.config import PapoConfig, PapoConfigError
from recipe.papo.objective import PapoCoefficients, compute_papo_terms
from recipe.papo.policy_loss import (
    MissingMaskedLogProbsError,
    PapoLossInputs,
    compute_policy_loss_papo,
    papo_loss_inputs,
    vppo_step_metrics,
)
from recipe.papo.vppo import (
    apply_vppo,
    kept_token_counts,
    sequence_scores,
    shaping_weights,
    top_fraction_token_mask,
    visual_dependency,
)

NO_PAPO = PapoCoefficients(0.0, 0.0, 0.0)

# --- visual dependency -------------------------------------------------------------------------


def test_visual_dependency_matches_the_formula_with_both_clamps():
    old = torch.tensor([[-1.0, -2.0, -0.5, -30.0, -0.1]])
    masked = torch.tensor([[-1.0, -0.5, -2.0, -0.1, -30.0]])
    expected = []
    for o, m in zip(old[0].tolist(), masked[0].tolist(), strict=True):
        d = min(max(m - o, -20.0), 20.0)
        expected.append(min(max(math.exp(d) - d - 1.0, 0.0), 10.0))
    got = visual_dependency(old, masked)[0].tolist()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got[0] == 0.0  # the image does not matter to this token
    assert got[3] == 10.0 and got[4] == 10.0  # exp(20) - 21 and 19, both clamped to 10


# --- token filter ------------------------------------------------------------------------------


def test_filter_keeps_the_ceil_p_len_largest_scores_per_row():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.7, 0.2], [0.5, 0.4, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    keep = top_fraction_token_mask(scores, mask, 0.4)
    # row 0: ceil(0.4 * 5) = 2 -> 0.9 and 0.7; row 1: ceil(0.4 * 2) = 1 -> 0.5
    assert keep.tolist() == [[False, True, False, True, False], [True, False, False, False, False]]


def test_filter_never_keeps_padding_even_with_larger_scores_there():
    scores = torch.tensor([[0.1, 0.2, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    keep = top_fraction_token_mask(scores, mask, 0.5)
    assert keep.tolist() == [[False, True, False, False]]


def test_filter_breaks_ties_by_position_and_keeps_exactly_ceil_p_len():
    scores = torch.tensor([[0.3, 0.5, 0.5, 0.5, 0.1, 0.5]])
    mask = torch.ones_like(scores, dtype=torch.bool)
    keep = top_fraction_token_mask(scores, mask, 0.5)  # ceil(3) = 3 of the four tied 0.5s: the first three
    assert keep.tolist() == [[False, True, True, True, False, False]]
    zeros = top_fraction_token_mask(torch.zeros(1, 7), torch.ones(1, 7, dtype=torch.bool), 0.4)
    assert zeros.tolist() == [[True, True, True, False, False, False, False]]  # all tied: the first ceil(2.8)


def test_short_and_empty_responses():
    scores = torch.tensor([[0.2, 0.0, 0.0], [0.1, 0.3, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    keep = top_fraction_token_mask(scores, mask, 0.4)
    # |y| = 1 and 2 (< 1/p = 2.5): one token each; an empty row keeps nothing
    assert keep.tolist() == [[True, False, False], [False, True, False], [False, False, False]]


@pytest.mark.parametrize(
    ("length", "fraction", "count"),
    [(10, 0.7, 7), (5, 0.4, 2), (6, 0.4, 3), (3, 0.4, 2), (1, 0.4, 1), (0, 0.4, 0), (100, 1.0, 100), (7, 0.1, 1)],
)
def test_kept_count_is_the_ceiling_of_the_exact_product(length, fraction, count):
    assert kept_token_counts(torch.tensor([length]), fraction).item() == count


def test_filter_count_matches_an_independent_loop_on_random_rows():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(20, 31, generator=g).round(decimals=1)  # many ties
    lengths = torch.randint(0, 32, (20,), generator=g)
    mask = torch.arange(31) < lengths.unsqueeze(1)
    keep = top_fraction_token_mask(scores, mask, 0.4)
    for row in range(20):
        n = int(lengths[row])
        k = math.ceil(round(0.4 * n, 9))
        order = sorted(range(n), key=lambda t, r=row: (-float(scores[r, t]), t))
        expected = set(order[:k])
        assert set(torch.nonzero(keep[row]).flatten().tolist()) == expected


# --- advantage shaping -------------------------------------------------------------------------


def test_shaping_weights_hand_computed():
    # S = 0.1, 0.3, 0.5 -> n = 0, 0.5, 1; mu = 0.5; beta_max = 0.9 + 0.1 / 0.5 = 1.1
    weights, stats = shaping_weights(torch.tensor([0.1, 0.3, 0.5]), torch.ones(3, dtype=torch.bool), 0.9)
    assert weights.tolist() == pytest.approx([0.9, 1.0, 1.1], abs=1e-6)
    assert (stats.score_min, stats.score_max, stats.rows) == pytest.approx((0.1, 0.5, 3))
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)


def test_shaping_skewed_scores_keep_mean_one():
    # S = 0, 0, 0, 1 -> n = 0, 0, 0, 1; mu = 0.25; beta_max = 0.9 + 0.1 / 0.25 = 1.3
    weights, _ = shaping_weights(torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.ones(4, dtype=torch.bool), 0.9)
    assert weights.tolist() == pytest.approx([0.9, 0.9, 0.9, 1.3], abs=1e-6)


def test_rows_that_do_not_take_part_get_weight_one_and_do_not_move_min_max():
    rows = torch.tensor([True, False, True, True])
    weights, stats = shaping_weights(torch.tensor([0.1, 9.0, 0.3, 0.5]), rows, 0.5)
    # over rows 0, 2, 3: n = 0, 0.5, 1; mu 0.5; beta_max = 0.5 + 0.5 / 0.5 = 1.5
    assert weights.tolist() == pytest.approx([0.5, 1.0, 1.0, 1.5], abs=1e-6)
    assert stats.score_max == pytest.approx(0.5)


def test_no_shaping_when_the_range_is_at_most_1e_6():
    weights, stats = shaping_weights(torch.tensor([0.2, 0.2 + 5e-7, 0.2]), torch.ones(3, dtype=torch.bool), 0.9)
    assert not stats.shapes and weights.tolist() == [1.0, 1.0, 1.0]
    weights, stats = shaping_weights(torch.tensor([0.2]), torch.ones(1, dtype=torch.bool), 0.9)
    assert not stats.shapes and weights.tolist() == [1.0]


def test_sequence_scores_are_means_over_the_response_tokens():
    scores = torch.tensor([[1.0, 3.0, 7.0], [2.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert sequence_scores(scores, mask).tolist() == [2.0, 2.0, 0.0]


# --- apply_vppo --------------------------------------------------------------------------------


def test_apply_vppo_zeroes_dropped_tokens_and_scales_rows_but_leaves_text_rows_alone():
    old = torch.zeros(3, 4)
    masked = torch.tensor([[-0.1, -2.0, -0.5, 0.0], [-3.0, -0.2, 0.0, 0.0], [-5.0, -5.0, -5.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    has_image = torch.tensor([True, True, False])
    advantages = torch.tensor([1.0, -2.0, 3.0]).unsqueeze(-1) * mask
    weights = torch.tensor([0.9, 1.2, 1.0])
    terms = apply_vppo(advantages, old, masked, mask, has_image, 0.5, weights)
    # row 0: ceil(1.5) = 2 tokens, s largest at t=1 (d=-2) then t=2 (d=-0.5); row 1: 1 token, t=0
    expected = torch.tensor([[0.0, 0.9, 0.9, 0.0], [-2.4, 0.0, 0.0, 0.0], [3.0, 3.0, 3.0, 0.0]])
    assert torch.allclose(terms.advantages, expected, atol=1e-6)
    assert terms.sums["tokens"] == 5 and terms.sums["kept"] == 3 and terms.sums["rows"] == 3
    s = lambda d: math.exp(d) - d - 1  # noqa: E731
    assert terms.sums["score_kept"] == pytest.approx(s(-2.0) + s(-0.5) + s(-3.0), rel=1e-6)
    assert terms.sums["score_dropped"] == pytest.approx(s(-0.1) + s(-0.2), rel=1e-6)
    assert terms.sums["weight"] == pytest.approx(3.1)
    assert (terms.weight_min, terms.weight_max) == pytest.approx((0.9, 1.2))


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        (dict(vppo_token_fraction=0.0), "vppo_token_fraction"),
        (dict(vppo_token_fraction=1.5), "vppo_token_fraction"),
        (dict(vppo_token_fraction="0.4"), "vppo_token_fraction"),
        (dict(vppo_beta_min=-0.1), "vppo_beta_min"),
        (dict(vppo_beta_min=1.1), "vppo_beta_min"),
        (dict(vppo_entropy_coef=-0.06), "vppo_entropy_coef"),
        (dict(vppo_token_fraction=0.4, masked_logprob_mode="recompute"), "masked_logprob_mode"),
        (dict(vppo_beta_min=0.9, monitor=True), "monitor"),
    ],
)
def test_invalid_vppo_options_fail_naming_the_key(options, key):
    with pytest.raises(PapoConfigError, match=f"papo.{key}="):
        PapoConfig(**options)


def test_vppo_alone_switches_the_masked_pass_on_without_papo_terms():
    config = PapoConfig(kl_prcp_coef=0.0, vppo_token_fraction=0.4)
    assert config.vppo and config.enabled and not config.trains
    assert not PapoConfig(kl_prcp_coef=0.0).enabled
    assert PapoConfig(vppo_token_fraction=1.0).vppo and PapoConfig(vppo_entropy_coef=0.06).vppo


# --- the papo loss -----------------------------------------------------------------------------


def surrogate_per_token(old, log_prob, advantages, low=0.2, high=0.3, dual=3.0):
    """From scratch: PPO's clipped surrogate with dual clip, per token (verl's vanilla, written out)."""
    ratio = torch.exp((log_prob - old).clamp(-20, 20))
    clipped = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - low, 1 + high))
    return torch.where(advantages < 0, torch.minimum(clipped, -advantages * dual), clipped)


def independent_keep(old, masked, mask, fraction):
    keep = torch.zeros_like(mask)
    for row in range(mask.shape[0]):
        n = int(mask[row].sum())
        s = [min(max(math.exp(min(max(m - o, -20), 20)) - min(max(m - o, -20), 20) - 1, 0), 10) for o, m in
             zip(old[row, :n].tolist(), masked[row, :n].tolist(), strict=True)]  # fmt: skip
        for t in sorted(range(n), key=lambda t, s=s: (-s[t], t))[: math.ceil(round(fraction * n, 9))]:
            keep[row, t] = True
    return keep


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_loss_is_the_surrogate_over_kept_tokens_with_every_token_in_the_denominator(batch, loss_agg_mode):
    config = make_actor_config(loss_agg_mode, kl_prcp_coef=0.0, vppo_token_fraction=0.4, vppo_beta_min=0.9)
    weights = torch.tensor([0.9, 1.3, 1.0, 1.1, 0.95, 0.75])
    inputs = PapoLossInputs(batch.masked_log_prob, batch.has_image, torch.ones(6), NO_PAPO, vppo_weight=weights)
    log_prob = batch.log_prob.clone().requires_grad_(True)
    with papo_loss_inputs(inputs):
        loss, _ = compute_policy_loss_papo(
            old_log_prob=batch.old_log_prob,
            log_prob=log_prob,
            advantages=batch.advantages,
            response_mask=batch.response_mask,
            loss_agg_mode=loss_agg_mode,
            config=config,
        )
    loss.backward()
    keep = independent_keep(batch.old_log_prob, batch.masked_log_prob, batch.response_mask, 0.4)
    reference_lp = batch.log_prob.clone().requires_grad_(True)
    per_token = surrogate_per_token(batch.old_log_prob, reference_lp, batch.advantages * weights.unsqueeze(-1))
    per_token = per_token * keep
    mask = batch.response_mask.float()
    if loss_agg_mode == "token-mean":  # every response token of the batch counts in the denominator
        reference = (per_token * mask).sum() / mask.sum()
    elif loss_agg_mode == "seq-mean-token-mean":  # each response's mean over all its |y| tokens
        reference = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
    else:  # each response's sum over its kept tokens, mean over responses
        reference = (per_token * mask).sum(-1).mean()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(log_prob.grad, reference_lp.grad, rtol=1e-5, atol=1e-8)
    dropped = batch.response_mask & ~keep
    assert dropped.any() and torch.all(log_prob.grad[dropped] == 0)  # exactly zero, not just small
    assert (log_prob.grad[keep] != 0).sum() > keep.sum() // 2  # kept tokens learn (bar clipped ones)


def test_entropy_penalty_is_c_times_mean_negative_log_prob_over_all_response_tokens(batch):
    config = make_actor_config(kl_prcp_coef=0.0, vppo_entropy_coef=0.06)
    has_image = torch.tensor([True, True, False, True, True, True])  # a text row counts too
    inputs = PapoLossInputs(batch.masked_log_prob, has_image, torch.ones(6), NO_PAPO)
    with papo_loss_inputs(inputs):
        loss, _ = compute_policy_loss_papo(
            old_log_prob=batch.old_log_prob,
            log_prob=batch.log_prob,
            advantages=batch.advantages,
            response_mask=batch.response_mask,
            config=config,
        )
    mask = batch.response_mask.float()
    surrogate = (surrogate_per_token(batch.old_log_prob, batch.log_prob, batch.advantages) * mask).sum() / mask.sum()
    penalty = 0.06 * (-batch.log_prob * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx((surrogate + penalty).item(), rel=1e-5)
    assert inputs.record.vppo_entropy_loss == pytest.approx(penalty.item(), rel=1e-5)
    assert inputs.record.base_loss == pytest.approx(surrogate.item(), rel=1e-5)


def test_with_vppo_off_loss_and_gradient_are_bit_identical_to_base_plus_papo_terms(batch):
    """Today's loss (before VPPO): the base surrogate + the PAPO terms, bit for bit."""
    config = make_actor_config(kl_prcp_coef=0.02, entropy_ori_coef=0.05)
    assert not config.policy_loss.papo.vppo
    coefs = PapoCoefficients(0.02, 0.05, 0.0)
    grads, losses = [], []
    for ours in (True, False):
        log_prob = batch.log_prob.clone().requires_grad_(True)
        if ours:
            with papo_loss_inputs(PapoLossInputs(batch.masked_log_prob, batch.has_image, torch.ones(6), coefs)):
                loss, _ = compute_policy_loss_papo(
                    old_log_prob=batch.old_log_prob,
                    log_prob=log_prob,
                    advantages=batch.advantages,
                    response_mask=batch.response_mask,
                    config=config,
                )
        else:
            base, _ = get_policy_loss_fn("vanilla")(
                old_log_prob=batch.old_log_prob,
                log_prob=log_prob,
                advantages=batch.advantages,
                response_mask=batch.response_mask,
                config=config,
            )
            terms = compute_papo_terms(
                log_prob, batch.masked_log_prob, batch.response_mask, torch.ones(6), coefs,
                config.policy_loss.papo, "token-mean", {},
            )  # fmt: skip
            loss = base + terms.loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(log_prob.grad)
    assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])
    assert grads[0].abs().max() > 0


def test_shaping_without_weights_in_the_micro_batch_fails(batch):
    from papo_loss_batches import make_actor_config as make
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    from recipe.papo.batch_keys import COEFFICIENTS_KEY, IMAGE_ROW_KEY, KL_WEIGHT_KEY, MASKED_LOG_PROBS_KEY
    from recipe.papo.policy_loss import read_papo_inputs

    config = make(vppo_beta_min=0.9)
    rows = batch.response_mask.shape[0]
    nested = lambda x: torch.nested.as_nested_tensor(list(x), layout=torch.jagged)  # noqa: E731
    data = TensorDict(
        {
            MASKED_LOG_PROBS_KEY: nested(batch.masked_log_prob),
            IMAGE_ROW_KEY: batch.has_image,
            KL_WEIGHT_KEY: torch.ones(rows),
        },
        batch_size=rows,
    )
    tu.assign_non_tensor(data, **{COEFFICIENTS_KEY: NO_PAPO})
    with pytest.raises(MissingMaskedLogProbsError, match="vppo_advantage_weight"):
        read_papo_inputs(data, batch.response_mask.shape[1], config.policy_loss.papo)


def test_step_metrics_are_ratios_of_summed_sums():
    actor = {
        "actor/vppo/sum/tokens": 10.0,
        "actor/vppo/sum/kept": 4.0,
        "actor/vppo/sum/score_kept": 2.0,
        "actor/vppo/sum/score_dropped": 0.6,
        "actor/vppo/sum/rows": 4.0,
        "actor/vppo/sum/weight": 4.0,
        "actor/vppo/weight_min": 0.9,
        "actor/vppo/weight_max": 1.3,
        "actor/vppo/entropy_loss": 0.1,
        "actor/pg_loss": 1.0,
    }
    out = vppo_step_metrics(actor)
    assert out == pytest.approx(
        {
            "vppo/kept_frac": 0.4,
            "vppo/score_mean": 0.26,
            "vppo/score_kept_mean": 0.5,
            "vppo/score_dropped_mean": 0.1,
            "vppo/weight_mean": 1.0,
            "vppo/weight_min": 0.9,
            "vppo/weight_max": 1.3,
            "vppo/entropy_loss": 0.1,
        }
    )
    assert actor == {"actor/pg_loss": 1.0}


@pytest.fixture
def batch():
    return make_batch()


def test_vppo_and_papo_together_are_the_surrogate_on_vppo_advantages_plus_the_papo_terms(batch):
    """Both at once: VPPO changes only the surrogate's advantages (and adds its penalty); the PAPO terms
    are the same as without VPPO, over every image-row token."""
    config = make_actor_config(kl_prcp_coef=0.02, entropy_ori_coef=0.05, vppo_token_fraction=0.4, vppo_beta_min=0.9)
    coefs = PapoCoefficients(0.02, 0.05, 0.0)
    weights = torch.tensor([0.9, 1.3, 1.0, 1.1, 0.95, 0.75])
    inputs = PapoLossInputs(batch.masked_log_prob, batch.has_image, torch.ones(6), coefs, vppo_weight=weights)
    with papo_loss_inputs(inputs):
        loss, _ = compute_policy_loss_papo(
            old_log_prob=batch.old_log_prob,
            log_prob=batch.log_prob,
            advantages=batch.advantages,
            response_mask=batch.response_mask,
            config=config,
        )
    keep = independent_keep(batch.old_log_prob, batch.masked_log_prob, batch.response_mask, 0.4)
    mask = batch.response_mask.float()
    advantages = batch.advantages * weights.unsqueeze(-1) * keep
    surrogate = (surrogate_per_token(batch.old_log_prob, batch.log_prob, advantages) * mask).sum() / mask.sum()
    terms = compute_papo_terms(
        batch.log_prob, batch.masked_log_prob, batch.response_mask, torch.ones(6), coefs,
        config.policy_loss.papo, "token-mean", {},
    )  # fmt: skip
    assert terms.loss.abs() > 1e-4
    assert loss.item() == pytest.approx(surrogate.item() + terms.loss.item(), rel=1e-5)
    assert inputs.record.papo_loss == pytest.approx(terms.loss.item(), rel=1e-6)
    assert inputs.record.base_loss == pytest.approx(surrogate.item(), rel=1e-5)
    assert inputs.record.token_sums["tokens"] == batch.response_mask.sum().item()  # PAPO counts every token
