"""The ``papo`` advantage estimator in verl's registry (``algorithm.adv_estimator=papo``).

Both PAPO variants use GRPO's group-relative outcome advantage: per prompt group (same ``uid``),
``A_i = (r_i - mean(r)) / (std(r) + 1e-6)`` with the unbiased std, or ``r_i - mean(r)`` when
``algorithm.norm_adv_by_std_in_grpo=False`` (Dr.GRPO). ``r_i`` is the sum of the token-level rewards
of response i; the advantage is broadcast over its response tokens.

verl 0.9.1's v1 trainer sends every name other than ``grpo``/``gae`` to
``core_algos.get_adv_estimator_fn(name)(token_level_rewards=, response_mask=, config=algorithm_config,
index=uid)`` (``verl/trainer/ppo/ray_trainer.py::compute_advantage``); this function has that signature.
For groups of 2 or more responses it equals verl's ``grpo`` (tests/core/test_compose.py). Unlike
verl's ``grpo`` (which silently gives a size-1 group mean 0 and std 1, so the response's raw score
becomes its advantage), a group of size 1 is an error here: it means ``actor_rollout_ref.rollout.n``
is 1 or groups were split, and there is no group baseline to subtract.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

EPSILON = 1e-6


class SingletonGroupError(ValueError):
    """A prompt group with one response has no group-relative advantage."""


def group_relative_advantage(
    scores: torch.Tensor, index: np.ndarray, norm_by_std: bool = True, epsilon: float = EPSILON
) -> torch.Tensor:
    """``(batch,)`` group-relative advantages of ``(batch,)`` outcome ``scores`` grouped by ``index``."""
    uids, group_ids, counts = np.unique(np.asarray(index).astype(str), return_inverse=True, return_counts=True)
    if (counts < 2).any():
        lonely = uids[counts < 2].tolist()
        raise SingletonGroupError(
            f"{len(lonely)} prompt group(s) have a single response (e.g. uid {lonely[0]!r}); the papo advantage "
            "needs at least 2 responses per prompt: set actor_rollout_ref.rollout.n >= 2."
        )
    group_ids = torch.as_tensor(group_ids, dtype=torch.long, device=scores.device)
    num_groups = int(counts.shape[0])
    counts_t = torch.as_tensor(counts, dtype=scores.dtype, device=scores.device)
    sums = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device).index_add_(0, group_ids, scores)
    means = sums / counts_t
    centred = scores - means[group_ids]
    if not norm_by_std:
        return centred
    squares = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device).index_add_(0, group_ids, centred**2)
    stds = torch.sqrt(squares / (counts_t - 1))
    return centred / (stds[group_ids] + epsilon)


@register_adv_est("papo")
def compute_papo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config: Any | None = None,
    **unused: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl advantage-estimator entry point.

    Args:
        token_level_rewards: ``(batch, response_len)`` rewards (outcome reward on the last token).
        response_mask: ``(batch, response_len)`` 1 on response tokens.
        index: ``(batch,)`` prompt uids; responses of one prompt share a uid.
        config: verl's ``algorithm`` config; reads ``norm_adv_by_std_in_grpo`` (default True).

    Returns:
        ``(advantages, returns)``, both ``(batch, response_len)`` and equal, zero outside the mask.
    """
    norm_by_std = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        advantages = group_relative_advantage(scores, index, norm_by_std).unsqueeze(-1) * response_mask
    return advantages, advantages
