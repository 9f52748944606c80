"""Per-step metric curves of every arm, mean and spread over seeds, as ``summary.json``.

Layout::

    {"arms":     {arm: {metric: [mean over seeds, one value per step]}},
     "spread":   {arm: {metric: [population std over seeds, per step]}},
     "per_seed": {arm: {seed: {metric: [value per step]}}},
     "steps":    [1, 2, ...],
     "run":      {free-form description of the run: command, sizes, seeds, timings}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

# Always in the summary (a run lacking one is an error).
REQUIRED_METRICS: tuple[str, ...] = (
    "papo/kl_prcp",
    "papo/entropy_ori",
    "papo/entropy_aug",
    "critic/score/mean",
)
# Also kept when verl logs them.
OPTIONAL_METRICS: tuple[str, ...] = (
    "papo/logprob_gap",
    "actor/kl_loss",
    "actor/grad_norm",
    "response_length/mean",
)


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
    """The summary of ``per_seed`` curves (``{arm: {seed: {metric: values}}}``): mean and spread."""
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
        "steps": list(range(1, num_steps + 1)),
        "run": run,
    }


def all_finite(summary: dict[str, Any]) -> bool:
    """Whether every curve value of ``summary["arms"]`` is a finite number."""
    return all(math.isfinite(v) for arm in summary["arms"].values() for values in arm.values() for v in values)


def write_summary(summary: dict[str, Any], path: Path) -> Path:
    """Write ``summary`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return path
