"""Summary aggregation and the figure, on hand-made metric records (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from papo_tools.experiments.arms import ARM_NAMES
from papo_tools.experiments.plot import arm_colours, moving_mean, plot_dynamics
from papo_tools.experiments.summary import (
    ACCURACY_KEY,
    FINAL_WINDOW,
    REQUIRED_METRICS,
    accuracy_measures,
    aggregate,
    all_finite,
    compare_with_baseline,
    curves,
    paired_difference,
)


def _records(values: dict[int, float], extra: dict | None = None) -> list[dict]:
    """File-logger records with every required metric set to ``values[step]`` (steps out of order)."""
    return [
        {"step": step, "data": {**{m: value for m in REQUIRED_METRICS}, **(extra or {})}}
        for step, value in sorted(values.items(), reverse=True)
    ]


def test_curves_are_in_step_order_and_keep_optional_metrics_only_when_logged_every_step():
    records = _records({1: 0.5, 2: 1.5, 3: 2.5}, extra={"actor/kl_loss": 0.1})
    del records[0]["data"]["actor/kl_loss"]  # step 3 lacks it
    result = curves(records)
    assert result["papo/kl_prcp"] == [0.5, 1.5, 2.5]
    assert "actor/kl_loss" not in result


def test_curves_name_the_missing_required_metric_and_step():
    records = _records({1: 0.0, 2: 0.0})
    del records[0]["data"]["papo/entropy_aug"]  # records[0] is step 2
    with pytest.raises(KeyError, match=r"papo/entropy_aug.*step 2"):
        curves(records)


def test_aggregate_mean_and_population_std_over_seeds():
    per_seed = {"a": {0: {"papo/kl_prcp": [1.0, 2.0]}, 1: {"papo/kl_prcp": [3.0, 6.0]}}}
    summary = aggregate(per_seed, run={"note": "x"})
    assert summary["arms"]["a"]["papo/kl_prcp"] == [2.0, 4.0]
    assert summary["spread"]["a"]["papo/kl_prcp"] == [1.0, 2.0]  # sqrt(((1-2)^2 + (3-2)^2) / 2), same at step 2
    assert summary["per_seed"]["a"]["1"]["papo/kl_prcp"] == [3.0, 6.0]
    assert summary["steps"] == [1, 2]
    assert summary["run"] == {"note": "x"}


def test_all_finite_catches_nan():
    summary = aggregate({"a": {0: {"m": [1.0, 2.0]}}}, run={})
    assert all_finite(summary)
    summary["arms"]["a"]["m"][1] = math.nan
    assert not all_finite(summary)


def test_plot_writes_a_png(tmp_path):
    per_seed = {arm: {0: curves(_records({1: 0.1, 2: 0.2 + i}))} for i, arm in enumerate(("grpo", "papo"))}
    path = plot_dynamics(aggregate(per_seed, run={}), tmp_path / "fig.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_measures_are_the_final_window_and_the_whole_run_means():
    accuracy = [0.0] * 5 + [1.0] * FINAL_WINDOW
    measures = accuracy_measures(accuracy)
    assert measures["final"] == 1.0
    assert measures["auc"] == pytest.approx(FINAL_WINDOW / (FINAL_WINDOW + 5))


def test_paired_difference_is_taken_seed_by_seed():
    # seed-to-seed spread of the baseline is large, the paired difference is steady: it stands out
    result = paired_difference([0.5, 0.7, 0.9], [0.4, 0.6, 0.8])
    assert result["differences"] == pytest.approx([0.1, 0.1, 0.1])
    assert result["mean"] == pytest.approx(0.1)
    assert result["std"] == pytest.approx(0.0, abs=1e-12)
    assert result["baseline_spread"] == pytest.approx(0.2)  # sample std of 0.4, 0.6, 0.8
    assert result["exceeds_spread"] is False  # 0.1 < the baseline's own spread 0.2
    steady = paired_difference([0.6, 0.62, 0.64], [0.4, 0.41, 0.42])
    assert steady["exceeds_spread"] is True
    one_seed = paired_difference([0.9], [0.4])
    assert one_seed["mean"] == pytest.approx(0.5)
    assert one_seed["exceeds_spread"] is None and one_seed["std"] is None  # no spread to compare with
    noisy = paired_difference([0.5, 0.3, 0.45], [0.4, 0.4, 0.4])
    assert noisy["mean"] == pytest.approx(0.0166667, abs=1e-6)
    assert noisy["exceeds_spread"] is False


def test_compare_with_baseline_pairs_the_seeds_both_arms_ran():
    def run(final: float) -> dict[str, list[float]]:
        return {ACCURACY_KEY: [0.3] * 5 + [final] * FINAL_WINDOW}

    per_seed = {"grpo": {0: run(0.4), 1: run(0.5)}, "papo": {0: run(0.45), 1: run(0.6), 2: run(0.9)}}
    comparison = compare_with_baseline(per_seed)
    assert "vs_baseline" not in comparison["grpo"]["final"]
    papo = comparison["papo"]["final"]
    assert papo["per_seed"] == pytest.approx([0.45, 0.6, 0.9])
    assert papo["vs_baseline"]["differences"] == pytest.approx([0.05, 0.1])  # seed 2 has no grpo run
    assert comparison["papo"]["auc"]["vs_baseline"]["mean"] == pytest.approx(0.075 * FINAL_WINDOW / 15)


def test_moving_mean_is_the_trailing_mean_of_up_to_window_steps():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert moving_mean(values, 2).tolist() == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert moving_mean(values, 10).tolist() == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert moving_mean(values, 1) is values


def test_every_arm_keeps_its_colour_in_any_figure_and_other_runs_get_the_rest():
    full = arm_colours(list(ARM_NAMES))
    subset = arm_colours(["papo_high_gamma_double_entropy", "grpo", "papo_high_gamma_no_entropy"])
    assert all(subset[arm] == full[arm] for arm in ("grpo", "papo_high_gamma_no_entropy"))
    assert subset["papo_high_gamma_double_entropy"] not in full.values()
    sweep = arm_colours(["papo_gamma_0.02", "papo_gamma_2"])
    assert len(set(sweep.values())) == 2 and not set(sweep.values()) & set(full.values())
