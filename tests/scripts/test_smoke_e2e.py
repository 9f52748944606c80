"""``SMOKE=1 bash scripts/<name>.sh`` end to end on CPU, as a user runs it (issue 9 item 5).

Two runs through verl's real v1 trainer (Ray, FSDP2 on 2 gloo workers; PAPO-D on verl's own vLLM rollout
on the CPU build of vLLM, as the scripts say, PAPO-G on the HF rollout), each a shipped script with a
user's pass-through overrides: PAPO-D 7B (dynamic sampling) with the masked branch recomputed with
gradient and verl's RLOO advantage (docs/compose.md), and PAPO-G 7B (reference KL + double entropy,
precompute mode) with Ulysses sequence parallelism 2 and Dr.GRPO's aggregation
(``seq-mean-token-sum-norm`` with a constant ``loss_scale_factor``, advantages not divided by the std).
Each asserts the resolved ``config.yaml`` (the script's settings kept: remove-padding on, reference KL
as the script says, >= 2 micro-batches per worker) and, from ``metrics.jsonl`` independently of the
smoke command's own checks, every step's metrics.

These runs are also the suite's proof of the scripts' path on CPU: remove-padding through verl's own
code around the CPU backend's packed attention, the reference model, several micro-batches per
worker on 2 workers, and Ulysses SP=2. The SP=2 run passes a larger learning rate, so that one update
moves the policy measurably away from the reference in bf16 and step 2's reference KL is > 0. What it
checks is the trainer's side, so it runs on the CPU backend's HF rollout: the PAPO-G script on verl's
vLLM rollout runs in the journey (``tests/e2e/test_journey.py``, one node) and on two nodes
(``tests/e2e/test_multi_node.py``), and only one vLLM run fits in memory at a time. The PAPO-G script
without overrides runs in ``tests/families`` for Qwen3-VL and Qwen3.5, and SP=1 remove-padding on
Qwen2.5-VL in the VPPO SMOKE run (``test_smoke_vppo_e2e.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from script_runs import HF_ROLLOUT, run_smoke

from papo_tools.demo.run_demo import read_jsonl
from papo_tools.smoke.sizes import micro_batches_per_worker

pytestmark = pytest.mark.e2e

SP2 = "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"
MOVING_LR = "actor_rollout_ref.actor.optim.lr=1e-3"
RECOMPUTE = "papo.masked_logprob_mode=recompute"
RLOO = "algorithm.adv_estimator=rloo"
DR_GRPO = (
    "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm",
    "actor_rollout_ref.actor.loss_scale_factor=16",  # SMOKE's max response length
    "algorithm.norm_adv_by_std_in_grpo=False",
)
RUNS = {
    # PAPO-D 7B with the masked branch recomputed with gradient (the mode that needs
    # recipe.papo.compat.verl_engine inside every update micro-batch), on verl's RLOO advantage
    "papo_d": ("run_qwen2_5_vl_7b_papo_d.sh", (RECOMPUTE, RLOO)),
    # PAPO-G 7B (precompute mode) with Ulysses SP=2, Dr.GRPO's normalisation and a step large enough
    # to leave the reference, on the HF rollout (module docstring)
    "papo_g_sp2": ("run_qwen2_5_vl_7b_papo_g.sh", (SP2, MOVING_LR, *DR_GRPO, HF_ROLLOUT)),
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def smoke_run(request, tmp_path_factory):
    """(run, output folder, resolved config, training records) of one smoke run."""
    name, args = RUNS[request.param]
    cwd = tmp_path_factory.mktemp(f"smoke_{request.param}")
    run = run_smoke(name, *args, cwd=cwd)
    folder = cwd / "smoke_output" / name.removesuffix(".sh")
    log = (folder / "run.log").read_text() if (folder / "run.log").exists() else ""
    assert run.returncode == 0, (
        f"{request.param}: rc={run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-3000:]}\n{log[-6000:]}"
    )
    # remove-padding ran verl's packed path over the CPU backend's variable-length attention
    assert "torch variable-length attention bound" in log or "Monkey patch Qwen2_5_VL" in log
    config = OmegaConf.load(folder / "config.yaml")
    records = read_jsonl(folder / "metrics.jsonl")
    train = [r for r in records if "training/global_step" in r["data"]]
    return request.param, run, config, records, train, log


def test_resolved_config_keeps_the_script_settings(smoke_run):
    key, _, config, _, _, _ = smoke_run
    actor = config.actor_rollout_ref.actor
    assert config.actor_rollout_ref.model.use_remove_padding is True
    assert actor.use_kl_loss is key.startswith("papo_g")
    if actor.use_kl_loss:
        assert (actor.kl_loss_type, actor.kl_loss_coef) == ("low_var_kl", 0.01)
    assert config.algorithm.filter_groups.enable is (key == "papo_d")
    assert micro_batches_per_worker(config) >= 2
    assert actor.ulysses_sequence_parallel_size == (2 if key.endswith("sp2") else 1)
    assert config.actor_rollout_ref.rollout.n == 5 and config.actor_rollout_ref.rollout.val_kwargs.n == 8
    assert config.trainer.logger == ["console", "file"]
    # PAPO-D: the script's engine, on the CPU build of vLLM; PAPO-G: the HF rollout it passes
    assert config.actor_rollout_ref.rollout.name == ("vllm" if key == "papo_d" else "hf")
    assert config.actor_rollout_ref.rollout.engine_kwargs.vllm.mm_device_do_normalize is False
    assert config.algorithm.adv_estimator == ("rloo" if key == "papo_d" else "papo")
    assert actor.loss_agg_mode == ("token-mean" if key == "papo_d" else "seq-mean-token-sum-norm")
    assert config.algorithm.norm_adv_by_std_in_grpo is (key == "papo_d")
    assert (
        json.loads((Path(config.actor_rollout_ref.model.path) / "config.json").read_text())["model_type"]
        == "qwen2_5_vl"
    )


def test_two_steps_and_one_validation_pass(smoke_run):
    _, run, _, records, train, _ = smoke_run
    assert [r["step"] for r in train] == [1, 2]
    validation = [r["step"] for r in records if any(k.startswith("val-") for k in r["data"])]
    assert validation == [2]
    assert "papo/kl_prcp" in run.stdout and "[smoke] OK" in run.stdout  # the printed table and verdict


def test_papo_metrics_are_healthy_every_step(smoke_run):
    key, _, config, _, train, _ = smoke_run
    for record in train:
        data = record["data"]
        papo = {k: v for k, v in data.items() if k.startswith("papo/")}
        assert papo and all(math.isfinite(v) for v in papo.values()), (record["step"], papo)
        assert papo["papo/kl_prcp"] > 0
        assert papo["papo/loss"] + papo["papo/base_loss"] == pytest.approx(data["actor/pg_loss"], rel=1e-4)
        if config.actor_rollout_ref.actor.use_kl_loss:
            assert math.isfinite(data["actor/kl_loss"])
        else:
            assert "actor/kl_loss" not in data
    if MOVING_LR in RUNS[key][1]:  # step 1 starts from the reference weights; one larger update moves away
        assert train[-1]["data"]["actor/kl_loss"] > 0, train[-1]["data"]


def test_masked_branch_mode_is_the_runs_own(smoke_run):
    """Recompute mode runs no precomputed masked pass (no logprob gap) and still measures KL_prcp."""
    key, _, config, _, train, _ = smoke_run
    recompute = RECOMPUTE in RUNS[key][1]
    assert config.papo.masked_logprob_mode == ("recompute" if recompute else "precompute")
    for record in train:
        assert ("papo/logprob_gap" in record["data"]) is not recompute, (key, record["step"])


def test_masked_pass_says_why_it_is_not_shared(smoke_run):
    """Both runs are where the shared masked pass cannot apply (recompute mode; Ulysses SP): the full pass
    runs, and the workers' start-up line says why (a script without these overrides shares it:
    test_smoke_vppo_e2e.py asserts the line of the VPPO script's run)."""
    key, _, _, _, _, log = smoke_run
    reason = "papo.masked_logprob_mode=recompute" if key == "papo_d" else "Ulysses sequence parallelism"
    assert f"PAPO masked pass: full sequence per rollout, not shared: {reason}" in log
    assert "PAPO masked pass: shared" not in log
