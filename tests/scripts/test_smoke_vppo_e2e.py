"""``SMOKE=1 bash scripts/run_qwen2_5_vl_7b_vppo.sh`` end to end on CPU, as a user runs it (issue 20).

One run of VPPO alone (docs/vppo.md) through verl's real v1 trainer (Ray, FSDP2 on 2 gloo workers,
the CPU backend's HF rollout: VPPO acts on the loss, and the suite's time goes to the vLLM runs of
``test_smoke_e2e.py``): the resolved ``config.yaml`` keeps the script's VPPO settings, and, from
``metrics.jsonl`` independently of the smoke command's own checks, every step logs finite ``vppo/*``
metrics with the kept fraction within 1/|y| of p = 0.4 (|y| the step's shortest response), shaping
weights of mean 1 in [beta_min, beta_max], and a loss that adds up.
"""

from __future__ import annotations

import math

import pytest
from script_runs import smoke_outputs

from papo_tools.smoke.sizes import micro_batches_per_worker

pytestmark = pytest.mark.e2e

SCRIPT = "run_qwen2_5_vl_7b_vppo.sh"
FRACTION, BETA_MIN, ENTROPY_COEF = 0.4, 0.9, 0.06
HF_ROLLOUT = "actor_rollout_ref.rollout.name=hf"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """(run, resolved config, training records, run.log) of the smoke run."""
    cwd = tmp_path_factory.mktemp("smoke_vppo")
    run, config, train = smoke_outputs(SCRIPT, HF_ROLLOUT, cwd=cwd)
    return run, config, train, (cwd / "smoke_output" / SCRIPT.removesuffix(".sh") / "run.log").read_text()


def test_resolved_config_keeps_the_vppo_settings(smoke_run):
    _, config, _, _ = smoke_run
    papo = config.papo
    assert (papo.vppo_token_fraction, papo.vppo_beta_min, papo.vppo_entropy_coef) == (
        FRACTION,
        BETA_MIN,
        ENTROPY_COEF,
    )
    assert (papo.kl_prcp_coef, papo.entropy_ori_coef, papo.entropy_aug_coef) == (0, 0, 0)
    assert config.actor_rollout_ref.actor.policy_loss.papo.vppo_token_fraction == FRACTION  # the workers' copy
    assert config.actor_rollout_ref.rollout.n == 8
    assert config.algorithm.filter_groups.enable is True and config.actor_rollout_ref.actor.use_kl_loss is False
    assert micro_batches_per_worker(config) >= 2


def test_masked_pass_is_shared(smoke_run):
    """The script's masked pass runs each prompt's masked prompt once (papo.share_masked_prompt, the default)."""
    _, config, _, log = smoke_run
    assert config.papo.share_masked_prompt is True
    assert "PAPO masked pass: shared" in log and "PAPO masked pass: full sequence" not in log


def test_vppo_metrics_are_healthy_every_step(smoke_run):
    run, _, train, _ = smoke_run
    assert [r["step"] for r in train] == [1, 2]
    assert "vppo/kept_frac" in run.stdout and "[smoke] OK" in run.stdout  # the printed table and verdict
    for record in train:
        data = record["data"]
        vppo = {k: v for k, v in data.items() if k.startswith("vppo/")}
        assert {"vppo/kept_frac", "vppo/weight_mean", "vppo/weight_min", "vppo/weight_max"} <= vppo.keys()
        assert all(math.isfinite(v) for v in vppo.values()), (record["step"], vppo)
        shortest = data["response_length/min"]
        assert FRACTION <= vppo["vppo/kept_frac"] < FRACTION + 1 / shortest, (record["step"], vppo, shortest)
        assert vppo["vppo/weight_mean"] == pytest.approx(1.0, abs=1e-5)
        assert vppo["vppo/weight_min"] == pytest.approx(BETA_MIN, abs=1e-5) or vppo["vppo/weight_max"] == 1.0
        assert vppo["vppo/weight_max"] >= 1.0
        assert vppo["vppo/entropy_loss"] > 0
        total = data["papo/loss"] + data["papo/base_loss"] + vppo["vppo/entropy_loss"]
        assert total == pytest.approx(data["actor/pg_loss"], rel=1e-4)
        assert data["papo/loss"] == 0.0 and data["papo/kl_prcp"] > 0  # VPPO alone: PAPO measured, not trained
