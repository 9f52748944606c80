"""The demo reward: rules, verl's loader, and the spread a random policy gets."""

from __future__ import annotations

import asyncio
import statistics
import string

import pytest
from demo_prompts import demo_prompt
from omegaconf import OmegaConf

from papo_tools.demo.reward import SHAPING_WEIGHT, compute_score, reward_overrides, score_count_answer
from papo_tools.demo.task import DATA_SOURCE


@pytest.mark.parametrize("response", ["3", "The answer is 3.", "x3y", " 3 shapes, not 4"])
def test_correct_first_integer_scores_one(response):
    assert score_count_answer(response, "3") == {"score": 1.0, "acc": 1.0}


@pytest.mark.parametrize("response", ["4", "13", "answer: 2", "seven", "", "\ufffd\ufffd"])
def test_wrong_answers_score_below_the_shaping_cap(response):
    result = score_count_answer(response, "3")
    assert result["acc"] == 0.0 and 0.0 <= result["score"] < SHAPING_WEIGHT


def test_shaping_rewards_first_characters_closer_to_the_digit():
    scores = [score_count_answer(char + "!", "3")["score"] for char in "3456789"]
    assert scores[0] == 1.0 and scores[1:] == sorted(scores[1:], reverse=True)
    assert score_count_answer("\ufffd", "3")["score"] == 0.0  # no ASCII character at all
    wrong = [score_count_answer(c, "3")["score"] for c in string.printable if c != "3"]
    assert max(wrong) < SHAPING_WEIGHT < 1.0


def test_other_data_sources_are_refused():
    with pytest.raises(NotImplementedError):
        compute_score("openai/gsm8k", "3", "3")


def test_verl_loads_it_as_the_custom_reward_function():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    overrides = dict(item.split("=", 1) for item in reward_overrides())
    config = OmegaConf.create({"reward": {"custom_reward_function": {"path": None, "name": None}}})
    for key, value in overrides.items():
        OmegaConf.update(config, key, value)
    fn = get_custom_reward_fn(config)
    assert fn(data_source=DATA_SOURCE, solution_str="2", ground_truth="2", extra_info={}) == {"score": 1.0, "acc": 1.0}


def test_random_policy_gets_a_spread_within_groups(hf_server, hf_model_config, demo_rows):
    """Rollouts of the random tiny model: scores differ inside groups, so GRPO advantages are non-zero."""
    group_size = 4
    groups = []
    for row in demo_rows:
        prompt_ids, images = demo_prompt(hf_model_config.processor, row)
        scores = []
        for _ in range(group_size):
            output = asyncio.run(
                hf_server.generate(
                    prompt_ids=prompt_ids,
                    sampling_params={"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": False},
                    request_id="r",
                    image_data=images,
                )
            )
            response = hf_server.model_config.tokenizer.decode(output.token_ids, skip_special_tokens=True)
            scores.append(compute_score(row["data_source"], response, row["reward_model"]["ground_truth"])["score"])
        groups.append(scores)
    spread_groups = [scores for scores in groups if statistics.pstdev(scores) > 0]
    assert len(spread_groups) >= len(groups) - 1, groups
    all_scores = [score for scores in groups for score in scores]
    assert 0.0 < statistics.mean(all_scores) < SHAPING_WEIGHT, all_scores
