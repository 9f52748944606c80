"""verl actor configs with a PAPO block, and random padded batches, for the loss and objective tests.

Test support: importable as ``papo_loss_batches`` once ``tests/support`` is on ``sys.path``
(``tests/conftest.py`` puts it there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from verl.workers.config import FSDPActorConfig

import recipe.papo.register  # noqa: F401  registers the papo loss / advantage
from recipe.papo.config import PapoConfig, PapoPolicyLossConfig
from recipe.papo.objective import TOKEN_COUNT, TOKEN_MEAN_METRICS, PapoTerms


def make_actor_config(loss_agg_mode: str = "token-mean", **papo_options: Any) -> FSDPActorConfig:
    """A real verl ``FSDPActorConfig`` whose policy loss is ``papo`` with the given PAPO options."""
    return FSDPActorConfig(
        strategy="fsdp2",
        ppo_mini_batch_size=2,
        ppo_micro_batch_size_per_gpu=1,
        rollout_n=1,
        loss_agg_mode=loss_agg_mode,
        clip_ratio_low=0.2,
        clip_ratio_high=0.3,
        policy_loss=PapoPolicyLossConfig(loss_mode="papo", papo=PapoConfig(**papo_options)),
    )


@dataclass
class Batch:
    """Padded per-token tensors, all ``(batch, response_len)`` except ``has_image`` ``(batch,)``."""

    old_log_prob: torch.Tensor
    log_prob: torch.Tensor
    masked_log_prob: torch.Tensor
    advantages: torch.Tensor
    response_mask: torch.Tensor
    has_image: torch.Tensor


def make_batch(batch: int = 6, length: int = 9, seed: int = 0) -> Batch:
    """Random log-probs near each other, ragged response lengths (>= 2), one advantage per row.

    Args:
        batch: rows.
        length: padded response length in tokens.
        seed: the generator's seed; the batch is a pure function of the arguments.
    """
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g) * 3 - 0.05
    log_prob = old + 0.3 * torch.randn(batch, length, generator=g)
    log_prob = log_prob.clamp(max=-1e-3)
    masked = log_prob - 0.8 * torch.rand(batch, length, generator=g) + 0.2
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    advantages = torch.randn(batch, 1, generator=g).expand(batch, length) * mask
    has_image = torch.ones(batch, dtype=torch.bool)
    return Batch(old, log_prob, masked, advantages.contiguous(), mask, has_image)


def token_means(terms: PapoTerms) -> dict[str, float]:
    """The token means of one micro-batch's PAPO terms alone (empty when it has no PAPO token).

    ``terms.token_sums`` divided by their token count: what the step's ``papo/*`` metrics are for a
    step of this one micro-batch.
    """
    count = terms.token_sums[TOKEN_COUNT]
    if count == 0:
        return {}
    return {name: terms.token_sums[name] / count for name in TOKEN_MEAN_METRICS}
