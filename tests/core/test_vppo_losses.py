"""VPPO's token filter under verl's losses whose gradient is not linear in the advantage (docs/compose.md).

* ``dro`` and ``kl_cov`` carry a per-token term that does not read the advantage (DRO's quadratic
  log-ratio penalty, kl_cov's |log-ratio| penalty). A zero advantage alone leaves a dropped token that
  term's gradient (shown on verl's own loss), so the ``papo`` loss also multiplies their per-token loss
  by the filter mask: a dropped token gets exactly no gradient, a kept token DRO's own gradient,
  computed here from its formula, with every response token in the denominator.
* ``geo_mean`` (GMPO) averages the per-token advantages into one per sequence: the filter would scale a
  kept token's gradient by the kept share (measured 0.4 at p = 0.4 here) instead of filtering, so it is
  refused at start-up, naming ``papo.vppo_token_fraction``.
"""

from __future__ import annotations

import dataclasses

import papo_configs
import pytest
import torch
from papo_loss_batches import make_actor_config
from verl.trainer.ppo.core_algos import get_policy_loss_fn

from recipe.papo.config import PapoConfigError
from recipe.papo.objective import PapoCoefficients
from recipe.papo.policy_loss import PapoLossInputs, compute_policy_loss_papo, papo_loss_inputs
from recipe.papo.run_checks import check_papo_run_config

NO_PAPO = PapoCoefficients(0.0, 0.0, 0.0)
BETA = 0.5
FRACTION = 0.4


def config_for(base: str, fraction: float | None = FRACTION):
    config = make_actor_config(kl_prcp_coef=0.0, vppo_token_fraction=fraction, base_loss_mode=base)
    policy_loss = dataclasses.replace(config.policy_loss, dro_beta=BETA, kl_cov_ratio=0.5)
    return dataclasses.replace(config, policy_loss=policy_loss)


def papo_gradient(batch, config) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, d loss / d log_prob)`` of the ``papo`` loss with VPPO on ``batch``; and the filter's kept tokens."""
    log_prob = batch.log_prob.clone().requires_grad_(True)
    inputs = PapoLossInputs(batch.masked_log_prob, batch.has_image, torch.ones(6), NO_PAPO)
    with papo_loss_inputs(inputs):
        loss, _ = compute_policy_loss_papo(
            old_log_prob=batch.old_log_prob,
            log_prob=log_prob,
            advantages=batch.advantages,
            response_mask=batch.response_mask,
            config=config,
        )
    loss.backward()
    return loss.detach(), log_prob.grad


def kept_tokens(batch) -> torch.Tensor:
    from recipe.papo.vppo import apply_vppo

    terms = apply_vppo(
        batch.advantages,
        batch.old_log_prob,
        batch.masked_log_prob,
        batch.response_mask,
        batch.has_image,
        FRACTION,
        None,
    )
    return terms.token_mask


def verl_gradient(batch, base: str, config, advantages: torch.Tensor) -> torch.Tensor:
    log_prob = batch.log_prob.clone().requires_grad_(True)
    loss, _ = get_policy_loss_fn(base)(
        old_log_prob=batch.old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=batch.response_mask,
        config=config,
    )
    loss.backward()
    return log_prob.grad


def test_a_zero_advantage_alone_leaves_dros_penalty_gradient_on_dropped_tokens(batch):
    """Why the mask is needed: verl's DRO on the filtered advantages still moves the dropped tokens."""
    config = config_for("dro")
    keep = kept_tokens(batch)
    dropped = batch.response_mask & ~keep
    grad = verl_gradient(batch, "dro", config, batch.advantages * keep)
    assert dropped.any() and grad[dropped].abs().min() > 0


def test_dro_with_the_filter_gives_dropped_tokens_no_gradient_and_kept_tokens_dros_own(batch):
    config = config_for("dro")
    loss, grad = papo_gradient(batch, config)
    keep = kept_tokens(batch)
    dropped = batch.response_mask & ~keep
    assert torch.all(grad[dropped] == 0)  # exactly zero
    # DRO per token: -(log_prob * A - beta / 2 * (log_prob - old)^2), token-mean over every response token
    n = batch.response_mask.sum()
    expected = -(batch.advantages - BETA * (batch.log_prob - batch.old_log_prob)) / n
    assert torch.allclose(grad[keep], expected[keep], rtol=1e-5, atol=1e-9)
    per_token = -(batch.log_prob * batch.advantages - 0.5 * BETA * (batch.log_prob - batch.old_log_prob) ** 2)
    assert loss.item() == pytest.approx(((per_token * keep).sum() / n).item(), rel=1e-5)


def test_kl_cov_with_the_filter_gives_dropped_tokens_no_gradient(batch):
    config = config_for("kl_cov")
    keep = kept_tokens(batch)
    dropped = batch.response_mask & ~keep
    plain = verl_gradient(batch, "kl_cov", config, batch.advantages * keep)
    assert plain[dropped].abs().max() > 0  # kl_cov's penalty picked some dropped tokens
    _, grad = papo_gradient(batch, config)
    assert torch.all(grad[dropped] == 0) and grad[keep].abs().max() > 0


def test_the_filter_under_geo_mean_scales_the_gradient_by_the_kept_share_instead_of_filtering():
    """One response of 10 tokens, log_prob = old (ratio 1), one advantage: with p = 0.4 every kept token's
    gradient is 0.4 times the unfiltered one, where a filter would leave it unchanged."""
    old = torch.full((1, 10), -1.0)
    config = make_actor_config(kl_prcp_coef=0.0, base_loss_mode="geo_mean")
    grads = []
    for advantages in (torch.ones(1, 10), torch.tensor([[1.0] * 4 + [0.0] * 6])):
        log_prob = old.clone().requires_grad_(True)
        loss, _ = get_policy_loss_fn("geo_mean")(
            old_log_prob=old, log_prob=log_prob, advantages=advantages, response_mask=torch.ones(1, 10), config=config
        )
        loss.backward()
        grads.append(log_prob.grad[0, 0].item())
    assert grads[1] / grads[0] == pytest.approx(FRACTION, rel=1e-6)


def test_geo_mean_with_the_filter_is_refused_naming_the_key_but_shaping_alone_passes():
    with pytest.raises(PapoConfigError, match=r"papo.vppo_token_fraction=0.4 with papo.base_loss_mode='geo_mean'"):
        check_papo_run_config(
            papo_configs.composed("papo.base_loss_mode=geo_mean", "papo.kl_prcp_coef=0", "papo.vppo_token_fraction=0.4")
        )
    check_papo_run_config(
        papo_configs.composed("papo.base_loss_mode=geo_mean", "papo.kl_prcp_coef=0", "papo.vppo_beta_min=0.9")
    )


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        (["papo.base_loss_mode=sapo"], "always aggregated seq-mean-token-mean, VPPO's filter"),
        (["actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm"], "(surrogate and VPPO's filter"),
    ],
)
def test_a_vppo_only_run_gets_the_sapo_and_sum_norm_warnings(caplog, overrides, text):
    vppo_only = ["papo.kl_prcp_coef=0", "papo.vppo_token_fraction=0.4", *overrides]
    with caplog.at_level("WARNING", logger="recipe.papo.run_checks"):
        assert not check_papo_run_config(papo_configs.composed(*vppo_only)).trains
    assert text in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="recipe.papo.run_checks"):  # the base algorithm alone: verl's own
        check_papo_run_config(papo_configs.composed("papo.kl_prcp_coef=0", *overrides))
    assert text not in caplog.text and "seq-mean-token" not in caplog.text
