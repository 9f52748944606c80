"""The PAPO reward (arXiv 2507.06448: accuracy plus format) as a verl 0.9 custom reward function.

Select it with::

    reward.custom_reward_function.path=pkg://recipe.papo.reward
    reward.custom_reward_function.name=compute_score

verl's reward managers (``naive``, ``dapo``) call ``compute_score(data_source=, solution_str=,
ground_truth=, extra_info=)`` once per response and copy every key of the returned dict into
``reward_extra_info``: ``score`` is the scalar reward, ``acc`` is what DAPO's
``algorithm.filter_groups.metric=acc`` and the validation metrics ``val-core/<data_source>/acc/mean@N``
read, ``format`` is logged alongside.

The response is first normalised by deleting whitespace around every ``<``, ``>`` and ``/``
(so ``< think >`` and ``</ think>`` count as tags); both terms are computed on the normalised text.

- ``format`` = 1.0 iff the whole normalised response matches ``<think>.*</think>.*\\boxed{.*}.*``
  (``.`` matches newlines), else 0.0.
- ``acc`` = 1.0 iff ``mathruler.grader.grade_answer(extract_boxed_content(response), ground_truth)``,
  else 0.0. ``extract_boxed_content`` takes the LAST ``\\boxed{`` and its brace-balanced content,
  stripped; it returns the string ``"None"`` when there is no box or the box is not closed.
- ``score`` = 0.9 * acc + 0.1 * format.

Every row is scored whatever its ``data_source`` (as the authors' reward does): a user who selects
this reward wants it applied. Rows not prepared by ``data_prep`` may lack the ``<think>``/``\\boxed{}``
instruction in their prompt, in which case ``format`` (and ``acc``, which needs a box) stay 0.
"""

from __future__ import annotations

import re
from typing import Any

from mathruler.grader import extract_boxed_content, grade_answer

ACCURACY_WEIGHT = 0.9
FORMAT_WEIGHT = 0.1

_SPACED_TAG_CHAR = re.compile(r"\s*([<>/])\s*")
_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)


def normalize_response(response: str) -> str:
    """Delete the whitespace on both sides of every ``<``, ``>`` and ``/``."""
    return _SPACED_TAG_CHAR.sub(r"\1", response)


def format_reward(response: str) -> float:
    """1.0 iff the (already normalised) response is ``<think>...</think>...\\boxed{...}...``."""
    return 1.0 if _FORMAT.fullmatch(response) else 0.0


def accuracy_reward(response: str, ground_truth: str) -> float:
    """1.0 iff mathruler grades the last ``\\boxed{}`` content of the response equal to ``ground_truth``."""
    return 1.0 if grade_answer(extract_boxed_content(response), ground_truth) else 0.0


def papo_reward(response: str, ground_truth: str) -> dict[str, float]:
    """``{"score", "acc", "format"}`` for one response; see the module docstring."""
    normalized = normalize_response(response)
    acc = accuracy_reward(normalized, ground_truth)
    fmt = format_reward(normalized)
    return {"score": ACCURACY_WEIGHT * acc + FORMAT_WEIGHT * fmt, "acc": acc, "format": fmt}


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
) -> dict[str, float]:
    """verl entry point: the PAPO reward of ``solution_str`` for a row prepared by ``data_prep``.

    Every ``data_source`` is scored; it only names the row in errors. ``extra_info`` is accepted
    because verl always passes it; the reward does not use it.
    """
    if not isinstance(ground_truth, str):
        raise TypeError(
            f"PAPO reward needs reward_model.ground_truth to be a string, got {type(ground_truth).__name__} "
            f"({ground_truth!r}) for data_source={data_source!r}; store answers as strings in the parquet."
        )
    return papo_reward(solution_str, ground_truth)
