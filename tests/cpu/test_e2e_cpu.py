"""End to end: verl 0.9.1's own ``python -m verl.trainer.main_ppo`` (v1 trainer, GRPO) on CPU.

The run is real: Ray, TransferQueue, the FSDP2 engine on gloo, the "hf" rollout server, verl's
reward loop with the demo reward, validation and checkpointing, on the tiny random Qwen2.5-VL and
the demo counting task. Every response is generated to the full length (``ignore_eos``) and every
prompt has the same length, so every batch takes the equal-length ``position_ids`` path that
crashes verl 0.9.1 unpatched (see ``recipe/papo/compat/verl.py``).

One run: validation before training, 2 GRPO steps, validation and a checkpoint at step 2. Resuming
from a checkpoint is proven through ``main_papo`` (verl's same trainer and checkpoint code) in
``tests/e2e/test_demo_e2e.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from memory_slots import memory_slot

from papo_tools.cpu.launch import cpu_env, cpu_overrides
from papo_tools.demo.reward import reward_overrides

pytestmark = pytest.mark.e2e

VAL_ACC = "val-core/papo_demo/count_shapes/acc/mean@1"
RUN_TIMEOUT_S = 420


@dataclass
class Run:
    returncode: int
    log: str
    metrics: dict[int, dict]  # step -> metrics logged at that step (merged)
    wall_s: float


def run_main_ppo(workdir: Path, model_dir: Path, demo_data, name: str, **knobs) -> Run:
    """``python -m verl.trainer.main_ppo`` with the CPU overrides, plain GRPO and the demo reward."""
    metrics_path = workdir / f"{name}.jsonl"
    overrides = cpu_overrides(
        model_dir,
        demo_data[0],
        demo_data[1],
        output_dir=workdir / "checkpoints",
        ignore_eos=True,
        rollout="hf",  # plain GRPO's mechanics on the CPU backend; the SMOKE runs cover vLLM
        **knobs,
    )
    command = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides, "algorithm.adv_estimator=grpo"]
    command += reward_overrides()
    start = time.monotonic()
    with memory_slot("hf"):
        result = subprocess.run(
            command,
            env={**os.environ, **cpu_env(metrics_path)},
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    metrics: dict[int, dict] = {}
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line)
            metrics.setdefault(record["step"], {}).update(record["data"])
    return Run(result.returncode, result.stdout + result.stderr, metrics, time.monotonic() - start)


def assert_succeeded(run: Run) -> None:
    assert run.returncode == 0, run.log[-6000:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e_cpu")


@pytest.fixture(scope="module")
def first_run(workdir, tiny_model_dir, demo_data) -> Run:
    return run_main_ppo(
        workdir,
        tiny_model_dir,
        demo_data,
        "run1",
        total_training_steps=2,
        val_before_train=True,
        test_freq=2,
        save_freq=2,
    )


def test_grpo_steps_complete_with_finite_loss_and_gradients(first_run):
    assert_succeeded(first_run)
    for step in (1, 2):
        metrics = first_run.metrics[step]
        assert math.isfinite(metrics["actor/loss"]) and math.isfinite(metrics["actor/pg_loss"]), metrics
        assert math.isfinite(metrics["actor/grad_norm"]) and metrics["actor/grad_norm"] > 0, metrics
        # the demo reward spreads within groups, so GRPO advantages are non-zero
        assert metrics["critic/advantages/max"] > 0 > metrics["critic/advantages/min"], metrics
        # every sequence had the same length: the position_ids fix was on the path
        assert (
            metrics["response_length/clip_ratio"] == 1.0
            and metrics["prompt_length/min"] == metrics["prompt_length/max"]
        )
        print(f"step {step}: {metrics['timing_s/step']:.1f}s (gen {metrics['timing_s/gen']:.1f}s)")
    print(f"run 1 wall time {first_run.wall_s:.0f}s")


def test_validation_runs_before_training_and_at_test_freq(first_run):
    assert_succeeded(first_run)
    assert VAL_ACC in first_run.metrics[0] and VAL_ACC in first_run.metrics[2]
    assert 0.0 <= first_run.metrics[2][VAL_ACC] <= 1.0


def test_checkpoint_is_saved_at_save_freq(first_run, workdir):
    assert_succeeded(first_run)
    checkpoints = workdir / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert (checkpoints / "global_step_2" / "actor").is_dir()
