"""Each PAPO term against an independent computation written here, and its gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from papo_loss_batches import make_batch, token_means

from recipe.papo.config import PapoConfig
from recipe.papo.objective import (
    PapoCoefficients,
    coefficients_at_step,
    compute_papo_terms,
    gamma_at_step,
    loss_coefficients,
    perception_kl,
    sample_weights,
    top_p_token_mask,
)


def reference_kl(log_prob: torch.Tensor, masked: torch.Tensor, estimator: str) -> torch.Tensor:
    """The four estimators written out from their definitions (not via verl)."""
    lp, m = log_prob.double(), masked.double()
    if estimator == "kl":
        return lp - m
    if estimator == "abs":
        return (lp - m).abs()
    if estimator == "mse":
        return 0.5 * (lp - m) ** 2
    d = (m - lp).clamp(-20, 20)
    return (d.exp() - d - 1).clamp(-10, 10)


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum()


def run_terms(batch, coefs, loss_agg_mode="token-mean", global_batch_info=None, **options):
    return compute_papo_terms(
        log_prob=batch.log_prob,
        masked_log_prob=batch.masked_log_prob,
        mask=batch.response_mask & batch.has_image.unsqueeze(-1),
        kl_weight=torch.ones(batch.log_prob.shape[0]),
        coefs=coefs,
        config=PapoConfig(**options),
        loss_agg_mode=loss_agg_mode,
        global_batch_info=global_batch_info or {},
    )


@pytest.mark.parametrize("estimator", ["low_var_kl", "kl", "abs", "mse"])
def test_perception_kl_matches_definition(batch, estimator):
    got = perception_kl(batch.log_prob, batch.masked_log_prob, estimator)
    torch.testing.assert_close(got.double(), reference_kl(batch.log_prob, batch.masked_log_prob, estimator))


def test_low_var_kl_clamps_extreme_gaps_like_the_spec():
    log_prob = torch.tensor([[-0.1, -30.0, -0.1]])
    # d = -39.9 -> clamped to -20 -> e^-20 + 19 -> clamped to 10; d = 29.9 -> 20 -> e^20 - 21 -> 10; d = 0 -> 0
    masked = torch.tensor([[-40.0, -0.1, -0.1]])
    got = perception_kl(log_prob, masked, "low_var_kl")
    expected = torch.tensor([[10.0, 10.0, 0.0]])
    torch.testing.assert_close(got, expected)


def test_terms_equal_independent_token_mean_computation(batch):
    gamma, eta_ori, eta_aug = 0.02, 0.05, 0.03
    terms = run_terms(batch, PapoCoefficients(gamma, eta_ori, eta_aug))
    mask = batch.response_mask.double()
    kl = reference_kl(batch.log_prob, batch.masked_log_prob, "low_var_kl")
    h_ori = token_mean(-batch.log_prob.double(), mask)
    h_aug = token_mean(-batch.masked_log_prob.double(), mask)
    expected = -gamma * token_mean(kl, mask) + eta_ori * h_ori + eta_aug * h_aug
    assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    means = token_means(terms)
    assert means["kl_prcp"] == pytest.approx(token_mean(kl, mask).item(), rel=1e-5)
    assert means["kl_prcp"] > 0
    assert means["entropy_ori"] == pytest.approx(h_ori.item(), rel=1e-5)
    assert means["entropy_aug"] == pytest.approx(h_aug.item(), rel=1e-5)
    # token sums: the means times the number of PAPO tokens
    assert terms.token_sums["tokens"] == mask.sum().item()
    assert terms.token_sums["kl_prcp"] == pytest.approx((kl * mask).sum().item(), rel=1e-5)


def test_kl_gradient_wrt_log_prob_is_the_analytic_derivative(batch):
    """d/dlp of -gamma * mean(exp(m - lp) - (m - lp) - 1) = -gamma * (1 - exp(m - lp)) / N."""
    gamma = 0.04
    log_prob = batch.log_prob.clone().requires_grad_(True)
    batch.log_prob = log_prob
    terms = run_terms(batch, PapoCoefficients(gamma, 0.0, 0.0))
    terms.loss.backward()
    mask = batch.response_mask
    n_tokens = mask.sum()
    analytic = -gamma * (1 - torch.exp(batch.masked_log_prob - log_prob.detach())) / n_tokens * mask
    torch.testing.assert_close(log_prob.grad, analytic)


def test_precomputed_masked_branch_gets_no_gradient_and_h_aug_adds_none(batch):
    """Precompute mode: masked log-probs are constants, so H_aug's gradient is exactly zero."""
    base = make_batch()
    grads = []
    for eta_aug in (0.0, 0.5):
        log_prob = base.log_prob.clone().requires_grad_(True)
        base_copy = make_batch()
        base_copy.log_prob = log_prob
        terms = run_terms(base_copy, PapoCoefficients(0.02, 0.05, eta_aug))
        terms.loss.backward()
        grads.append(log_prob.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_recompute_mode_gives_both_branches_gradient(batch):
    gamma, eta_ori, eta_aug = 0.03, 0.05, 0.07
    log_prob = batch.log_prob.clone().requires_grad_(True)
    masked = batch.masked_log_prob.clone().requires_grad_(True)
    batch.log_prob, batch.masked_log_prob = log_prob, masked
    run_terms(batch, PapoCoefficients(gamma, eta_ori, eta_aug)).loss.backward()
    mask = batch.response_mask
    n = mask.sum()
    ratio = torch.exp(masked.detach() - log_prob.detach())
    expected_lp = (-gamma * (1 - ratio) - eta_ori) / n * mask
    expected_masked = (-gamma * (ratio - 1) - eta_aug) / n * mask
    torch.testing.assert_close(log_prob.grad, expected_lp)
    torch.testing.assert_close(masked.grad, expected_masked)
    assert masked.grad[mask].abs().sum() > 0


def test_padding_and_imageless_rows_never_contribute(batch):
    batch.has_image[1] = False
    reference = run_terms(batch, PapoCoefficients(0.02, 0.05, 0.05))
    garbage = make_batch(seed=7)
    pad = ~batch.response_mask
    pad[1] = True  # row 1 has no image: all its tokens are outside the PAPO mask
    log_prob = torch.where(pad, garbage.log_prob * 5, batch.log_prob).requires_grad_(True)
    masked = torch.where(pad, garbage.masked_log_prob - 9, batch.masked_log_prob)
    batch.log_prob, batch.masked_log_prob = log_prob, masked
    terms = run_terms(batch, PapoCoefficients(0.02, 0.05, 0.05))
    assert terms.loss.item() == pytest.approx(reference.loss.item(), rel=1e-6)
    terms.loss.backward()
    assert log_prob.grad[pad].abs().max() == 0


def test_no_image_rows_give_exact_zero_with_graph():
    batch = make_batch()
    batch.has_image[:] = False
    log_prob = batch.log_prob.clone().requires_grad_(True)
    batch.log_prob = log_prob
    terms = run_terms(batch, PapoCoefficients(0.02, 0.05, 0.05))
    assert terms.loss.item() == 0.0 and token_means(terms) == {}
    assert set(terms.token_sums.values()) == {0.0}  # every key present, so every micro-batch reports alike
    terms.loss.backward()
    assert log_prob.grad.abs().max() == 0


def test_clamp_limits_per_token_kl_and_reports_clipped_fraction(batch):
    c = 0.05
    terms = run_terms(batch, PapoCoefficients(1.0, 0.0, 0.0), kl_clamp_max=c)
    mask = batch.response_mask
    kl = reference_kl(batch.log_prob, batch.masked_log_prob, "low_var_kl")
    clamped = kl.clamp(0, c)
    assert terms.loss.item() == pytest.approx(-token_mean(clamped, mask).item(), rel=1e-5)
    expected_frac = ((kl > c) & mask).sum().item() / mask.sum().item()
    assert 0 < expected_frac < 1
    assert token_means(terms)["kl_prcp_clipfrac"] == pytest.approx(expected_frac)


def test_top_p_mask_keeps_tokens_at_or_above_each_sequence_quantile(batch):
    p = 0.2
    kl = reference_kl(batch.log_prob, batch.masked_log_prob, "low_var_kl").float()
    keep = top_p_token_mask(kl, batch.response_mask, p)
    for row in range(kl.shape[0]):
        valid = kl[row][batch.response_mask[row]].numpy()
        threshold = np.quantile(valid, 1 - p)
        expected = batch.response_mask[row] & (kl[row] >= torch.tensor(threshold, dtype=kl.dtype))
        assert torch.equal(keep[row], expected)
        assert keep[row].sum() >= 1
    terms = run_terms(batch, PapoCoefficients(1.0, 0.0, 0.0), token_top_p=p)
    expected_loss = -(kl.double() * keep).sum() / batch.response_mask.sum()
    assert terms.loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    kept_frac = keep.sum().item() / batch.response_mask.sum().item()
    assert token_means(terms)["kl_prcp_kept_frac"] == pytest.approx(kept_frac)


def test_sample_weights_per_apply_mode():
    correct = torch.tensor([True, False, True, False])
    assert sample_weights(correct, "all", 0.1).tolist() == [1, 1, 1, 1]
    assert sample_weights(correct, "correct_only", 0.1).tolist() == [1, 0, 1, 0]
    assert sample_weights(correct, "weighted", 0.1).tolist() == pytest.approx([1, 0.1, 1, 0.1])


def test_sample_weights_scale_each_rows_kl(batch):
    weights = torch.tensor([1.0, 0.1, 0.0, 1.0, 0.5, 0.25])
    terms = compute_papo_terms(
        batch.log_prob,
        batch.masked_log_prob,
        batch.response_mask,
        weights,
        PapoCoefficients(1.0, 0.0, 0.0),
        PapoConfig(),
        "token-mean",
        {},
    )
    kl = reference_kl(batch.log_prob, batch.masked_log_prob, "low_var_kl")
    expected = -(kl * weights.double().unsqueeze(-1) * batch.response_mask).sum() / batch.response_mask.sum()
    assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fixed_schedule_is_constant():
    config = PapoConfig(kl_prcp_coef=0.02, entropy_ori_coef=0.05, entropy_aug_coef=0.03)
    for step in (1, 50, 1000):
        assert coefficients_at_step(config, step, 200) == PapoCoefficients(0.02, 0.05, 0.03)


def test_monitor_mode_zeroes_the_coefficients_of_the_schedule_and_of_any_batch():
    """papo.monitor is decided in loss_coefficients, which the schedule and the loss both apply."""
    scheduled = PapoCoefficients(0.02, 0.05, 0.03)
    monitor = PapoConfig(kl_prcp_coef=0.02, entropy_ori_coef=0.05, entropy_aug_coef=0.03, monitor=True)
    assert coefficients_at_step(monitor, 7, 200) == PapoCoefficients(0.0, 0.0, 0.0)
    assert loss_coefficients(monitor, scheduled) == PapoCoefficients(0.0, 0.0, 0.0)
    assert not loss_coefficients(monitor, scheduled).any_nonzero
    assert loss_coefficients(PapoConfig(), scheduled) is scheduled


def test_annealing_is_linear_in_the_global_step_and_scales_entropy():
    config = PapoConfig(
        kl_prcp_coef=0.02,
        entropy_ori_coef=0.05,
        entropy_aug_coef=0.03,
        schedule="annealing",
        anneal_start=0.04,
        anneal_end=0.0,
        anneal_ratio=0.5,
    )
    total = 200  # annealing over 100 steps: gamma_t = 0.04 * (1 - (t - 1) / 100)
    assert gamma_at_step(config, 1, total) == pytest.approx(0.04)
    assert gamma_at_step(config, 51, total) == pytest.approx(0.02)
    assert gamma_at_step(config, 101, total) == pytest.approx(0.0)
    assert gamma_at_step(config, 150, total) == pytest.approx(0.0)
    coefs = coefficients_at_step(config, 26, total)  # gamma_t = 0.03 -> scale 1.5
    assert coefs.kl_prcp == pytest.approx(0.03)
    assert coefs.entropy_ori == pytest.approx(0.075)
    assert coefs.entropy_aug == pytest.approx(0.045)


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_terms_do_not_depend_on_micro_batch_split(loss_agg_mode):
    """Global normalisation (verl's global_batch_info): micro-batch losses and grads add up to the batch's."""
    full = make_batch(batch=8, seed=3)
    mask = full.response_mask
    info = {"dp_size": 1, "batch_num_tokens": int(mask.sum()), "global_batch_size": 8}
    coefs = PapoCoefficients(0.02, 0.05, 0.05)

    def loss_and_grad(rows):
        log_prob = full.log_prob[rows].clone().requires_grad_(True)
        terms = compute_papo_terms(
            log_prob,
            full.masked_log_prob[rows],
            mask[rows],
            torch.ones(len(rows)),
            coefs,
            PapoConfig(),
            loss_agg_mode,
            info,
        )
        terms.loss.backward()
        return terms.loss.item(), log_prob.grad

    whole_loss, whole_grad = loss_and_grad(list(range(8)))
    parts = [loss_and_grad([0, 1, 2]), loss_and_grad([3, 4, 5, 6, 7])]
    assert sum(p[0] for p in parts) == pytest.approx(whole_loss, rel=1e-5)
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), whole_grad)
