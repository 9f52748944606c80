"""The registered ``papo`` policy loss and the outer ``papo_ppo_loss`` on verl-format micro-batches."""

from __future__ import annotations

import pytest
import torch
from papo_loss_batches import make_actor_config
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType
from verl.workers.utils.losses import ppo_loss

from recipe.papo.batch_keys import COEFFICIENTS_KEY, IMAGE_ROW_KEY, KL_WEIGHT_KEY, MASKED_LOG_PROBS_KEY
from recipe.papo.config import PapoConfig
from recipe.papo.objective import PapoCoefficients, compute_papo_terms
from recipe.papo.policy_loss import (
    MissingMaskedLogProbsError,
    PapoLossInputs,
    compute_policy_loss_papo,
    papo_loss_inputs,
    papo_ppo_loss,
)


def call_loss(fn, batch, config, log_prob=None):
    return fn(
        old_log_prob=batch.old_log_prob,
        log_prob=batch.log_prob if log_prob is None else log_prob,
        advantages=batch.advantages,
        response_mask=batch.response_mask,
        loss_agg_mode=config.loss_agg_mode,
        config=config,
    )


def inputs_for(batch, coefs):
    return PapoLossInputs(batch.masked_log_prob, batch.has_image, torch.ones(batch.log_prob.shape[0]), coefs)


def test_papo_is_registered_in_verls_registry():
    assert get_policy_loss_fn("papo") is compute_policy_loss_papo


def test_loss_is_base_surrogate_plus_papo_terms(batch):
    config = make_actor_config()
    coefs = PapoCoefficients(0.02, 0.05, 0.03)
    inputs = inputs_for(batch, coefs)
    with papo_loss_inputs(inputs):
        loss, metrics = call_loss(compute_policy_loss_papo, batch, config)
    base, base_metrics = call_loss(get_policy_loss_fn("vanilla"), batch, config)
    terms = compute_papo_terms(
        batch.log_prob,
        batch.masked_log_prob,
        batch.response_mask,
        torch.ones(6),
        coefs,
        config.policy_loss.papo,
        "token-mean",
        {},
    )
    assert loss.item() == pytest.approx(base.item() + terms.loss.item(), rel=1e-6)
    assert metrics.keys() == base_metrics.keys()  # the PAPO metrics are added by papo_ppo_loss
    assert inputs.record.base_loss == pytest.approx(base.item(), rel=1e-6)
    assert inputs.record.papo_loss == pytest.approx(terms.loss.item(), rel=1e-6)
    assert inputs.record.token_sums == pytest.approx(terms.token_sums)
    assert inputs.record.token_sums["kl_prcp"] > 0


def test_zero_coefficients_give_exactly_the_base_loss_and_gradient(batch):
    config = make_actor_config(kl_prcp_coef=0.0)
    grads = []
    for fn, use_inputs in ((get_policy_loss_fn("vanilla"), False), (compute_policy_loss_papo, True)):
        log_prob = batch.log_prob.clone().requires_grad_(True)
        if use_inputs:
            with papo_loss_inputs(inputs_for(batch, PapoCoefficients(0.0, 0.0, 0.0))):
                loss, _ = call_loss(fn, batch, config, log_prob)
        else:
            loss, _ = call_loss(fn, batch, config, log_prob)
        loss.backward()
        grads.append((loss.detach(), log_prob.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("mode", ["monitor", "zero_coefficients"])
def test_monitor_and_zero_coefficients_give_the_base_loss_and_gradient_bit_for_bit_with_metrics(mode, batch):
    """papo.monitor (issue 12.1): the terms are computed for the metrics, the loss stays the base."""
    monitor = mode == "monitor"
    config = make_actor_config(monitor=monitor, entropy_ori_coef=0.05, entropy_aug_coef=0.03)
    coefs = PapoCoefficients(0.5, 0.05, 0.03) if monitor else PapoCoefficients(0.0, 0.0, 0.0)
    log_prob_base = batch.log_prob.clone().requires_grad_(True)
    base, _ = call_loss(get_policy_loss_fn("vanilla"), batch, config, log_prob_base)
    base.backward()
    log_prob = batch.log_prob.clone().requires_grad_(True)
    inputs = inputs_for(batch, coefs)
    with papo_loss_inputs(inputs):
        loss, _ = call_loss(compute_policy_loss_papo, batch, config, log_prob)
    loss.backward()
    assert torch.equal(loss.detach(), base.detach())
    assert torch.equal(log_prob.grad, log_prob_base.grad)
    assert inputs.record.papo_loss == 0.0
    assert inputs.record.token_sums["kl_prcp"] > 0 and inputs.record.token_sums["tokens"] == batch.response_mask.sum()


def test_positive_gamma_changes_the_gradient(batch):
    """The PAPO terms reach backward (a known defect elsewhere: terms added after the backprop loss)."""
    config = make_actor_config()
    log_prob_base = batch.log_prob.clone().requires_grad_(True)
    call_loss(get_policy_loss_fn("vanilla"), batch, config, log_prob_base)[0].backward()
    log_prob = batch.log_prob.clone().requires_grad_(True)
    with papo_loss_inputs(inputs_for(batch, PapoCoefficients(0.02, 0.0, 0.0))):
        call_loss(compute_policy_loss_papo, batch, config, log_prob)[0].backward()
    difference = (log_prob.grad - log_prob_base.grad).abs()
    assert difference[batch.response_mask].max() > 1e-6
    assert difference[~batch.response_mask].max() == 0


def test_enabled_without_masked_log_probs_raises(batch):
    with pytest.raises(MissingMaskedLogProbsError, match="never|masked-image log-probs"):
        call_loss(compute_policy_loss_papo, batch, make_actor_config())


def test_disabled_without_masked_log_probs_is_the_base_loss(batch):
    config = make_actor_config(kl_prcp_coef=0.0)
    loss, _ = call_loss(compute_policy_loss_papo, batch, config)
    base, _ = call_loss(get_policy_loss_fn("vanilla"), batch, config)
    assert torch.equal(loss, base)


def test_composes_with_another_base_loss(batch):
    config = make_actor_config(base_loss_mode="gspo")
    coefs = PapoCoefficients(0.02, 0.0, 0.0)
    with papo_loss_inputs(inputs_for(batch, coefs)):
        loss, _ = call_loss(compute_policy_loss_papo, batch, config)
    base, _ = call_loss(get_policy_loss_fn("gspo"), batch, config)
    vanilla, _ = call_loss(get_policy_loss_fn("vanilla"), batch, config)
    terms = compute_papo_terms(
        batch.log_prob,
        batch.masked_log_prob,
        batch.response_mask,
        torch.ones(6),
        coefs,
        config.policy_loss.papo,
        "token-mean",
        {},
    )
    assert loss.item() == pytest.approx(base.item() + terms.loss.item(), rel=1e-6)
    assert base.item() != pytest.approx(vanilla.item())


def micro_batch_td(batch, coefs, prompt_len_seed=0):
    """A micro-batch in verl 0.9's no-padding layout plus the PAPO fields, and nested model log-probs."""
    g = torch.Generator().manual_seed(prompt_len_seed)
    rows = batch.log_prob.shape[0]
    prompt_lens = torch.randint(1, 5, (rows,), generator=g).tolist()
    resp_lens = batch.response_mask.sum(-1).tolist()
    nested = lambda xs: torch.nested.as_nested_tensor(xs, layout=torch.jagged)  # noqa: E731
    full_seq = []
    for i in range(rows):
        # response log-prob j sits at sequence position prompt_len - 1 + j (verl's left shift).
        full_seq.append(
            torch.cat(
                [
                    torch.randn(prompt_lens[i] - 1, generator=g),
                    batch.log_prob[i, : resp_lens[i]],
                    torch.randn(1, generator=g),
                ]
            )
        )
    td = TensorDict(
        {
            "prompts": nested([torch.ones(p, dtype=torch.long) for p in prompt_lens]),
            "responses": nested([torch.ones(r, dtype=torch.long) for r in resp_lens]),
            "response_mask": nested([torch.ones(r, dtype=torch.long) for r in resp_lens]),
            "old_log_probs": nested([batch.old_log_prob[i, :r] for i, r in enumerate(resp_lens)]),
            "advantages": nested([batch.advantages[i, :r] for i, r in enumerate(resp_lens)]),
            MASKED_LOG_PROBS_KEY: nested([batch.masked_log_prob[i, :r] for i, r in enumerate(resp_lens)]),
            KL_WEIGHT_KEY: torch.ones(rows),
            IMAGE_ROW_KEY: batch.has_image.clone(),
        },
        batch_size=[rows],
    )
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=int(sum(resp_lens)), global_batch_size=rows)
    tu.assign_non_tensor(td, **{COEFFICIENTS_KEY: coefs})
    return td, nested(full_seq)


def test_outer_loss_reads_the_micro_batch_and_adds_papo_to_verls_ppo_loss(batch):
    batch.has_image[2] = False
    coefs = PapoCoefficients(0.02, 0.05, 0.03)
    config = make_actor_config()
    td, log_probs = micro_batch_td(batch, coefs)
    loss, metrics = papo_ppo_loss(config, {"log_probs": log_probs}, td)

    vanilla_config = make_actor_config()
    object.__setattr__(vanilla_config.policy_loss, "loss_mode", "vanilla")
    base_td, _ = micro_batch_td(batch, coefs)
    base, _ = ppo_loss(vanilla_config, {"log_probs": log_probs}, base_td)
    terms = compute_papo_terms(
        batch.log_prob,
        batch.masked_log_prob,
        batch.response_mask & batch.has_image.unsqueeze(-1),
        torch.ones(6),
        coefs,
        PapoConfig(),
        "token-mean",
        {"dp_size": 1, "batch_num_tokens": int(batch.response_mask.sum()), "global_batch_size": 6},
    )
    assert loss.item() == pytest.approx(base.item() + terms.loss.item(), rel=1e-6)
    # the two loss parts are aggregated like actor/pg_loss (a sum over micro-batches here) and add up to it
    pg_loss = metrics["actor/pg_loss"]
    assert pg_loss.aggregation == AggregationType.SUM
    for key in ("papo/loss", "papo/base_loss", "papo/token_sum/kl_prcp", "papo/token_sum/tokens"):
        assert metrics[key].aggregation == pg_loss.aggregation
    assert metrics["papo/loss"].aggregate() + metrics["papo/base_loss"].aggregate() == pytest.approx(
        pg_loss.aggregate(), rel=1e-6
    )
    assert metrics["papo/token_sum/kl_prcp"].aggregate() == pytest.approx(terms.token_sums["kl_prcp"], rel=1e-6)
    assert metrics["papo/token_sum/tokens"].aggregate() == (batch.response_mask & batch.has_image.unsqueeze(-1)).sum()


def test_outer_loss_missing_trainer_fields_is_a_clear_error(batch):
    for key in (MASKED_LOG_PROBS_KEY, COEFFICIENTS_KEY):
        td, log_probs = micro_batch_td(batch, PapoCoefficients(0.02, 0.0, 0.0))
        del td[key]
        with pytest.raises(MissingMaskedLogProbsError, match=key):
            papo_ppo_loss(make_actor_config(), {"log_probs": log_probs}, td)
