"""Reward of the demo counting task, as a verl custom reward function.

verl 0.9.1 calls it from its reward loop (``verl/experimental/reward_loop/reward_manager/naive.py``)
as ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=, **reward_kwargs)``
with the decoded response; a returned dict must hold ``score`` and may add metrics (``acc``).
Select it with ``reward.custom_reward_function.path=pkg://papo_tools.demo.reward`` and
``reward.custom_reward_function.name=compute_score`` (:func:`reward_overrides`).

Scoring (``ground_truth`` is a single digit):

- ``acc`` = 1 when the first integer in the response equals the ground truth; then ``score`` = 1.
- Otherwise ``score`` = ``SHAPING_WEIGHT`` * closeness of the response's first ASCII character to
  the correct digit, in byte values: ``max(0, 1 - |ord(char) - ord(digit)| / 128)``; 0 for a
  response with no ASCII character.

Why the shaping term: the demo model is a tiny random byte-level model; it almost never writes the
right digit, so a correctness-only reward would be 0 for every rollout, GRPO advantages would be 0
and nothing would train. The first-character closeness differs between almost any two random
responses (a non-degenerate spread within each group) and points towards answering with the right
digit first, while every wrong answer scores below ``SHAPING_WEIGHT`` and the correct,
image-dependent answer scores 1, the maximum.
"""

from __future__ import annotations

import re
from typing import Any

SHAPING_WEIGHT = 0.5
_ASCII_RANGE = 128
_INTEGER = re.compile(r"[0-9]+")


def first_integer(text: str) -> int | None:
    """The first run of ASCII digits in ``text`` as an int, or None."""
    match = _INTEGER.search(text)
    return int(match.group()) if match else None


def first_char_closeness(text: str, digit: str) -> float:
    """How close the first ASCII character of ``text`` is to ``digit`` in byte value, in [0, 1]."""
    char = next((c for c in text if c.isascii()), None)
    if char is None:
        return 0.0
    return max(0.0, 1.0 - abs(ord(char) - ord(digit)) / _ASCII_RANGE)


def score_count_answer(response: str, ground_truth: str) -> dict[str, float]:
    """``{"score", "acc"}`` of one response to a counting question (see the module docstring)."""
    acc = float(first_integer(response) == int(ground_truth))
    score = acc if acc else SHAPING_WEIGHT * first_char_closeness(response, ground_truth.strip()[0])
    return {"score": score, "acc": acc}


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs: Any
) -> dict[str, float]:
    """verl custom reward entry point for the demo's ``papo_demo/`` data sources."""
    if not data_source.startswith("papo_demo/"):
        raise NotImplementedError(f"the demo reward scores papo_demo/ data only, got {data_source!r}")
    return score_count_answer(solution_str, ground_truth)


def reward_overrides() -> list[str]:
    """Hydra overrides selecting this reward function in verl's config."""
    return [
        "reward.custom_reward_function.path=pkg://papo_tools.demo.reward",
        "reward.custom_reward_function.name=compute_score",
    ]
