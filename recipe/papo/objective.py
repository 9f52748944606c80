"""The PAPO terms as pure tensor functions (the PAPO objective of arXiv 2507.06448).

All per-token tensors are padded ``(batch, response_len)``; ``mask`` marks the response tokens that
count (verl's ``response_mask``, restricted to rows with images). Aggregation uses verl's
``agg_loss`` with the global batch info, so a loss does not depend on how a mini-batch is split
into micro-batches or ranks.

    L_papo = - gamma_t  * agg(w_i * KL_prcp)      (Implicit Perception Loss, maximised)
             + eta_ori_t * agg(-log pi_theta(o|I))          (H_ori)
             + eta_aug_t * agg(-log pi(o|I_mask))           (H_aug)

with ``KL_prcp`` per token = ``kl_penalty(log pi_theta, log pi_mask, estimator)`` optionally
clamped to [0, c] and kept only on each sequence's top-p tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from verl.trainer.ppo.core_algos import agg_loss, kl_penalty
from verl.utils import torch_functional as verl_F

from .config import PapoConfig


@dataclass(frozen=True)
class PapoCoefficients:
    """Effective coefficients at one training step (after the schedule and monitor mode).

    The trainer hands them to the worker as one batch-level value
    (:data:`recipe.papo.batch_keys.COEFFICIENTS_KEY`).

    Attributes:
        kl_prcp: gamma_t, weight of the Implicit Perception Loss KL_prcp (maximised).
        entropy_ori: eta_ori_t, weight of H_ori = -mean log pi_theta(o | q, I).
        entropy_aug: eta_aug_t, weight of H_aug = -mean log pi(o | q, I_mask).
    """

    kl_prcp: float
    entropy_ori: float
    entropy_aug: float

    @property
    def any_nonzero(self) -> bool:
        """Some PAPO term enters the loss with a non-zero weight."""
        return self.kl_prcp != 0 or self.entropy_ori != 0 or self.entropy_aug != 0


NO_COEFFICIENTS = PapoCoefficients(0.0, 0.0, 0.0)


def loss_coefficients(config: PapoConfig, coefs: PapoCoefficients) -> PapoCoefficients:
    """The coefficients the PAPO terms enter the loss with: ``coefs``, or all 0 under ``papo.monitor``.

    The one place monitor mode is decided. The trainer's schedule (:func:`coefficients_at_step`) and
    the ``papo`` loss both go through it, so with ``papo.monitor`` the terms are measured for the
    metrics but never trained, whatever coefficients a batch carries.
    """
    return NO_COEFFICIENTS if config.monitor else coefs


def gamma_at_step(config: PapoConfig, step: int, total_steps: int) -> float:
    """gamma_t, a pure function of the global step (so a resumed run gets the same value).

    ``fixed``: ``kl_prcp_coef``. ``annealing``: linear from ``anneal_start`` at step 1 to
    ``anneal_end`` at step ``1 + anneal_ratio * total_steps`` and constant after.
    """
    if config.schedule == "fixed":
        return float(config.kl_prcp_coef)
    horizon = max(config.anneal_ratio * total_steps, 1e-12)
    progress = min(max((step - 1) / horizon, 0.0), 1.0)
    return float(config.anneal_start + (config.anneal_end - config.anneal_start) * progress)


def coefficients_at_step(config: PapoConfig, step: int, total_steps: int) -> PapoCoefficients:
    """gamma_t and the entropy coefficients scaled by the same factor gamma_t / gamma (all 0 under
    ``papo.monitor``, :func:`loss_coefficients`)."""
    gamma_t = gamma_at_step(config, step, total_steps)
    scale = 1.0 if config.schedule == "fixed" else gamma_t / config.kl_prcp_coef
    scheduled = PapoCoefficients(
        kl_prcp=gamma_t,
        entropy_ori=config.entropy_ori_coef * scale,
        entropy_aug=config.entropy_aug_coef * scale,
    )
    return loss_coefficients(config, scheduled)


def perception_kl(log_prob: torch.Tensor, masked_log_prob: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL_prcp estimate of KL(pi_theta(.|I) || pi(.|I_mask)) on the sampled tokens.

    Exactly verl's ``kl_penalty(logprob=log_prob, ref_logprob=masked_log_prob, kl_penalty=estimator)``;
    for ``low_var_kl`` with ``d = masked - log_prob``: ``exp(d) - d - 1``, d clamped to [-20, 20]
    and the result to [-10, 10]. Shapes ``(batch, response_len)``.
    """
    return kl_penalty(logprob=log_prob, ref_logprob=masked_log_prob, kl_penalty=estimator)


def top_p_token_mask(kl: torch.Tensor, mask: torch.Tensor, top_p: float) -> torch.Tensor:
    """Per sequence, keep the tokens whose KL is at or above the (1 - top_p) quantile.

    The quantile is taken over each sequence's valid tokens (linear interpolation), on detached
    values. Rows with no valid token keep nothing. Returns a bool ``(batch, response_len)`` mask.
    """
    values = kl.detach().float().masked_fill(~mask, float("nan"))
    threshold = torch.nanquantile(values, q=1.0 - top_p, dim=-1, keepdim=True)
    return mask & (values >= threshold)


def sample_weights(correct: torch.Tensor, apply_mode: str, incorrect_weight: float) -> torch.Tensor:
    """Per-sample weight on KL_prcp, ``(batch,)`` float.

    ``all``: 1.0 everywhere; ``correct_only``: 1.0 on correct, 0 on incorrect; ``weighted``: 1.0 on
    correct, ``incorrect_weight`` on incorrect.
    """
    correct = correct.to(torch.bool)
    if apply_mode == "all":
        return torch.ones(correct.shape, dtype=torch.float32)
    if apply_mode == "correct_only":
        return correct.to(torch.float32)
    if apply_mode == "weighted":
        return torch.where(correct, 1.0, float(incorrect_weight)).to(torch.float32)
    raise ValueError(f"unknown apply_mode {apply_mode!r}")


# Names of the per-token quantities whose sums over the PAPO tokens a micro-batch reports (see
# :class:`PapoTerms`); each is logged as ``papo/<name>`` = sum over the step's PAPO tokens / their count.
TOKEN_MEAN_METRICS: tuple[str, ...] = ("kl_prcp", "entropy_ori", "entropy_aug", "kl_prcp_clipfrac", "kl_prcp_kept_frac")
TOKEN_COUNT = "tokens"


@dataclass
class PapoTerms:
    """The PAPO loss of one micro-batch and the token sums its metrics are made of.

    Attributes:
        loss: 0-dim tensor, with gradient, added to the base policy loss.
        token_sums: for each name in :data:`TOKEN_MEAN_METRICS`, the sum of that per-token quantity
            over this micro-batch's PAPO tokens (``mask``), and under :data:`TOKEN_COUNT` their
            number. Sums, not means, so that a step's mean is the ratio of summed sums whatever the
            micro-batch split (micro-batches hold different numbers of tokens).
    """

    loss: torch.Tensor
    token_sums: dict[str, float]


def compute_papo_terms(
    log_prob: torch.Tensor,
    masked_log_prob: torch.Tensor,
    mask: torch.Tensor,
    kl_weight: torch.Tensor,
    coefs: PapoCoefficients,
    config: PapoConfig,
    loss_agg_mode: str,
    global_batch_info: dict,
) -> PapoTerms:
    """The PAPO addition to the policy loss.

    Args:
        log_prob: ``(batch, response_len)`` log pi_theta(o_t | q, I), with gradient.
        masked_log_prob: ``(batch, response_len)`` log pi(o_t | q, I_mask); detached in
            ``precompute`` mode, with gradient in ``recompute`` mode.
        mask: ``(batch, response_len)`` bool, response tokens of rows that have images.
        kl_weight: ``(batch,)`` per-sample weight on KL_prcp (see :func:`sample_weights`).
        coefs: effective coefficients for this step.
        config: PAPO options (estimator, clamp, top-p).
        loss_agg_mode: verl's ``actor.loss_agg_mode``.
        global_batch_info: verl's ``config.global_batch_info`` (dp_size, batch_num_tokens, ...).

    Returns:
        :class:`PapoTerms`; ``loss`` is added to the base policy loss. Token sums over ``mask``:
        ``kl_prcp`` (the estimator after the optional clamp, before top-p and sample weights),
        ``entropy_ori``, ``entropy_aug`` (``-log pi`` of the sampled tokens), ``kl_prcp_clipfrac``
        (tokens whose KL was clamped) and ``kl_prcp_kept_frac`` (tokens kept by top-p).
    """
    mask = mask.to(torch.bool)
    # Under the engine's bf16 autocast the model's log-probs are bf16; sum them in float32 (a bf16
    # sum of a mini-batch's tokens is off by up to ~0.4%). The cast is differentiable.
    log_prob, masked_log_prob = log_prob.float(), masked_log_prob.float()
    if not mask.any():
        # No image rows here: contribute an exact zero that still belongs to the autograd graph.
        zero_sums = dict.fromkeys((*TOKEN_MEAN_METRICS, TOKEN_COUNT), 0.0)
        return PapoTerms(loss=(log_prob.sum() + masked_log_prob.sum()) * 0.0, token_sums=zero_sums)
    kl = perception_kl(log_prob, masked_log_prob, config.kl_estimator)
    clipped = torch.zeros_like(mask)
    if config.kl_clamp_max is not None:
        clipped = mask & ((kl < 0) | (kl > config.kl_clamp_max))
        kl = torch.clamp(kl, min=0.0, max=config.kl_clamp_max)
    keep = mask
    if config.token_top_p is not None:
        keep = top_p_token_mask(kl, mask, config.token_top_p)
    weighted_kl = kl * keep.to(kl.dtype) * kl_weight.to(kl.dtype).unsqueeze(-1)

    def aggregate(loss_mat: torch.Tensor) -> torch.Tensor:
        return agg_loss(loss_mat=loss_mat, loss_mask=mask, loss_agg_mode=loss_agg_mode, **global_batch_info)

    kl_term = aggregate(weighted_kl)
    entropy_ori = aggregate(-log_prob)
    entropy_aug = aggregate(-masked_log_prob)
    loss = -coefs.kl_prcp * kl_term + coefs.entropy_ori * entropy_ori + coefs.entropy_aug * entropy_aug

    token_sums = {
        "kl_prcp": verl_F.masked_sum(kl.detach().float(), mask).item(),
        "entropy_ori": verl_F.masked_sum(-log_prob.detach().float(), mask).item(),
        "entropy_aug": verl_F.masked_sum(-masked_log_prob.detach().float(), mask).item(),
        "kl_prcp_clipfrac": float(clipped.sum().item()),
        "kl_prcp_kept_frac": float(keep.sum().item()),
        TOKEN_COUNT: float(mask.sum().item()),
    }
    return PapoTerms(loss=loss, token_sums=token_sums)
