"""The PAPO reward on real response strings: exact score / acc / format values.

Where mathruler decides an edge case, the expected value is what the reward actually does, with a
comment saying why (the reward follows the paper: grade_answer(extract_boxed_content(response), gt)).
"""

from __future__ import annotations

import pytest

from recipe.papo.prompt import EVAL_BENCHMARKS, data_source
from recipe.papo.reward import compute_score, normalize_response

DS = data_source("hiyouga_geometry3k")
THINK = "<think>The two legs are 3 and 4, so the hypotenuse is 5.</think>\n"

# (id, response, ground truth, score, acc, format)
CASES = [
    # --- well-formed responses
    ("correct", THINK + "The answer is \\boxed{5}.", "5", 1.0, 1.0, 1.0),
    ("wrong_answer", THINK + "The answer is \\boxed{6}.", "5", 0.1, 0.0, 1.0),
    ("multiline_think", "<think>\nstep 1\n\nstep 2\n</think>\n\n\\boxed{5}\n", "5", 1.0, 1.0, 1.0),
    # --- format failures
    ("no_think_tags", "The answer is \\boxed{5}.", "5", 0.9, 1.0, 0.0),
    ("missing_close_think", "<think>3-4-5 triangle. \\boxed{5}", "5", 0.9, 1.0, 0.0),
    ("missing_open_think", "3-4-5 triangle.</think> \\boxed{5}", "5", 0.9, 1.0, 0.0),
    # The box must come after </think>: a box only inside the monologue is graded but not well formatted.
    ("box_inside_think", "<think>so \\boxed{5}</think> done", "5", 0.9, 1.0, 0.0),
    # fullmatch: any text before <think> breaks the format (whitespace before '<' is normalised away).
    ("text_before_think", "Sure! " + THINK + "\\boxed{5}", "5", 0.9, 1.0, 0.0),
    ("leading_whitespace", "\n  " + THINK + "\\boxed{5}", "5", 1.0, 1.0, 1.0),
    ("uppercase_tags", "<THINK>x</THINK>\\boxed{5}", "5", 0.9, 1.0, 0.0),
    # --- whitespace variants around '<', '>' and '/'
    ("spaced_open_tag", "< think >x</think>\\boxed{5}", "5", 1.0, 1.0, 1.0),
    ("spaced_close_tag", "<think>x</ think>\\boxed{5}", "5", 1.0, 1.0, 1.0),
    ("fully_spaced_tags", "< think > x < / think > \\boxed{5}", "5", 1.0, 1.0, 1.0),
    # "think" itself must be intact: a space inside the word is not normalised.
    ("split_tag_word", "<th ink>x</think>\\boxed{5}", "5", 0.9, 1.0, 0.0),
    # --- missing / malformed boxes
    ("no_box", THINK + "The answer is 5.", "5", 0.0, 0.0, 0.0),
    ("boxed_without_braces", THINK + "\\boxed 5", "5", 0.0, 0.0, 0.0),
    # extract_boxed_content returns "" for an empty box; "" never equals "5". The format regex accepts it.
    ("empty_box", THINK + "\\boxed{}", "5", 0.1, 0.0, 1.0),
    # Unclosed box: extract_boxed_content finds no matching brace and returns "None" (acc 0); the format
    # regex only needs some '}' after '\boxed{' (here the inner fraction's), so format is still 1.
    ("unclosed_box", THINK + "\\boxed{\\frac{1}{2}", "1/2", 0.1, 0.0, 1.0),
    # mathruler returns the literal string "None" for a missing box, which grades equal to a ground truth
    # of "None" (case-insensitively): a response with no box at all is then "correct".
    ("no_box_gt_None", THINK + "There is no answer.", "None", 0.9, 1.0, 0.0),
    # --- nested braces and multiple boxes
    ("nested_frac", THINK + "\\boxed{\\frac{1}{2}}", "1/2", 1.0, 1.0, 1.0),
    ("nested_sqrt", THINK + "\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0, 1.0, 1.0),
    ("set_braces", THINK + "\\boxed{\\{1, 2\\}}", "{1,2}", 1.0, 1.0, 1.0),
    # extract_boxed_content uses the LAST \boxed{.
    ("two_boxes_last_right", THINK + "First \\boxed{3}, corrected: \\boxed{5}", "5", 1.0, 1.0, 1.0),
    ("two_boxes_first_right", THINK + "First \\boxed{5}, corrected: \\boxed{3}", "5", 0.1, 0.0, 1.0),
    # --- multiple-choice letters
    ("mc_letter", THINK + "\\boxed{B}", "B", 1.0, 1.0, 1.0),
    ("mc_lowercase", THINK + "\\boxed{b}", "B", 1.0, 1.0, 1.0),
    # mathruler strips one pair of enclosing parentheses as a 1-tuple, then sympy sees symbol b == b.
    ("mc_gt_parenthesised", THINK + "\\boxed{B}", "(B)", 1.0, 1.0, 1.0),
    ("mc_answer_parenthesised", THINK + "\\boxed{(B)}", "B", 1.0, 1.0, 1.0),
    ("mc_wrong_letter", THINK + "\\boxed{C}", "B", 0.1, 0.0, 1.0),
    # A letter followed by the option text is not reduced to the letter.
    ("mc_letter_with_text", THINK + "\\boxed{B. 12}", "B", 0.1, 0.0, 1.0),
    # --- numbers with units (mathruler drops a fixed list of units: cm, meter, degree, ...)
    ("unit_cm", THINK + "\\boxed{5 cm}", "5", 1.0, 1.0, 1.0),
    ("unit_text_cm", THINK + "\\boxed{5\\text{ cm}}", "5", 1.0, 1.0, 1.0),
    ("unit_in_gt", THINK + "\\boxed{5}", "5 cm", 1.0, 1.0, 1.0),
    ("unit_degree", THINK + "\\boxed{30^\\circ}", "30", 1.0, 1.0, 1.0),
    # "kg" is not in mathruler's unit list, so "5 kg" stays different from "5".
    ("unit_kg_not_stripped", THINK + "\\boxed{5 kg}", "5", 0.1, 0.0, 1.0),
    ("trailing_zero", THINK + "\\boxed{5.0}", "5", 1.0, 1.0, 1.0),
    # --- fractions
    ("dfrac", THINK + "\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 1.0, 1.0, 1.0),
    ("decimal_half", THINK + "\\boxed{0.5}", "1/2", 1.0, 1.0, 1.0),
    ("slash_frac", THINK + "\\boxed{1/2}", "\\frac{1}{2}", 1.0, 1.0, 1.0),
    # Spaces around '/' inside the box: the normalisation removes them (mathruler would ignore them too).
    ("spaced_slash_frac", THINK + "\\boxed{1 / 2}", "\\frac{1}{2}", 1.0, 1.0, 1.0),
    # mathruler refuses unreduced fractions.
    ("unreduced_frac", THINK + "\\boxed{\\frac{2}{4}}", "1/2", 0.1, 0.0, 1.0),
    # --- degenerate responses
    ("empty_response", "", "5", 0.0, 0.0, 0.0),
    ("whitespace_only", " \n\t ", "5", 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize(
    ("response", "ground_truth", "score", "acc", "fmt"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_reward_values(response: str, ground_truth: str, score: float, acc: float, fmt: float) -> None:
    result = compute_score(data_source=DS, solution_str=response, ground_truth=ground_truth, extra_info={})
    assert result == {"score": score, "acc": acc, "format": fmt}
    assert all(type(value) is float for value in result.values())


def test_case_ids_are_unique() -> None:
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))


def test_normalize_response_removes_whitespace_around_angle_brackets_and_slashes_only() -> None:
    assert normalize_response("< think >\n a / b \n</ think >  x") == "<think>a/b</think>x"
    # Everywhere, not only in tags: an inequality loses its spaces too.
    assert normalize_response("so x < 3 and y > 2") == "so x<3 and y>2"
    assert normalize_response("no tags here,  two  spaces") == "no tags here,  two  spaces"


@pytest.mark.parametrize("benchmark", EVAL_BENCHMARKS)
def test_every_benchmark_data_source_is_accepted(benchmark: str) -> None:
    result = compute_score(data_source(benchmark), THINK + "\\boxed{5}", "5", extra_info=None)
    assert result == {"score": 1.0, "acc": 1.0, "format": 1.0}


@pytest.mark.parametrize("other_source", ["hiyouga/geometry3k", "geo3k", "PAPO/We_Math", "", None])
def test_rows_from_any_data_source_are_scored(other_source) -> None:
    """The reward applies to every row (issue 11.3): a right answer scores 1.0, a wrong one 0.1."""
    assert compute_score(other_source, THINK + "\\boxed{5}", "5", extra_info={}) == {
        "score": 1.0,
        "acc": 1.0,
        "format": 1.0,
    }
    wrong = compute_score(other_source, THINK + "\\boxed{6}", "5", extra_info={})
    assert wrong == {"score": pytest.approx(0.1), "acc": 0.0, "format": 1.0}


def test_non_string_ground_truth_is_rejected_with_the_column_name() -> None:
    with pytest.raises(TypeError, match=r"reward_model\.ground_truth.*int"):
        compute_score(DS, THINK + "\\boxed{5}", 5, extra_info={})  # type: ignore[arg-type]
