"""VPPO's token-level visual dependency as pure tensor functions (arXiv 2510.09285).

VPPO ("Spotlight on Token Perception for Multimodal Reinforcement Learning", Visually-Perceptive
Policy Optimization) reuses the two log-probs PAPO's masked pass already gives for every response
token: the pre-update policy's log pi(o_t | q, I) (verl's ``old_log_probs``) and log pi(o_t | q,
I_mask) (the precomputed masked log-probs). From them, as in the paper's method section:

* visual dependency ``s_t = clamp(exp(d) - d - 1, 0, 10)`` with ``d = clamp(masked - old, -20, 20)``
  (:func:`visual_dependency`);
* token filter: per response, only the ``ceil(p * |y|)`` tokens of largest ``s_t`` enter the
  policy-gradient term (:func:`top_fraction_token_mask`);
* advantage shaping: per response ``S_i = mean_t s_t``, min-max normalised over the global
  mini-batch to ``n_i`` and mapped to ``w_i = beta_min + n_i (beta_max - beta_min)`` with
  ``beta_max = beta_min + (1 - beta_min) / mean n_i``, so that the mean weight is 1; then
  ``A_i <- w_i A_i`` (:func:`shaping_weights`). With ``papo.vppo_shaping_stats=micro_batch`` the
  statistics are the published code's instead: min and max over one rank's share of the mini-batch
  (:func:`rank_normalised_scores`), the mean over each update micro-batch
  (:func:`micro_batch_weights`).

All inputs are no-gradient tensors padded to ``(batch, response_len)``; ``mask`` marks the response
tokens that count. The functions here are row-local except :func:`shaping_weights`, whose batch
statistics are reduced over a process group when one is given, so that they cover the global
mini-batch whatever the micro-batch split and the number of data-parallel ranks, and the two
functions of the published statistics, which cover what they are given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# d = masked - old is clamped to [-DIFF_CLAMP, DIFF_CLAMP] and s_t to [0, SCORE_CLAMP] (the published code's values).
DIFF_CLAMP = 20.0
SCORE_CLAMP = 10.0
# No shaping when the normalisation range max S - min S is at most this (the published code's threshold).
RANGE_EPSILON = 1e-6
# ceil(p * |y|) is taken of the exact product: float rounding below this is ignored (0.7 * 10 -> 7, not 8).
CEIL_TOLERANCE = 1e-9
# The published code's beta_max = beta_min + (1 - beta_min) / (mu + 1e-8); kept with the published statistics,
# where a micro-batch's mu can be 0 (all its rows at the rank's min S: every weight is then beta_min).
PUBLISHED_MU_EPSILON = 1e-8


def visual_dependency(old_log_prob: torch.Tensor, masked_log_prob: torch.Tensor) -> torch.Tensor:
    """Per-token visual dependency ``s_t`` (the paper's token perception measure), ``(batch, response_len)`` float64.

    ``d = clamp(log pi(o_t | I_mask) - log pi(o_t | I), -20, 20)``, ``s_t = clamp(exp(d) - d - 1, 0, 10)``:
    the low-variance estimate of KL(pi(.|I) || pi(.|I_mask)) at the sampled token. Computed in float64
    as ``expm1(d) - d``: typical ``s_t`` are ~1e-4 (``d`` ~ 1e-2), where ``exp(d) - d - 1`` in float32
    (the published code) cancels to a few significant digits (docs/vppo.md, deviations). Values at
    padding positions are meaningless; callers mask them.
    """
    d = (masked_log_prob.double() - old_log_prob.double()).clamp(-DIFF_CLAMP, DIFF_CLAMP)
    return (torch.expm1(d) - d).clamp(0.0, SCORE_CLAMP)


def kept_token_counts(lengths: torch.Tensor, fraction: float) -> torch.Tensor:
    """``ceil(fraction * |y|)`` per row, ``(batch,)`` int64, from ``(batch,)`` response lengths.

    Computed in float64 with a tolerance of :data:`CEIL_TOLERANCE`, so the count is the ceiling of the
    exact product. A row with at least one token keeps at least one; an empty row keeps none.
    """
    product = lengths.to(torch.float64) * float(fraction)
    return torch.ceil(product - CEIL_TOLERANCE).clamp(min=0).to(torch.int64)


def top_fraction_token_mask(scores: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """VPPO's Token-level Gradient Filtering (TGF): per row, the ``ceil(fraction * |y|)`` tokens of largest score.

    Args:
        scores: ``(batch, response_len)`` per-token ``s_t`` (:func:`visual_dependency`).
        mask: ``(batch, response_len)`` bool, the row's tokens that count (``|y|`` = its row sum).
        fraction: p in (0, 1].

    Returns:
        ``(batch, response_len)`` bool, a subset of ``mask`` with exactly ``ceil(p * |y|)`` tokens per
        row. Ties are broken by position (the earlier token first), so the result is deterministic.
    """
    mask = mask.to(torch.bool)
    ranked = scores.detach().double().masked_fill(~mask, -math.inf)
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    keep = rank < kept_token_counts(mask.sum(-1), fraction).unsqueeze(-1)
    return keep & mask


def sequence_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``S_i = mean_t s_t`` over each row's ``mask`` tokens, ``(batch,)`` float64 (0 for an empty row)."""
    mask = mask.to(torch.float64)
    return (scores.double() * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


@dataclass(frozen=True)
class ShapingStats:
    """The batch statistics of the advantage shaping, over the rows that take part.

    Attributes:
        score_min: min S_i.
        score_max: max S_i.
        norm_sum: sum of n_i (the normalised S_i, clamped to [0, 1]).
        rows: number of rows that take part (``norm_sum / rows`` is mu).
    """

    score_min: float
    score_max: float
    norm_sum: float
    rows: float

    @property
    def shapes(self) -> bool:
        """Shaping applies: some row takes part and max S - min S > :data:`RANGE_EPSILON`."""
        return self.rows > 0 and self.score_max - self.score_min > RANGE_EPSILON


def _all_reduce(value: torch.Tensor, op: torch.distributed.ReduceOp, group: object | None) -> torch.Tensor:
    if group is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value, op=op, group=group)
    return value


def shaping_weights(
    scores: torch.Tensor, rows: torch.Tensor, beta_min: float, group: object | None = None
) -> tuple[torch.Tensor, ShapingStats]:
    """VPPO's Trajectory-level Advantage Shaping (TAS) weights, over the global mini-batch.

    ``n_i = clamp((S_i - min S) / (max S - min S), 0, 1)``, ``mu = mean n_i``,
    ``beta_max = beta_min + (1 - beta_min) / mu`` and ``w_i = beta_min + n_i (beta_max - beta_min)``,
    with min, max and mu over the participating rows of every rank of ``group`` (all-reduced), so the
    weights do not depend on how the mini-batch is split into micro-batches or ranks.

    Args:
        scores: ``(batch,)`` float S_i of this rank's rows (:func:`sequence_scores`).
        rows: ``(batch,)`` bool, the rows that take part (image rows with at least one response token).
        beta_min: the smallest weight, in [0, 1].
        group: the data-parallel process group, or ``None`` for this rank alone.

    Returns:
        ``(weights, stats)``: ``(batch,)`` float32 weights, 1.0 on rows that do not take part and on
        every row when :attr:`ShapingStats.shapes` is false; and the reduced statistics.
    """
    scores = scores.detach().double()
    rows = rows.to(torch.bool)
    inf = torch.tensor(math.inf, dtype=torch.float64, device=scores.device)
    low = _all_reduce(torch.where(rows, scores, inf).min().reshape(1), torch.distributed.ReduceOp.MIN, group)
    high = _all_reduce(torch.where(rows, scores, -inf).max().reshape(1), torch.distributed.ReduceOp.MAX, group)
    norm = ((scores - low) / (high - low).clamp(min=RANGE_EPSILON)).clamp(0.0, 1.0)
    sums = torch.stack([(norm * rows).sum(), rows.sum().double()]) if scores.numel() else torch.zeros(2)
    sums = _all_reduce(sums.to(torch.float64).to(scores.device), torch.distributed.ReduceOp.SUM, group)
    stats = ShapingStats(
        score_min=float(low.item()), score_max=float(high.item()), norm_sum=float(sums[0]), rows=float(sums[1])
    )
    weights = torch.ones_like(scores, dtype=torch.float32)
    if not stats.shapes:
        return weights, stats
    shaped = _mapped(norm, beta_min, mu=stats.norm_sum / stats.rows)
    return torch.where(rows, shaped.float(), weights), stats


def _mapped(norm: torch.Tensor, beta_min: float, mu: float | torch.Tensor) -> torch.Tensor:
    """``w_i = beta_min + n_i (beta_max - beta_min)`` with ``beta_max = beta_min + (1 - beta_min) / mu``."""
    beta_max = beta_min + (1.0 - beta_min) / mu
    return beta_min + norm * (beta_max - beta_min)


def rank_normalised_scores(scores: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, ShapingStats]:
    """The published code's normalisation: ``n_i`` by min and max over the rows given (one rank's share).

    Args:
        scores: ``(batch,)`` float S_i of this rank's share of an update mini-batch.
        rows: ``(batch,)`` bool, the rows that take part.

    Returns:
        ``(norm, stats)``: ``(batch,)`` float32 ``n_i = clamp((S_i - min S) / (max S - min S), 0, 1)`` on
        rows that take part when :attr:`ShapingStats.shapes`, NaN on every other row (weight 1); and
        this rank's statistics. :func:`micro_batch_weights` turns them into weights per micro-batch.
    """
    scores = scores.detach().double()
    rows = rows.to(torch.bool)
    _, stats = shaping_weights(scores, rows, beta_min=1.0)  # this rank's min, max and counts
    norm = torch.full_like(scores, math.nan, dtype=torch.float32)
    if stats.shapes:
        share = ((scores - stats.score_min) / (stats.score_max - stats.score_min)).clamp(0.0, 1.0)
        norm = torch.where(rows, share.float(), norm)
    return norm, stats


def micro_batch_weights(norm: torch.Tensor, beta_min: float) -> torch.Tensor:
    """The published code's weights of one update micro-batch, from :func:`rank_normalised_scores`.

    ``mu`` is the mean ``n_i`` over the micro-batch's shaped rows (those with a number, not NaN) and
    ``beta_max = beta_min + (1 - beta_min) / (mu + 1e-8)`` (:data:`PUBLISHED_MU_EPSILON`), so the weights
    average 1 per micro-batch, not per mini-batch.

    Args:
        norm: ``(batch,)`` float ``n_i`` of the micro-batch's rows, NaN for rows not shaped.
        beta_min: ``papo.vppo_beta_min``.

    Returns:
        ``(batch,)`` float32 weights, 1.0 on rows not shaped.
    """
    shaped = ~torch.isnan(norm)
    weights = torch.ones(norm.shape, dtype=torch.float32, device=norm.device)
    if not shaped.any():
        return weights
    norm = norm.double()
    mu = norm[shaped].mean() + PUBLISHED_MU_EPSILON
    return torch.where(shaped, _mapped(norm.nan_to_num(0.0), beta_min, mu).float(), weights)


# Names of the sums one micro-batch reports for the ``vppo/*`` metrics (see :class:`VppoTerms`).
TOKENS = "tokens"  # response tokens of image rows
KEPT = "kept"  # of those, kept by the filter
SCORE_KEPT = "score_kept"  # sum of s_t over kept tokens
SCORE_DROPPED = "score_dropped"  # sum of s_t over dropped tokens
ROWS = "rows"  # rows in the micro-batch
WEIGHT = "weight"  # sum of the rows' advantage weights


@dataclass
class VppoTerms:
    """VPPO's change to one micro-batch's advantages, and the sums its metrics are made of.

    Attributes:
        advantages: ``(batch, response_len)`` advantages for the policy-gradient term: ``w_i A_i`` on
            kept tokens, 0 on tokens the filter drops.
        token_mask: ``(batch, response_len)`` bool, the response tokens that enter the policy-gradient
            term: the kept tokens of image rows and every token of text-only rows.
        sums: per name above (:data:`TOKENS` ... :data:`WEIGHT`), its sum over this micro-batch (sums, so that a step's
            ratio does not depend on the micro-batch split).
        weight_min: smallest advantage weight of the micro-batch's rows.
        weight_max: largest advantage weight of the micro-batch's rows.
    """

    advantages: torch.Tensor
    token_mask: torch.Tensor
    sums: dict[str, float]
    weight_min: float
    weight_max: float


def apply_vppo(
    advantages: torch.Tensor,
    old_log_prob: torch.Tensor,
    masked_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    has_image: torch.Tensor,
    token_fraction: float | None,
    weights: torch.Tensor | None,
) -> VppoTerms:
    """VPPO's token filter and advantage shaping on one micro-batch.

    Args:
        advantages: ``(batch, response_len)`` advantages as verl hands them to the policy loss.
        old_log_prob: ``(batch, response_len)`` log pi_old(o_t | q, I).
        masked_log_prob: ``(batch, response_len)`` log pi_old(o_t | q, I_mask).
        response_mask: ``(batch, response_len)`` the response tokens.
        has_image: ``(batch,)`` bool; rows without an image are neither filtered nor shaped.
        token_fraction: the filter's p, or ``None`` for no filter.
        weights: ``(batch,)`` advantage weights w_i (:func:`shaping_weights` over the global
            mini-batch, or :func:`micro_batch_weights`), or ``None`` for no shaping.

    Returns:
        :class:`VppoTerms`. A dropped token's advantage is exactly 0, so under every verl policy loss
        linear in the advantage (``vanilla``, ``gspo``, ...) its policy-gradient term and gradient are
        exactly 0 while the aggregation still counts it (the published code multiplies the per-token
        loss by the filter mask before averaging over all response tokens).
    """
    response = response_mask.to(torch.bool)
    image_tokens = response & has_image.to(torch.bool).unsqueeze(-1)
    with torch.no_grad():
        scores = visual_dependency(old_log_prob, masked_log_prob)
        keep = image_tokens
        if token_fraction is not None:
            keep = top_fraction_token_mask(scores, image_tokens, token_fraction)
        # Text-only rows: every response token stays.
        keep = keep | (response & ~image_tokens)
        row_weights = torch.ones(advantages.shape[0], dtype=torch.float32, device=advantages.device)
        if weights is not None:
            row_weights = weights.to(device=advantages.device, dtype=torch.float32)
        dropped = image_tokens & ~keep
        kept = image_tokens & keep
        sums = {
            TOKENS: float(image_tokens.sum().item()),
            KEPT: float(kept.sum().item()),
            SCORE_KEPT: float((scores * kept).sum().item()),
            SCORE_DROPPED: float((scores * dropped).sum().item()),
            ROWS: float(advantages.shape[0]),
            WEIGHT: float(row_weights.sum().item()),
        }
    shaped = advantages
    if weights is not None:
        shaped = shaped * row_weights.to(advantages.dtype).unsqueeze(-1)
    if token_fraction is not None:
        shaped = shaped * keep.to(advantages.dtype)
    weight_min = float(row_weights.min().item()) if row_weights.numel() else 1.0
    weight_max = float(row_weights.max().item()) if row_weights.numel() else 1.0
    return VppoTerms(
        advantages=shaped, token_mask=keep & response, sums=sums, weight_min=weight_min, weight_max=weight_max
    )


def step_metrics(sums: dict[str, float]) -> dict[str, float]:
    """The step's ``vppo/*`` token and row means from summed micro-batch :attr:`VppoTerms.sums`.

    Returns ``kept_frac`` (kept / image-row response tokens), ``score_mean`` (mean s_t),
    ``score_kept_mean`` and ``score_dropped_mean`` (mean s_t of kept and dropped tokens) and
    ``weight_mean`` (mean advantage weight over rows); a ratio is left out when its denominator is 0.
    """
    tokens, kept, rows = sums.get(TOKENS, 0.0), sums.get(KEPT, 0.0), sums.get(ROWS, 0.0)
    out: dict[str, float] = {}
    if tokens > 0:
        out["kept_frac"] = kept / tokens
        out["score_mean"] = (sums[SCORE_KEPT] + sums[SCORE_DROPPED]) / tokens
    if kept > 0:
        out["score_kept_mean"] = sums[SCORE_KEPT] / kept
    if tokens - kept > 0:
        out["score_dropped_mean"] = sums[SCORE_DROPPED] / (tokens - kept)
    if rows > 0:
        out["weight_mean"] = sums[WEIGHT] / rows
    return out
