"""``SMOKE=1 bash scripts/run_qwen2_5_vl_7b_papo_gspo.sh`` end to end on CPU, as a user runs it (issue 21).

PAPO on GSPO's sequence-level surrogate (docs/compose.md) through verl's real v1 trainer (Ray, FSDP2 on 2
gloo workers, the CPU backend's HF rollout: the composition acts on the loss, and the suite's time goes
to the vLLM runs of ``test_smoke_e2e.py``). The resolved ``config.yaml`` keeps GSPO's published settings
and PAPO's no-reference-KL coefficients; from ``metrics.jsonl``, independently of the smoke command's
own checks, every step's PAPO terms are finite and add up to the loss verl optimised.
"""

from __future__ import annotations

import math

import pytest
from script_runs import smoke_outputs

from papo_tools.smoke.sizes import micro_batches_per_worker

pytestmark = pytest.mark.e2e

SCRIPT = "run_qwen2_5_vl_7b_papo_gspo.sh"
HF_ROLLOUT = "actor_rollout_ref.rollout.name=hf"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """(run, resolved config, training records) of the smoke run."""
    return smoke_outputs(SCRIPT, HF_ROLLOUT, cwd=tmp_path_factory.mktemp("smoke_gspo"))


def test_resolved_config_keeps_gspos_and_papos_settings(smoke_run):
    _, config, _ = smoke_run
    actor = config.actor_rollout_ref.actor
    assert config.papo.base_loss_mode == "gspo" and actor.policy_loss.papo.base_loss_mode == "gspo"
    assert actor.policy_loss.loss_mode == "papo"
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.loss_agg_mode) == (3e-4, 4e-4, "seq-mean-token-mean")
    assert actor.use_kl_loss is False
    assert (config.papo.kl_prcp_coef, config.papo.entropy_ori_coef, config.papo.entropy_aug_coef) == (0.01, 0.03, 0.03)
    assert config.algorithm.filter_groups.enable is False
    assert micro_batches_per_worker(config) >= 2


def test_papo_terms_add_up_to_the_gspo_loss_every_step(smoke_run):
    run, _, train = smoke_run
    assert [r["step"] for r in train] == [1, 2]
    assert "[smoke] OK" in run.stdout
    for record in train:
        data = record["data"]
        papo = {k: v for k, v in data.items() if k.startswith("papo/")}
        assert papo and all(math.isfinite(v) for v in papo.values()), (record["step"], papo)
        assert papo["papo/kl_prcp"] > 0 and papo["papo/gamma"] == 0.01
        assert papo["papo/loss"] + papo["papo/base_loss"] == pytest.approx(data["actor/pg_loss"], rel=1e-4)
        assert "actor/kl_loss" not in data
