"""The ``papo`` policy loss in verl's registry, and the outer loss the PAPO worker installs.

verl's outer ``ppo_loss`` (``verl/workers/utils/losses.py``, 0.9.1) calls the registered policy loss
with the standard tensors only (old/new log-probs, advantages, response mask). PAPO also needs the
masked-image log-probs and per-sample weights, which live in the micro-batch. The PAPO worker
therefore installs :func:`papo_ppo_loss`, which reads them from the micro-batch, hands them to the
registered loss through :func:`papo_loss_inputs` (a context variable scoped to one call) and then
runs verl's own ``ppo_loss`` unchanged, so the entropy bonus, reference-KL loss, global-batch
normalisation and metrics stay exactly verl's. The batch fields it reads are named in
:mod:`recipe.papo.batch_keys`.

The registered ``papo`` loss = verl's registered ``papo.base_loss_mode`` loss (default ``vanilla``,
so PAPO composes with e.g. ``gspo``) + the PAPO terms (none with ``papo.monitor``: the terms are
computed for the metrics only, :func:`recipe.papo.objective.loss_coefficients`). With PAPO enabled
and no masked log-probs it raises :class:`MissingMaskedLogProbsError`: it never silently trains as GRPO.

Metrics. verl sums the micro-batch losses of a mini-batch into ``actor/pg_loss`` (each is its share
of the mini-batch loss, ``verl.utils.metric.AggregationType.SUM``) but averages a registered
loss's own metrics over micro-batches. So :func:`papo_ppo_loss` reports ``papo/loss`` (the PAPO
terms' part of the loss) and ``papo/base_loss`` (the surrogate's part) with ``actor/pg_loss``'s own
aggregation, so that ``papo/loss + papo/base_loss == actor/pg_loss`` for any micro-batch split; and
the other ``papo/*`` metrics as token sums and counts, turned into means over the step's PAPO tokens
by :func:`papo_step_metrics` after verl's reduction. With VPPO on (``papo.vppo_*``, docs/vppo.md) the
surrogate runs on VPPO's filtered and shaped advantages, VPPO's entropy penalty is added and logged as
``vppo/entropy_loss`` (then ``papo/loss + papo/base_loss + vppo/entropy_loss == actor/pg_loss``), and
the other ``vppo/*`` metrics are sums turned into ratios by :func:`vppo_step_metrics` in the same way.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, register_policy_loss
from verl.utils import tensordict_utils as tu
from verl.utils.metric import Metric
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import no_padding_2_padding

from . import vppo
from .batch_keys import (
    COEFFICIENTS_KEY,
    IMAGE_ROW_KEY,
    KL_WEIGHT_KEY,
    MASKED_LOG_PROBS_KEY,
    STEP_KEY,
    VPPO_NORM_KEY,
    VPPO_WEIGHT_KEY,
)
from .config import PapoConfig
from .objective import (
    TOKEN_COUNT,
    TOKEN_MEAN_METRICS,
    PapoCoefficients,
    compute_papo_terms,
    loss_coefficients,
)

METRIC_PREFIX = "papo/"
LOSS_METRIC = METRIC_PREFIX + "loss"
BASE_LOSS_METRIC = METRIC_PREFIX + "base_loss"
# Per-micro-batch partial metrics, replaced by token means in :func:`papo_step_metrics`.
TOKEN_SUM_PREFIX = METRIC_PREFIX + "token_sum/"
# verl names the metrics returned by the actor update ``actor/<name>`` (``PPOTrainer._update_actor``).
ACTOR_PREFIX = "actor/"
VPPO_PREFIX = "vppo/"
# VPPO's entropy penalty's part of the loss, aggregated like actor/pg_loss.
VPPO_ENTROPY_LOSS_METRIC = VPPO_PREFIX + "entropy_loss"
VPPO_SUM_PREFIX = VPPO_PREFIX + "sum/"
VPPO_WEIGHT_MIN_METRIC = VPPO_PREFIX + "weight_min"
VPPO_WEIGHT_MAX_METRIC = VPPO_PREFIX + "weight_max"
# verl losses with a per-token term that does not read the advantage: DRO's quadratic log-ratio penalty,
# kl_cov's |log-ratio| penalty on its top-covariance tokens. A zero advantage would leave VPPO's dropped
# tokens that term's gradient, so with the filter on their per-token loss is also multiplied by the filter
# mask, through the per-token weights both apply (``rollout_is_weights``): no gradient at all on a dropped
# token, and the aggregation still counts it, as in the published code (docs/vppo.md).
ADVANTAGE_FREE_TERM_LOSSES: tuple[str, ...] = ("dro", "kl_cov")


class MissingMaskedLogProbsError(RuntimeError):
    """PAPO is enabled but the policy loss received no masked-image log-probs."""


@dataclass
class PapoLossInputs:
    """What the ``papo`` policy loss needs beyond verl's standard tensors.

    Attributes:
        masked_log_prob: ``(batch, response_len)`` log pi(o_t | q, I_mask), padded like ``log_prob``.
        has_image: ``(batch,)`` bool; rows without images get no PAPO terms.
        kl_weight: ``(batch,)`` float per-sample weight on KL_prcp.
        coefs: effective coefficients at this step, as the batch carries them (the loss applies
            :func:`recipe.papo.objective.loss_coefficients` to them).
        vppo_weight: ``(batch,)`` float VPPO advantage weights w_i (``papo.vppo_beta_min``), else ``None``.
        record: written by the ``papo`` loss during the call: what :func:`papo_ppo_loss` logs.
    """

    masked_log_prob: torch.Tensor
    has_image: torch.Tensor
    kl_weight: torch.Tensor
    coefs: PapoCoefficients
    vppo_weight: torch.Tensor | None = None
    record: PapoLossRecord | None = None


@dataclass(frozen=True)
class PapoLossRecord:
    """What one call of the ``papo`` loss contributed, for the metrics.

    Attributes:
        papo_loss: the PAPO terms' part of the returned loss (0.0 with ``papo.monitor`` or zero
            coefficients), a share of the mini-batch loss like the loss itself.
        base_loss: the base surrogate's part of the returned loss (on VPPO's filtered and shaped
            advantages when VPPO is on).
        token_sums: :attr:`recipe.papo.objective.PapoTerms.token_sums` of this micro-batch.
        vppo: VPPO's filter and shaping on this micro-batch (``None`` with VPPO off).
        vppo_entropy_loss: VPPO's entropy penalty's part of the returned loss (0.0 when off).
    """

    papo_loss: float
    base_loss: float
    token_sums: dict[str, float]
    vppo: vppo.VppoTerms | None = None
    vppo_entropy_loss: float = 0.0


_CURRENT_INPUTS: contextvars.ContextVar[PapoLossInputs | None] = contextvars.ContextVar(
    "papo_loss_inputs", default=None
)


@contextmanager
def papo_loss_inputs(inputs: PapoLossInputs) -> Iterator[None]:
    """Make ``inputs`` visible to the registered ``papo`` loss for the duration of one loss call."""
    token = _CURRENT_INPUTS.set(inputs)
    try:
        yield
    finally:
        _CURRENT_INPUTS.reset(token)


def _papo_config_of(config: Any) -> PapoConfig:
    papo = getattr(config.policy_loss, "papo", None)
    if not isinstance(papo, PapoConfig):
        raise TypeError(
            "policy_loss.loss_mode=papo needs actor_rollout_ref.actor.policy_loss to be a "
            "recipe.papo.config.PapoPolicyLossConfig with a `papo` block; compose your config from "
            "configs/papo_trainer.yaml (python -m recipe.papo.main_papo)."
        )
    return papo


@register_policy_loss("papo")
def compute_policy_loss_papo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Base clipped surrogate (verl's ``papo.base_loss_mode`` loss) plus the PAPO terms, with VPPO's
    token filter and advantage shaping applied to the surrogate's advantages and VPPO's entropy
    penalty added when the ``papo.vppo_*`` options are on (docs/vppo.md).

    Shapes are verl's: ``(batch, response_len)`` padded tensors. The PAPO inputs are the ones set
    by :func:`papo_loss_inputs` around the call.
    """
    papo = _papo_config_of(config)
    inputs = _CURRENT_INPUTS.get()
    if inputs is None and papo.enabled:
        raise MissingMaskedLogProbsError(
            "PAPO is enabled (papo.kl_prcp_coef / entropy coefficients > 0, or a papo.vppo_* option) but the policy "
            "loss got no masked-image log-probs. Train with `python -m recipe.papo.main_papo` (PAPO trainer and "
            "worker), or set all papo coefficients to 0 for plain GRPO/DAPO."
        )
    vppo_terms = None
    pg_advantages = advantages  # with VPPO off: the very tensor verl passed (bit-identical loss)
    if inputs is not None and papo.vppo:
        vppo_terms = vppo.apply_vppo(
            advantages=advantages,
            old_log_prob=old_log_prob,
            masked_log_prob=inputs.masked_log_prob,
            response_mask=response_mask,
            has_image=inputs.has_image,
            token_fraction=papo.vppo_token_fraction,
            weights=inputs.vppo_weight,
        )
        pg_advantages = vppo_terms.advantages
        if papo.vppo_token_fraction is not None and papo.base_loss_mode in ADVANTAGE_FREE_TERM_LOSSES:
            keep = vppo_terms.token_mask.to(log_prob.dtype)
            rollout_is_weights = keep if rollout_is_weights is None else rollout_is_weights * keep
    base_loss_fn = get_policy_loss_fn(papo.base_loss_mode)
    pg_loss, pg_metrics = base_loss_fn(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=pg_advantages,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights,
    )
    if inputs is None:
        return pg_loss, pg_metrics
    # Monitor mode and zero coefficients: the terms are computed for the metrics only, on detached
    # inputs, and the returned loss is the base loss tensor itself (bit-equal loss and gradient).
    coefs = loss_coefficients(papo, inputs.coefs)
    contributes = coefs.any_nonzero
    mask = response_mask.to(torch.bool) & inputs.has_image.to(torch.bool).unsqueeze(-1)
    terms = compute_papo_terms(
        log_prob=log_prob if contributes else log_prob.detach(),
        masked_log_prob=inputs.masked_log_prob if contributes else inputs.masked_log_prob.detach(),
        mask=mask,
        kl_weight=inputs.kl_weight,
        coefs=coefs,
        config=papo,
        loss_agg_mode=loss_agg_mode,
        global_batch_info=config.global_batch_info,
    )
    loss = pg_loss + terms.loss if contributes else pg_loss
    entropy_loss = 0.0
    if papo.vppo_entropy_coef > 0:
        # VPPO's entropy penalty: + c * mean_t(-log pi_theta(o_t)) over every response token, aggregated
        # like the surrogate (token-mean over the global mini-batch for verl's default loss_agg_mode).
        penalty = papo.vppo_entropy_coef * agg_loss(
            loss_mat=-log_prob, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **config.global_batch_info
        )
        entropy_loss = penalty.detach().item()
        loss = loss + penalty
    inputs.record = PapoLossRecord(
        papo_loss=terms.loss.detach().item() if contributes else 0.0,
        base_loss=pg_loss.detach().item(),
        token_sums=terms.token_sums,
        vppo=vppo_terms,
        vppo_entropy_loss=entropy_loss,
    )
    return loss, pg_metrics


def _pad_to_width(tensor: torch.Tensor, width: int) -> torch.Tensor:
    if tensor.shape[-1] >= width:
        return tensor[..., :width]
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[-1]))


def read_papo_inputs(
    data: TensorDict,
    response_width: int,
    papo: PapoConfig,
    masked_forward: Callable[[TensorDict], torch.Tensor] | None = None,
) -> PapoLossInputs:
    """Collect :class:`PapoLossInputs` from one micro-batch.

    Args:
        data: the micro-batch TensorDict verl passes to the loss (nested tensors).
        response_width: padded response length of this micro-batch (``response_len`` above).
        papo: the run's PAPO options.
        masked_forward: in ``recompute`` mode, a function returning the full-sequence nested
            masked log-probs for this micro-batch; ``None`` reads the precomputed
            ``papo_masked_log_probs`` field. It runs with gradient only when the terms train
            (:func:`recipe.papo.objective.loss_coefficients` non-zero): otherwise nothing of it
            reaches the loss.
    """
    required = [COEFFICIENTS_KEY, KL_WEIGHT_KEY, IMAGE_ROW_KEY]
    required.append(STEP_KEY if masked_forward is not None else MASKED_LOG_PROBS_KEY)
    missing = [key for key in required if key not in data.keys()]
    if missing:
        raise MissingMaskedLogProbsError(
            f"PAPO is enabled but the micro-batch lacks {', '.join(missing)}: the PAPO trainer writes these each "
            "step before the actor update. Train with `python -m recipe.papo.main_papo` (trainer.v1.trainer_mode=papo)."
        )
    coefs = tu.get(data, COEFFICIENTS_KEY)
    if not isinstance(coefs, PapoCoefficients):
        raise TypeError(f"{COEFFICIENTS_KEY} must be a PapoCoefficients, got {type(coefs).__name__}")
    if masked_forward is not None:
        masked_grad = loss_coefficients(papo, coefs).any_nonzero
        with torch.set_grad_enabled(masked_grad and torch.is_grad_enabled()):
            masked = no_padding_2_padding(masked_forward(data), data)
    else:
        masked = data[MASKED_LOG_PROBS_KEY].to_padded_tensor(0.0)
    vppo_weight = None
    if papo.vppo_beta_min is not None:
        published = papo.vppo_shaping_stats == "micro_batch"
        key = VPPO_NORM_KEY if published else VPPO_WEIGHT_KEY
        if key not in data.keys():  # noqa: SIM118  (TensorDict has no `in`)
            raise MissingMaskedLogProbsError(
                f"papo.vppo_beta_min is set but the micro-batch lacks {key}: the PAPO worker writes it "
                "into each update mini-batch (PapoActorRolloutRefWorker.init_papo)."
            )
        if published:  # the published statistics: mu over this micro-batch
            vppo_weight = vppo.micro_batch_weights(data[key], papo.vppo_beta_min)
        else:
            vppo_weight = data[key].to(torch.float32)
    return PapoLossInputs(
        masked_log_prob=_pad_to_width(masked.to(torch.float32), response_width),
        has_image=data[IMAGE_ROW_KEY].to(torch.bool),
        kl_weight=data[KL_WEIGHT_KEY].to(torch.float32),
        coefs=coefs,
        vppo_weight=vppo_weight,
    )


def papo_ppo_loss(
    config: Any,
    model_output: dict,
    data: TensorDict,
    dp_group=None,
    masked_forward: Callable[[TensorDict], torch.Tensor] | None = None,
):
    """verl's ``ppo_loss`` with the PAPO inputs of this micro-batch made visible to the ``papo`` loss.

    Install with ``functools.partial(papo_ppo_loss, config=actor_config, masked_forward=...)``.
    Returns ``(loss, metrics)`` like ``ppo_loss``, plus ``papo/loss`` and ``papo/base_loss`` aggregated
    like ``actor/pg_loss`` and the token sums ``papo/token_sum/*`` (see the module docstring).
    """
    if config.policy_loss.loss_mode != "papo" or not _papo_config_of(config).enabled:
        return ppo_loss(config, model_output, data, dp_group)
    # ppo_loss pads old_log_probs / advantages the same way, so the widths agree.
    response_width = data["response_mask"].to_padded_tensor(0).shape[-1]
    inputs = read_papo_inputs(data, response_width, _papo_config_of(config), masked_forward)
    with papo_loss_inputs(inputs):
        loss, metrics = ppo_loss(config, model_output, data, dp_group)
    assert inputs.record is not None, "the papo policy loss did not run inside ppo_loss"
    aggregation = metrics["actor/pg_loss"].aggregation
    metrics[LOSS_METRIC] = Metric(aggregation, inputs.record.papo_loss)
    metrics[BASE_LOSS_METRIC] = Metric(aggregation, inputs.record.base_loss)
    for name, value in inputs.record.token_sums.items():
        metrics[TOKEN_SUM_PREFIX + name] = Metric(aggregation, value)
    if inputs.record.vppo is not None:
        terms = inputs.record.vppo
        metrics[VPPO_ENTROPY_LOSS_METRIC] = Metric(aggregation, inputs.record.vppo_entropy_loss)
        for name, value in terms.sums.items():
            metrics[VPPO_SUM_PREFIX + name] = Metric(aggregation, value)
        metrics[VPPO_WEIGHT_MIN_METRIC] = Metric("min", terms.weight_min)
        metrics[VPPO_WEIGHT_MAX_METRIC] = Metric("max", terms.weight_max)
    return loss, metrics


def papo_step_metrics(actor_metrics: dict[str, Any]) -> dict[str, float]:
    """Remove the PAPO entries from verl's reduced actor metrics; return the step's ``papo/*`` metrics.

    Args:
        actor_metrics: the actor update's metrics after verl's reduction (``reduce_metrics``),
            named ``actor/<name>`` as ``PPOTrainer._update_actor`` logs them. Modified in place.

    Returns:
        ``papo/loss`` and ``papo/base_loss`` as verl reduced them (so their sum is ``actor/pg_loss``),
        and for each of :data:`recipe.papo.objective.TOKEN_MEAN_METRICS` its mean over the step's
        PAPO tokens: summed token sums / summed token count. verl reduces every micro-batch entry
        the same way (mean over data-parallel ranks, sum over micro-batches, mean over
        mini-batches), so the ratio is independent of the micro-batch split. Token means are
        omitted when the step has no PAPO token (no image row).
    """
    papo = {
        name[len(ACTOR_PREFIX) :]: float(actor_metrics.pop(name))
        for name in [key for key in actor_metrics if key.startswith(ACTOR_PREFIX + METRIC_PREFIX)]
    }
    sums = {
        name[len(TOKEN_SUM_PREFIX) :]: papo.pop(name) for name in [k for k in papo if k.startswith(TOKEN_SUM_PREFIX)]
    }
    count = sums.get(TOKEN_COUNT, 0.0)
    if count > 0:
        papo.update({METRIC_PREFIX + name: sums[name] / count for name in TOKEN_MEAN_METRICS})
    return papo


def vppo_step_metrics(actor_metrics: dict[str, Any]) -> dict[str, float]:
    """Remove the VPPO entries from verl's reduced actor metrics; return the step's ``vppo/*`` metrics.

    Args:
        actor_metrics: as for :func:`papo_step_metrics`; modified in place.

    Returns:
        The ratios of :func:`recipe.papo.vppo.step_metrics` over the step's summed micro-batch sums
        (so independent of the micro-batch split, as the ``papo/*`` token means), ``vppo/entropy_loss``
        as verl reduced it (``papo/loss + papo/base_loss + vppo/entropy_loss == actor/pg_loss``), and
        ``vppo/weight_min`` / ``vppo/weight_max``: the smallest / largest advantage weight of the step
        (min / max over micro-batches and ranks per mini-batch; verl's ``reduce_metrics`` then takes
        the min / max over mini-batches of a key naming ``min`` / ``max``).
    """
    entries = {
        name[len(ACTOR_PREFIX) :]: float(actor_metrics.pop(name))
        for name in [key for key in actor_metrics if key.startswith(ACTOR_PREFIX + VPPO_PREFIX)]
    }
    sums = {
        name[len(VPPO_SUM_PREFIX) :]: entries.pop(name)
        for name in [k for k in entries if k.startswith(VPPO_SUM_PREFIX)]
    }
    entries.update({VPPO_PREFIX + name: value for name, value in vppo.step_metrics(sums).items()})
    return entries
