"""End to end on the shipped scripts' path: ``python -m recipe.papo.main_papo`` on 2 CPU workers
with remove-padding, the reference model (low_var_kl) and several micro-batches per worker, and
the same with Ulysses sequence parallelism of size 2.

Both runs are real: Ray, TransferQueue, the "hf" rollout, the FSDP2 engine over gloo, verl's own
remove-padding code path around the CPU backend's packed attention (recipe/papo/cpu/varlen_attention.py)
and the reference model with its unpinned FSDP2 offload (recipe/papo/compat/verl_cpu.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipe.papo.cpu.launch import cpu_env, cpu_overrides
from recipe.papo.demo.reward import reward_overrides
from recipe.papo.demo.run_demo import PAPO_G_DEMO, read_metrics

pytestmark = pytest.mark.e2e

WORKERS = 2
PROMPTS, ROLLOUT_N = 4, 4  # 16 responses, 8 per worker
MICRO_BATCH = 2  # 4 micro-batches per worker per optimiser step
STEPS = 2
SCRIPTS_PATH = (
    "actor_rollout_ref.model.use_remove_padding=True",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.kl_loss_coef=0.01",
    f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={MICRO_BATCH}",
    f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={MICRO_BATCH}",
    f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={MICRO_BATCH}",
    # large enough that one update moves the policy measurably away from the reference in bf16
    "actor_rollout_ref.actor.optim.lr=1e-3",
)


def run_main_papo(
    tmp: Path, model_dir: Path, data: tuple[Path, Path], name: str, *extra: str
) -> tuple[list[dict], str]:
    """``main_papo`` on 2 CPU workers; returns (per-step metric records, log)."""
    overrides = cpu_overrides(
        model_dir,
        data[0],
        data[1],
        total_training_steps=STEPS,
        batch_size=PROMPTS,
        rollout_n=ROLLOUT_N,
        world_size=WORKERS,
        output_dir=tmp / name / "checkpoints",
        experiment_name=name,
    )
    command = [sys.executable, "-m", "recipe.papo.main_papo", *overrides, *reward_overrides(), *PAPO_G_DEMO, *extra]
    metrics = tmp / f"{name}.jsonl"
    result = subprocess.run(
        command, env={**os.environ, **cpu_env(metrics)}, cwd=tmp, capture_output=True, text=True, timeout=600
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} failed:\n{log[-6000:]}"
    return [r for r in read_metrics(metrics) if "training/global_step" in r["data"]], log


def assert_scripts_path_metrics(records: list[dict]) -> None:
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        data = record["data"]
        assert math.isfinite(data["actor/kl_loss"]), data  # the reference model ran every step
        assert data["papo/kl_prcp"] > 0 and math.isfinite(data["papo/kl_prcp"]), data
        assert math.isfinite(data["actor/pg_loss"]) and data["actor/grad_norm"] > 0, data
    # step 1 starts from the reference weights; after one update the policy has moved away from them
    assert records[-1]["data"]["actor/kl_loss"] > 0, records[-1]["data"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scripts_path")


def test_remove_padding_reference_kl_and_micro_batches_on_two_workers(workdir, tiny_model_dir, demo_data):
    records, log = run_main_papo(workdir, tiny_model_dir, demo_data, "rmpad_ref", *SCRIPTS_PATH)
    assert_scripts_path_metrics(records)
    assert "torch variable-length attention bound" in log or "Monkey patch Qwen2_5_VL" in log
    print(
        {
            r["step"]: (r["data"]["actor/kl_loss"], r["data"]["papo/kl_prcp"], r["data"]["timing_s/step"])
            for r in records
        }
    )


def test_ulysses_sequence_parallel_of_two_on_two_workers(workdir, tiny_model_dir, demo_data):
    records, _ = run_main_papo(
        workdir,
        tiny_model_dir,
        demo_data,
        "ulysses",
        *SCRIPTS_PATH,
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2",
        "actor_rollout_ref.ref.ulysses_sequence_parallel_size=2",
    )
    assert_scripts_path_metrics(records)
    print(
        {
            r["step"]: (r["data"]["actor/kl_loss"], r["data"]["papo/kl_prcp"], r["data"]["timing_s/step"])
            for r in records
        }
    )
