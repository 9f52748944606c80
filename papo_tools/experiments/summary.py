"""Per-step metric curves of every arm, mean and spread over seeds, as ``summary.json``.

Layout::

    {"arms":       {arm: {metric: [mean over seeds, one value per step]}},
     "spread":     {arm: {metric: [population std over seeds, per step]}},
     "per_seed":   {arm: {seed: {metric: [value per step]}}},
     "comparison": {arm: {measure: paired comparison with the baseline arm}}  (compare_with_baseline)
     "steps":      [1, 2, ...],
     "run":        {free-form description of the run: command, sizes, seeds, timings}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

ACCURACY_KEY = "task/accuracy"  # share of a step's responses with the right count first (papo_tools.experiments.run)
# Always in the summary (a run lacking one is an error).
REQUIRED_METRICS: tuple[str, ...] = (
    ACCURACY_KEY,
    "papo/kl_prcp",
    "papo/entropy_ori",
    "papo/entropy_aug",
    "critic/score/mean",
)
# Also kept when logged at every step (the vppo/* ones by the arms with VPPO on).
OPTIONAL_METRICS: tuple[str, ...] = (
    "papo/logprob_gap",
    "actor/kl_loss",
    "actor/grad_norm",
    "response_length/mean",
    "vppo/kept_frac",
    "vppo/score_mean",
    "vppo/score_kept_mean",
    "vppo/score_dropped_mean",
    "vppo/weight_min",
    "vppo/weight_max",
)
BASELINE_ARM = "grpo"
FINAL_WINDOW = 10  # steps at the end of a run whose mean accuracy is its "final accuracy"


def curves(
    records: list[dict], metrics: tuple[str, ...] = REQUIRED_METRICS + OPTIONAL_METRICS
) -> dict[str, list[float]]:
    """``{metric: [value at step 1, 2, ...]}`` from file-logger records (one per training step).

    Raises:
        KeyError: a required metric is missing at some step (names the step and the metric).
    """
    records = sorted(records, key=lambda record: record["step"])
    result: dict[str, list[float]] = {}
    for metric in metrics:
        present = [metric in record["data"] for record in records]
        if metric in REQUIRED_METRICS and not all(present):
            step = records[present.index(False)]["step"]
            raise KeyError(f"metric {metric!r} missing at step {step}; is the run a main_papo run with papo/* logged?")
        if all(present):
            result[metric] = [float(record["data"][metric]) for record in records]
    return result


def aggregate(per_seed: dict[str, dict[int, dict[str, list[float]]]], run: dict[str, Any]) -> dict[str, Any]:
    """The summary of ``per_seed`` curves (``{arm: {seed: {metric: values}}}``): mean and spread, and the
    comparison with the baseline where every curve set has :data:`ACCURACY_KEY`."""
    has_accuracy = all(ACCURACY_KEY in c for seeds in per_seed.values() for c in seeds.values())
    arms: dict[str, dict[str, list[float]]] = {}
    spread: dict[str, dict[str, list[float]]] = {}
    num_steps = 0
    for arm, seeds in per_seed.items():
        common = set.intersection(*(set(curves_of_seed) for curves_of_seed in seeds.values()))
        arms[arm], spread[arm] = {}, {}
        for metric in sorted(common):
            values = np.array([seeds[seed][metric] for seed in sorted(seeds)], dtype=np.float64)  # (seeds, steps)
            arms[arm][metric] = values.mean(axis=0).tolist()
            spread[arm][metric] = values.std(axis=0).tolist()
            num_steps = values.shape[1]
    return {
        "arms": arms,
        "spread": spread,
        "per_seed": {arm: {str(seed): c for seed, c in seeds.items()} for arm, seeds in per_seed.items()},
        "comparison": compare_with_baseline(per_seed) if has_accuracy else {},
        "steps": list(range(1, num_steps + 1)),
        "run": run,
    }


def accuracy_measures(accuracy: list[float]) -> dict[str, float]:
    """``final``: mean accuracy over the last :data:`FINAL_WINDOW` steps; ``auc``: the mean over all
    steps (the area under the accuracy curve per step, in [0, 1])."""
    return {"final": float(np.mean(accuracy[-FINAL_WINDOW:])), "auc": float(np.mean(accuracy))}


def paired_difference(arm_values: list[float], baseline_values: list[float]) -> dict[str, Any]:
    """Compare one measure of an arm with the baseline's, seed by seed (same seed = same start and data).

    Returns:
        ``differences`` (arm - baseline per seed), ``mean`` and ``std`` (sample std, ddof 1) of the
        differences, ``baseline_spread`` (sample std of the baseline's values over seeds), and
        ``exceeds_spread``: whether ``|mean|`` is larger than both ``std`` and ``baseline_spread``,
        i.e. whether the difference stands out from the seed-to-seed variation; ``None`` with fewer
        than 2 seeds, where there is no spread to compare with. With 3 seeds this is a plain-language
        screen, not a significance test.
    """
    arm = np.asarray(arm_values, dtype=np.float64)
    base = np.asarray(baseline_values, dtype=np.float64)
    differences = arm - base
    mean = float(differences.mean())
    if len(differences) < 2:
        return {
            "differences": differences.tolist(),
            "mean": mean,
            "std": None,
            "baseline_spread": None,
            "exceeds_spread": None,
        }
    std, spread = float(differences.std(ddof=1)), float(base.std(ddof=1))
    return {
        "differences": differences.tolist(),
        "mean": mean,
        "std": std,
        "baseline_spread": spread,
        "exceeds_spread": bool(abs(mean) > max(std, spread)),
    }


def compare_with_baseline(
    per_seed: dict[str, dict[int, dict[str, list[float]]]], baseline: str = BASELINE_ARM
) -> dict[str, dict[str, Any]]:
    """``{arm: {measure: {"per_seed", "mean", "spread", "vs_baseline"}}}`` for the measures of
    :func:`accuracy_measures`; ``vs_baseline`` (:func:`paired_difference`) over the seeds both arms ran,
    absent for the baseline itself or when it did not run."""
    measures = {
        arm: {seed: accuracy_measures(curves_of_seed[ACCURACY_KEY]) for seed, curves_of_seed in seeds.items()}
        for arm, seeds in per_seed.items()
    }
    base_measures = measures.get(baseline, {})
    result: dict[str, dict[str, Any]] = {}
    for arm, by_seed in measures.items():
        common = sorted(set(by_seed) & set(base_measures))
        result[arm] = {}
        for name in ("final", "auc"):
            values = [by_seed[seed][name] for seed in sorted(by_seed)]
            entry: dict[str, Any] = {
                "per_seed": values,
                "mean": float(np.mean(values)),
                "spread": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            }
            if arm != baseline and common:
                entry["vs_baseline"] = paired_difference(
                    [by_seed[seed][name] for seed in common], [base_measures[seed][name] for seed in common]
                )
            result[arm][name] = entry
    return result


def all_finite(summary: dict[str, Any]) -> bool:
    """Whether every curve value of ``summary["arms"]`` is a finite number."""
    return all(math.isfinite(v) for arm in summary["arms"].values() for values in arm.values() for v in values)


def write_summary(summary: dict[str, Any], path: Path) -> Path:
    """Write ``summary`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return path
