"""The PAPO prompt format and the dataset / benchmark names shared by data_prep, reward and eval."""

from __future__ import annotations

# Appended after the trimmed question and a blank line (spec section 4).
FORMAT_INSTRUCTION = (
    "Reason about the question step by step as an internal monologue inside <think> </think> tags, "
    "then give the final answer inside \\boxed{}."
)

# Every PAPO parquet row carries data_source = DATA_SOURCE_PREFIX + <dataset or benchmark name>.
# The prefix makes verl's built-in default reward fail loudly (unknown data_source) if a run forgets
# to point reward.custom_reward_function at recipe/papo/reward.py, instead of silently scoring with
# another dataset's rule.
DATA_SOURCE_PREFIX = "papo/"

# The nine evaluation splits of PAPO-Galaxy/PAPO_eval and their group (spec section 4).
GENERAL_BENCHMARKS: tuple[str, ...] = (
    "hiyouga_geometry3k",
    "AI4Math_MathVista",
    "We_Math",
    "PAPO_MMK12",
    "AI4Math_MathVerse",
)
VISION_DEPENDENT_BENCHMARKS: tuple[str, ...] = (
    "AI4Math_MathVerse_vision_dependent",
    "BUAADreamer_clevr_count_70k",
    "lscpku_LogicVista",
    "MMMU_MMMU_Pro",
)
EVAL_BENCHMARKS: tuple[str, ...] = GENERAL_BENCHMARKS + VISION_DEPENDENT_BENCHMARKS


def benchmark_group(benchmark: str) -> str:
    """``"general"`` or ``"vision-dependent"`` for one of :data:`EVAL_BENCHMARKS`."""
    if benchmark in GENERAL_BENCHMARKS:
        return "general"
    if benchmark in VISION_DEPENDENT_BENCHMARKS:
        return "vision-dependent"
    raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(EVAL_BENCHMARKS)}")


def format_question(question: str) -> str:
    """The user turn: the trimmed question, a blank line, then :data:`FORMAT_INSTRUCTION`."""
    return f"{question.strip()}\n\n{FORMAT_INSTRUCTION}"


def data_source(name: str) -> str:
    """The ``data_source`` value for a dataset or benchmark name."""
    return f"{DATA_SOURCE_PREFIX}{name}"
