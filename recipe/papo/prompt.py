"""The PAPO prompt format and the dataset / benchmark names shared by data_prep, reward and eval.

The user turn of every row is a prompt template with the trimmed question put in place of
``{question}``. The default appends, after a blank line, an instruction to reason inside
``<think> </think>`` and answer inside ``\\boxed{}`` (the format the PAPO reward checks; the authors' prompt for
arXiv 2507.06448 has the same structure in other words). ``data_prep --prompt-template FILE``
replaces it; see ``docs/algorithm.md``.
"""

from __future__ import annotations

import re

# Appended after the trimmed question and a blank line by the default template.
FORMAT_INSTRUCTION = (
    "Reason about the question step by step as an internal monologue inside <think> </think> tags, "
    "then give the final answer inside \\boxed{}."
)

QUESTION_FIELD = "{question}"
DEFAULT_PROMPT_TEMPLATE = f"{QUESTION_FIELD}\n\n{FORMAT_INSTRUCTION}"
# A ``{name}`` placeholder; other braces (``\boxed{}``, ``{1, 2}``) are text and kept as written.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PromptTemplateError(ValueError):
    """A prompt template without ``{question}`` or with another ``{name}`` placeholder."""


def check_prompt_template(template: str, where: str = "the prompt template") -> str:
    """Return ``template`` if it holds ``{question}`` and no other ``{name}`` placeholder.

    Raises:
        PromptTemplateError: naming ``where`` (e.g. the file) and the offending placeholders.
    """
    unknown = sorted({name for name in _PLACEHOLDER.findall(template) if name != "question"})
    if unknown:
        raise PromptTemplateError(
            f"{where}: unknown placeholder(s) {', '.join('{' + name + '}' for name in unknown)}; the only "
            f"placeholder is {QUESTION_FIELD} (other braces, such as \\boxed{{}}, are kept as written)."
        )
    if QUESTION_FIELD not in template:
        raise PromptTemplateError(
            f"{where}: no {QUESTION_FIELD} placeholder; write {QUESTION_FIELD} where the question goes, "
            f"e.g. '{QUESTION_FIELD}\\n\\nAnswer inside \\boxed{{}}.'"
        )
    return template


# Every PAPO parquet row carries data_source = DATA_SOURCE_PREFIX + <dataset or benchmark name>.
# The prefix makes verl's built-in default reward fail loudly (unknown data_source) if a run forgets
# to point reward.custom_reward_function at recipe/papo/reward.py, instead of silently scoring with
# another dataset's rule.
DATA_SOURCE_PREFIX = "papo/"

# The nine evaluation splits of PAPO-Galaxy/PAPO_eval and their group (arXiv 2507.06448, Table 1).
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


def format_question(question: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The user turn: ``template`` with the trimmed question in place of every ``{question}``.

    The default template gives the trimmed question, a blank line, then :data:`FORMAT_INSTRUCTION`.
    ``template`` is assumed checked (:func:`check_prompt_template`).
    """
    return template.replace(QUESTION_FIELD, question.strip())


def data_source(name: str) -> str:
    """The ``data_source`` value for a dataset or benchmark name."""
    return f"{DATA_SOURCE_PREFIX}{name}"
