"""The reward loaded and called exactly the way verl 0.9.1 does it.

Path of a rollout's reward in verl 0.9.1 (v1 trainer):
``AgentLoopWorker._compute_score`` -> ``RewardLoopWorker.compute_score`` -> ``RewardManager.run_single``
(``naive`` or ``dapo``), whose ``compute_score`` comes from ``verl.trainer.ppo.reward.load_reward_manager``
-> ``get_custom_reward_fn(config)`` reading ``reward.custom_reward_function.path/name``. The returned
``reward_extra_info`` is stored in the trajectory's ``extra_fields`` where the v1 ``ReplayBuffer`` reads
``algorithm.filter_groups.metric`` (DAPO) and ``_validate`` reads the validation metrics.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf
from reward_inputs import reward_input

import recipe.papo.reward as papo_reward
from recipe.papo.prompt import data_source

# The overrides a PAPO run passes to verl (documented in the README draft).
REWARD_OVERRIDES = (
    "reward.custom_reward_function.path=pkg://recipe.papo.reward",
    "reward.custom_reward_function.name=compute_score",
)
DS = data_source("We_Math")
WELL_FORMED = "<think>3 + 4 = 7</think> So the answer is \\boxed{7}."


@cache
def _compose(*overrides: str) -> DictConfig:
    """verl's own ``ppo_trainer`` config composed with command-line style overrides (strict keys)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def _with_reward_path(path: str) -> DictConfig:
    return OmegaConf.create({"reward": {"custom_reward_function": {"path": path, "name": "compute_score"}}})


@pytest.mark.parametrize("path", ["pkg://recipe.papo.reward", str(Path(papo_reward.__file__).resolve())])
def test_get_custom_reward_fn_loads_and_calls_the_reward(path: str) -> None:
    from verl.trainer.ppo.reward import get_custom_reward_fn

    fn = get_custom_reward_fn(_with_reward_path(path))
    assert fn is not None
    # Keyword call, as NaiveRewardManager / DAPORewardManager make it (extra_info gains num_turns etc.).
    result = fn(
        data_source=DS,
        solution_str=WELL_FORMED,
        ground_truth="7",
        extra_info={"index": 3, "num_turns": 2, "rollout_reward_scores": {}},
    )
    assert result == {"score": 1.0, "acc": 1.0, "format": 1.0}


def test_overrides_are_valid_keys_of_verls_config() -> None:
    config = _compose(*REWARD_OVERRIDES)
    assert config.reward.custom_reward_function.path == "pkg://recipe.papo.reward"
    assert config.reward.custom_reward_function.name == "compute_score"


@pytest.mark.parametrize("manager_name", ["naive", "dapo"])
@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (WELL_FORMED, {"score": 1.0, "acc": 1.0, "format": 1.0}),
        ("The answer is \\boxed{7}", {"score": 0.9, "acc": 1.0, "format": 0.0}),
        ("<think>guess</think>\\boxed{8}", {"score": 0.1, "acc": 0.0, "format": 1.0}),
    ],
)
def test_reward_manager_run_single(manager_name, response, expected, tiny_tokenizer) -> None:
    from verl.trainer.ppo.reward import load_reward_manager

    config = _compose(*REWARD_OVERRIDES, f"reward.reward_manager.name={manager_name}")
    manager = load_reward_manager(config, tiny_tokenizer)
    assert type(manager).__name__ == {"naive": "NaiveRewardManager", "dapo": "DAPORewardManager"}[manager_name]

    output = manager.loop.run_until_complete(manager.run_single(reward_input(tiny_tokenizer, response, "7", DS)))

    assert output == {"reward_score": expected["score"], "reward_extra_info": expected}


def test_dapo_filter_groups_reads_acc_from_this_reward(tiny_tokenizer, monkeypatch) -> None:
    """verl's v1 ReplayBuffer evicts groups whose ``acc`` is constant, not groups with constant score.

    Group ``mixed_format`` is all-correct with different formats: its scores differ (1.0 vs 0.9) but
    its accuracies do not, so filtering on ``acc`` drops it, as the paper's DAPO does.
    """
    import verl.trainer.ppo.v1.replay_buffer as replay_buffer
    from verl.trainer.ppo.reward import load_reward_manager

    config = _compose(
        *REWARD_OVERRIDES,
        "reward.reward_manager.name=dapo",
        "algorithm.filter_groups.enable=True",
        "algorithm.filter_groups.metric=acc",
    )
    manager = load_reward_manager(config, tiny_tokenizer)
    groups = {
        "allright": [WELL_FORMED, WELL_FORMED],
        "mixedformat": [WELL_FORMED, "\\boxed{7}"],
        "informative": [WELL_FORMED, "<think>x</think>\\boxed{8}"],
        "allwrong": ["no box", "<think>x</think>\\boxed{8}"],
    }
    extra_fields = {}
    for uid, responses in groups.items():
        for session, response in enumerate(responses):
            out = manager.loop.run_until_complete(manager.run_single(reward_input(tiny_tokenizer, response, "7", DS)))
            # What AgentLoopWorker stores per trajectory, under key {uid}_{session}_{index}.
            extra_fields[f"{uid}_{session}_0"] = {"reward_extra_info": out["reward_extra_info"]}

    def fake_kv_batch_get(keys, partition_id, select_fields):
        assert select_fields == ["extra_fields"]
        return {"extra_fields": [extra_fields[key] for key in keys]}

    monkeypatch.setattr(replay_buffer.tq, "kv_batch_get", fake_kv_batch_get)
    buffer = replay_buffer.ReplayBuffer(
        trainer_mode="sync",
        trainer_config=config.trainer,
        max_off_policy_threshold=None,
        max_off_policy_strategy="drop",
        sampler_kwargs={},
        refill_fn=lambda count: None,
        filter_groups_metric=str(config.algorithm.filter_groups.metric),
    )
    buffer.partitions["train"] = {key: {} for key in extra_fields}
    buffer.finished_keys["train"] = set(groups)

    filtered, counts = buffer._dapo_filtered_keys("train")

    assert filtered == {"allright", "mixedformat", "allwrong"}
    assert counts == {1.0: 2, 0.0: 1}
