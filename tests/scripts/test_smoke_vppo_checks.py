"""SMOKE's health checks of the ``vppo/*`` metrics (docs/vppo.md) on hand-made metric records."""

from __future__ import annotations

import dataclasses
import math

import pytest

from papo_tools.smoke.checks import Expectations, VppoExpectations, check_records, metrics_table, vppo_expectations

# Everything off but the two steps and PAPO's masked pass (VPPO alone runs it: papo.enabled is true);
# fields with a default (the first step) keep it.
SETTINGS = {"steps": 2, "papo_enabled": True}
EXPECT = Expectations(
    **{
        f.name: SETTINGS.get(f.name, False)
        for f in dataclasses.fields(Expectations)
        if f.default is dataclasses.MISSING or f.name in SETTINGS
    }
)
VPPO = VppoExpectations(token_fraction=0.4)


def record(step: int, **data) -> dict:
    return {"step": step, "data": {"training/global_step": step, **data}}


def healthy_step(step: int, **change) -> dict:
    data = {
        "papo/kl_prcp": 1e-3,
        "papo/loss": 0.0,
        "papo/base_loss": 0.5,
        "vppo/entropy_loss": 0.06,
        "actor/pg_loss": 0.56,
        "response_length/min": 5.0,
        "vppo/kept_frac": 0.45,
        "vppo/score_mean": 2e-4,
        "vppo/score_kept_mean": 4e-4,
        "vppo/score_dropped_mean": 5e-5,
        "vppo/weight_mean": 1.0,
        "vppo/weight_min": 0.9,
        "vppo/weight_max": 1.4,
    }
    if step == 2:
        data["val-core/papo_demo/acc/mean@8"] = 0.0
    return record(step, **{**data, **change})


def test_a_healthy_vppo_run_passes_and_its_metrics_are_tabled():
    records = [healthy_step(1), healthy_step(2)]
    assert check_records(records, EXPECT, VPPO) == []
    table = metrics_table(records)
    assert "vppo/kept_frac" in table and "vppo/weight_max" in table


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vppo/kept_frac": 0.39}, "step 2: vppo/kept_frac = 0.39, expected within 1/|y|"),
        ({"vppo/kept_frac": 0.61}, "step 2: vppo/kept_frac = 0.61, expected within 1/|y|"),  # 1/|y| = 0.2
        ({"vppo/weight_max": math.nan}, "step 2: vppo/weight_max = nan is not finite"),
        ({"vppo/weight_mean": 1.01}, "step 2: vppo/weight_mean = 1.01, expected 1"),
        ({"vppo/entropy_loss": 0.0}, "step 2: papo/loss + papo/base_loss (+ vppo/entropy_loss)"),
    ],
)
def test_unhealthy_vppo_metrics_fail_naming_step_and_metric(change, message):
    failures = check_records([healthy_step(1), healthy_step(2, **change)], EXPECT, VPPO)
    assert any(message in failure for failure in failures), failures


def test_missing_vppo_metrics_fail():
    step2 = healthy_step(2)
    del step2["data"]["vppo/kept_frac"]
    failures = check_records([healthy_step(1), step2], EXPECT, VPPO)
    assert any("step 2: VPPO is on but vppo/kept_frac was not logged" in f for f in failures), failures


def test_vppo_expectations_follow_the_start_up_summary():
    assert vppo_expectations({"papo.vppo_token_fraction": None, "papo.vppo_beta_min": None}) is None
    assert vppo_expectations({"papo.vppo_entropy_coef": 0.06}) == VppoExpectations(token_fraction=None)
    assert vppo_expectations({"papo.vppo_token_fraction": 0.4, "papo.vppo_beta_min": 0.9}) == VPPO
    # with VPPO off, the vppo/* checks do not run (a plain PAPO run logs no vppo/* metric)
    plain = [healthy_step(1), healthy_step(2)]
    for step in plain:
        step["data"] = {k: v for k, v in step["data"].items() if not k.startswith("vppo/")}
        step["data"]["actor/pg_loss"] = 0.5
    assert check_records(plain, EXPECT) == []
