"""The advantage estimators' typical scale against GRPO's, measured through verl's own estimator call.

The PAPO terms (and VPPO's entropy penalty) do not read the advantage, but the surrogate does, so the
share of the loss gradient the terms get moves with the estimator's typical |A|: gamma and eta were
published for GRPO's std-normalised advantage (arXiv 2507.06448). This measures mean |A| per response
for every estimator the PAPO trainer runs (``gae`` left out: its scale is the critic's), with binary
rewards, n = 5 responses per prompt and each prompt's success probability uniform in [0, 1], through
the call verl 0.9.1's v1 trainer makes (``compute_advantage_for_multi_trajectories``), and checks the
ratios to GRPO's that ``recipe.papo.run_checks.ESTIMATOR_SCALE_VS_GRPO`` holds (the start-up warning's
numbers) and the warning itself. ``PYTHONPATH=tests/support python tests/core/test_estimator_scale.py``
prints the table of docs/compose.md (20,000 prompts, seed 0).
"""

from __future__ import annotations

import functools

import numpy as np
import papo_configs
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from verl import DataProto
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

from recipe.papo import register as _register  # noqa: F401  (the papo estimator in verl's registry)
from recipe.papo.run_checks import (
    ESTIMATOR_SCALE_LIMIT,
    ESTIMATOR_SCALE_VS_GRPO,
    check_papo_run_config,
    estimator_scale_vs_grpo,
)

ROLLOUT_N = 5
RESPONSE_LEN = 4
PROMPTS = 20_000
GRPO = ("grpo", True)


@functools.cache
def composed_algorithm() -> DictConfig:
    """The ``algorithm`` block of the composed run config (PAPO-G's defaults), once."""
    return papo_configs.composed().algorithm


def mean_abs_advantage(estimator: str, norm_by_std: bool, prompts: int, seed: int) -> tuple[float, float]:
    """``(mean |A| per response, share of responses with A != 0)`` of ``estimator`` on random binary rewards."""
    algorithm = OmegaConf.merge(
        composed_algorithm(), {"adv_estimator": estimator, "norm_adv_by_std_in_grpo": norm_by_std}
    )
    rng = np.random.default_rng(seed)
    success = rng.random(prompts)
    rewards = (rng.random((prompts, ROLLOUT_N)) < success[:, None]).astype(np.float32).reshape(-1)
    rows = prompts * ROLLOUT_N
    uids = [f"p{prompt}" for prompt in range(prompts) for _ in range(ROLLOUT_N)]
    scores = torch.zeros(rows, RESPONSE_LEN)
    scores[:, -1] = torch.from_numpy(rewards)  # outcome reward on the last token
    tensors = {
        "response_mask": torch.ones(rows, RESPONSE_LEN),
        "rm_scores": scores,
        "token_level_scores": scores,
        "token_level_rewards": scores,
        "old_log_probs": torch.zeros(rows, RESPONSE_LEN),
        "ref_log_prob": torch.zeros(rows, RESPONSE_LEN),
    }
    data = DataProto.from_dict(tensors=tensors, non_tensors={"uid": np.array(uids, dtype=object)})
    out = compute_advantage_for_multi_trajectories(
        data,
        batch_keys=[f"{uid}_{row}_0" for row, uid in enumerate(uids)],
        adv_estimator=algorithm.adv_estimator,
        gamma=algorithm.gamma,
        lam=algorithm.lam,
        num_repeat=ROLLOUT_N,
        norm_adv_by_std_in_grpo=norm_by_std,
        config=algorithm,
    )
    per_response = out.batch["advantages"].abs().mean(-1)
    return float(per_response.mean()), float((per_response > 0).float().mean())


def measure(prompts: int = PROMPTS, seed: int = 0) -> dict[tuple[str, bool], tuple[float, float, float]]:
    """``{(estimator, norm_adv_by_std_in_grpo): (mean |A|, ratio to GRPO's, share of non-zero rows)}``."""
    grpo, _ = mean_abs_advantage(*GRPO, prompts, seed)
    out = {}
    for key in ESTIMATOR_SCALE_VS_GRPO:
        mean, nonzero = mean_abs_advantage(*key, prompts, seed)
        out[key] = (mean, mean / grpo, nonzero)
    return out


def test_the_ratios_in_the_code_are_todays_measurement():
    """A fresh, smaller sample (2,000 prompts, another seed) within 0.05 of each committed ratio."""
    for key, (_, ratio, _) in measure(prompts=2000, seed=1).items():
        assert ratio == pytest.approx(ESTIMATOR_SCALE_VS_GRPO[key], abs=0.05), key


def test_the_estimators_that_read_the_std_flag_are_keyed_by_it():
    """The flag changes GRPO's, papo's and grpo_passk's scale; the other estimators ignore it."""
    for estimator in ("grpo", "papo", "grpo_passk"):
        with_std, _ = mean_abs_advantage(estimator, True, 500, 2)
        without, _ = mean_abs_advantage(estimator, False, 500, 2)
        assert without < 0.7 * with_std, estimator
    for estimator in ("rloo", "opo", "reinforce_plus_plus"):
        assert mean_abs_advantage(estimator, True, 500, 2) == mean_abs_advantage(estimator, False, 500, 2)
    assert estimator_scale_vs_grpo("rloo", False) == estimator_scale_vs_grpo("rloo", True)
    assert estimator_scale_vs_grpo("gae", True) is None


@pytest.mark.parametrize(
    ("overrides", "warns"),
    [
        (["algorithm.adv_estimator=grpo_passk"], True),
        (["algorithm.adv_estimator=grpo_passk", "algorithm.norm_adv_by_std_in_grpo=False"], True),
        (["algorithm.adv_estimator=rloo"], False),
        (["algorithm.adv_estimator=reinforce_plus_plus"], False),
        (["algorithm.norm_adv_by_std_in_grpo=False"], False),  # Dr.GRPO: 0.50, at the edge
        (["algorithm.adv_estimator=grpo_passk", "papo.monitor=true", "papo.kl_prcp_coef=0"], False),  # no term
        (["algorithm.adv_estimator=grpo_passk", "papo.kl_prcp_coef=0", "papo.vppo_entropy_coef=0.06"], True),
    ],
)
def test_start_up_warns_with_the_measured_ratio_when_it_is_beyond_2x(caplog, overrides, warns):
    with caplog.at_level("WARNING", logger="recipe.papo.run_checks"):
        check_papo_run_config(papo_configs.composed(*overrides))
    assert ("advantage scale" in caplog.text) == warns, caplog.text
    if warns:
        norm = "algorithm.norm_adv_by_std_in_grpo=False" not in overrides
        ratio = ESTIMATOR_SCALE_VS_GRPO[("grpo_passk", norm)]
        assert 1 / ratio > ESTIMATOR_SCALE_LIMIT
        assert f"{ratio:.2f} x GRPO's" in caplog.text and "algorithm.adv_estimator='grpo_passk'" in caplog.text
        assert f"multiply them by {ratio:.2f}" in caplog.text


if __name__ == "__main__":
    print("| estimator | mean \\|A\\| | ratio to GRPO | responses with A != 0 |")
    print("|---|---|---|---|")
    for (estimator, norm), (mean, ratio, nonzero) in measure().items():
        name = f"`{estimator}`" if norm else f"`{estimator}`, `norm_adv_by_std_in_grpo=False`"
        print(f"| {name} | {mean:.3f} | {ratio:.2f} | {nonzero:.1%} |")
