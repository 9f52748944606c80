"""``SMOKE=1`` end to end for each new family's PAPO-G script, on CPU through verl's real trainer.

Each run is the script's own configuration (reference KL, double entropy, micro-batching) on a tiny
random model of the script's family, 2 steps and a validation pass, as a user runs it, on the script's
rollout, verl's vLLM rollout on the CPU build of vLLM (for Qwen3.5 with the weight sync of its Gated
DeltaNet convolution repaired, ``papo_tools.compat.vllm_cpu.repack_on_load``):
``SMOKE=1 bash scripts/<script> key=value ...``.

The script's remove-padding path runs on the CPU backend's torch variable-length attention.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from memory_slots import memory_slot
from user_env import user_env

from papo_tools.demo.run_demo import read_jsonl
from papo_tools.smoke.checks import MIN_ROLLOUT_ACTOR_CORR, ROLLOUT_CORR_KEY

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("script", "model_type"),
    [("run_qwen3_vl_2b_papo_g.sh", "qwen3_vl"), ("run_qwen3_5_9b_papo_g.sh", "qwen3_5")],
)
def test_smoke_run_of_the_familys_papo_g_script(tmp_path, script, model_type):
    # A user's environment: SMOKE=1 switches the CPU backend on by itself where there is no CUDA.
    env = user_env({"SMOKE": "1", "SMOKE_OUT": str(tmp_path), "PYTHON": sys.executable})
    with memory_slot("vllm"):
        run = subprocess.run(
            ["bash", str(REPO / "scripts" / script)],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    folder = tmp_path / script.removesuffix(".sh")
    assert run.returncode == 0, f"{script} failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-4000:]}"

    config = yaml.safe_load((folder / "config.yaml").read_text())
    model_dir = Path(config["actor_rollout_ref"]["model"]["path"])
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == model_type
    actor = config["actor_rollout_ref"]["actor"]
    assert actor["use_kl_loss"] is True and actor["kl_loss_type"] == "low_var_kl"  # the script's, kept
    assert config["actor_rollout_ref"]["model"]["use_remove_padding"] is True
    assert config["papo"]["entropy_ori_coef"] == config["papo"]["entropy_aug_coef"] == 0.05
    assert config["data"]["image_patch_size"] == 16
    # The script's own engine, verl's vLLM rollout on the CPU build of vLLM
    assert config["actor_rollout_ref"]["rollout"]["name"] == "vllm"
    assert "rollout vllm)" in run.stdout

    records = read_jsonl(folder / "metrics.jsonl")
    steps = [record["data"] for record in records if "papo/kl_prcp" in record["data"]]
    assert len(steps) == 2
    for data in steps:
        assert data["papo/kl_prcp"] > 0
        assert data["papo/rows_without_image"] == 0
        assert "actor/kl_loss" in data
        assert data[ROLLOUT_CORR_KEY] >= MIN_ROLLOUT_ACTOR_CORR  # the rollout computes with the synced weights
