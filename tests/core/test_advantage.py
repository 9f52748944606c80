"""The ``papo`` advantage estimator: group-relative outcome advantage through verl's v1 dispatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

from recipe.papo.advantage import SingletonGroupError, compute_papo_outcome_advantage


def outcome_batch(scores, lengths, width=6):
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()
    rewards = torch.zeros(len(scores), width)
    for i, (score, length) in enumerate(zip(scores, lengths, strict=False)):
        rewards[i, length - 1] = score  # outcome reward on the last response token
    return rewards, mask


SCORES = [1.0, 0.0, 0.5, 1.0, 0.9, 0.1, 0.1, 0.0]
UIDS = np.array(["a", "a", "a", "b", "b", "c", "c", "c"], dtype=object)
LENGTHS = [3, 6, 2, 4, 5, 1, 6, 3]


def reference(scores, uids, norm=True):
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros_like(scores)
    for uid in set(uids):
        rows = uids == uid
        centred = scores[rows] - scores[rows].mean()
        out[rows] = centred / (scores[rows].std(ddof=1) + 1e-6) if norm else centred
    return out


@pytest.mark.parametrize("norm", [True, False])
def test_matches_the_definition_and_broadcasts_over_response_tokens(norm):
    rewards, mask = outcome_batch(SCORES, LENGTHS)
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": norm})
    advantages, returns = compute_papo_outcome_advantage(rewards, mask, UIDS, config=config)
    expected = torch.tensor(reference(SCORES, UIDS, norm), dtype=torch.float32).unsqueeze(-1) * mask
    torch.testing.assert_close(advantages, expected)
    assert torch.equal(advantages, returns)
    assert advantages[mask == 0].abs().max() == 0


def test_equals_verls_grpo_for_groups_of_two_or_more():
    rewards, mask = outcome_batch(SCORES, LENGTHS)
    ours, _ = compute_papo_outcome_advantage(rewards, mask, UIDS)
    verl_grpo, _ = compute_grpo_outcome_advantage(rewards, mask, UIDS)
    torch.testing.assert_close(ours, verl_grpo)


def test_group_of_one_is_a_clear_error():
    rewards, mask = outcome_batch([1.0, 0.0, 1.0], [2, 2, 2])
    with pytest.raises(SingletonGroupError, match="rollout.n >= 2"):
        compute_papo_outcome_advantage(rewards, mask, np.array(["a", "a", "lonely"], dtype=object))


def test_registered_and_dispatched_by_verls_v1_advantage_path():
    """v1's compute_advantage_for_multi_trajectories sends non-grpo names through the registry."""
    assert get_adv_estimator_fn("papo") is compute_papo_outcome_advantage
    rewards, mask = outcome_batch(SCORES, LENGTHS)
    data = DataProto(
        batch=TensorDict({"token_level_rewards": rewards, "response_mask": mask}, batch_size=[len(SCORES)]),
        non_tensor_batch={"uid": UIDS},
    )
    algorithm = OmegaConf.create({"norm_adv_by_std_in_grpo": False})
    keys = [f"{uid}_{i}_0" for i, uid in enumerate(UIDS)]
    out = compute_advantage_for_multi_trajectories(
        data, batch_keys=keys, adv_estimator="papo", num_repeat=3, norm_adv_by_std_in_grpo=True, config=algorithm
    )
    expected = torch.tensor(reference(SCORES, UIDS, norm=False), dtype=torch.float32).unsqueeze(-1) * mask
    torch.testing.assert_close(out.batch["advantages"], expected)
