"""The KL_prcp hacking guard live: the collapse arm of docs/dynamics.md with ``papo.hacking_guard=stop``.

The experiment's own pieces (:mod:`papo_tools.experiments`): seed 0's tiny model warmed up as the
committed runs' was (35 steps, where its probe reached the target accuracy; the probes themselves are
skipped here, they do not change the weights) and its counting task, then the collapse arm (PAPO-G at
gamma 2 without the Double Entropy Loss) through ``python -m recipe.papo.main_papo`` on CPU, exactly
the arm's command of the committed runs (which collapsed at step 4 or 5 in every seed), plus the
guard on ``stop``. The run is asked for 10 steps and must end early, at the alarm, with a checkpoint
of that step, an ERROR naming the metrics and remedies, and a collapsed model at that step (accuracy
from the rollout dump, both entropies near ln(272)). Cost: 35 plain-torch warm-up steps and one Ray
run of about 6 steps (5.5 min on a busy 2-core machine, most of it Ray's start-up and the warm-up).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from memory_slots import memory_slot
from user_env import user_env

from papo_tools.cpu.launch import cpu_env
from papo_tools.demo.run_demo import read_metrics
from papo_tools.experiments.arms import ARMS
from papo_tools.experiments.run import ROLLOUTS_DIR, RunSize, arm_command, step_accuracy

pytestmark = pytest.mark.e2e

SEED = 0
STEPS = 10
WARMUP_STEPS = 35  # seed 0's warm-up in docs/dynamics.md stopped here (probe accuracy 0.409)
COLLAPSE_ARM = "papo_high_gamma_no_entropy"
VOCAB_SIZE = 272  # the tiny model's (papo_tools/demo/tiny_model.py)

# The warm-up runs plain HF model code, which verl's engine patches class-wide once a worker is built
# in a process: it runs in a fresh interpreter, as the experiment's own command does.
PREPARE = """
import sys
from pathlib import Path
from papo_tools.experiments.dynamics import NUM_TRAIN_ROWS, NUM_VAL_ROWS
from papo_tools.experiments.task import write_task
from papo_tools.experiments.warmup import WarmupConfig, warm_up_model
out = Path(sys.argv[1])
warmed = warm_up_model(out / "model", {seed}, WarmupConfig(steps={steps}, target_accuracy=None))
write_task(out / "data", NUM_TRAIN_ROWS, NUM_VAL_ROWS, {seed})
print(f"start accuracy {{warmed.start_accuracy:.4f}}")
"""


def test_the_collapse_arm_ends_at_the_alarm_with_a_checkpoint(tmp_path):
    prepared = subprocess.run(
        [sys.executable, "-c", PREPARE.format(seed=SEED, steps=WARMUP_STEPS), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=user_env(),
    )
    assert prepared.returncode == 0, prepared.stdout[-2000:] + prepared.stderr[-3000:]
    # near the committed seed 0's start, 0.409 (papo_tools/experiments/results/dynamics_summary.json;
    # float rounding differs between CPUs)
    start = float(prepared.stdout.rsplit("start accuracy", 1)[1])
    assert 0.35 < start < 0.47, prepared.stdout
    arm = next(arm for arm in ARMS if arm.name == COLLAPSE_ARM)
    run_dir = tmp_path / arm.name
    data = tmp_path / "data"
    train, val = data / "train.parquet", data / "val.parquet"
    assert train.exists() and val.exists(), sorted(p.name for p in data.iterdir())
    command = arm_command(arm, SEED, tmp_path / "model", train, val, run_dir, RunSize(steps=STEPS))
    command.append("papo.hacking_guard=stop")
    env = {**user_env(), **cpu_env(file_logger_path=run_dir / "metrics.jsonl")}
    run_dir.mkdir(parents=True)
    with memory_slot("hf"):
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
    log = result.stdout + result.stderr
    (run_dir / "train.log").write_text(log)
    assert result.returncode == 0, log[-5000:]

    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "critic/score/mean" in r["data"]]
    steps = [r["step"] for r in records]
    stop = steps[-1]
    assert steps == list(range(1, stop + 1)) and 2 <= stop < STEPS, steps
    alarms = [r["data"]["papo/hacking_alarm"] for r in records[1:]]  # step 1 has no previous step to compare
    assert alarms == [0.0] * (len(alarms) - 1) + [1.0], alarms
    assert records[-1]["data"]["papo/hacking_score"] >= 1.0
    assert all(r["data"]["papo/hacking_score"] < 1.0 for r in records[:-1])

    # the checkpoint of the stop step, written by verl's own _save_checkpoint
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == str(stop)
    actor = checkpoints / f"global_step_{stop}" / "actor"
    assert actor.is_dir() and any(actor.iterdir()), sorted(p.name for p in checkpoints.rglob("*"))
    assert [p.name for p in checkpoints.glob("global_step_*")] == [f"global_step_{stop}"]

    # the ERROR with the metrics and remedies, and the clear end
    assert f"KL_prcp hacking suspected at step {stop}" in log
    assert "Remedies (arXiv 2507.06448" in log and "papo.entropy_ori_coef" in log
    assert f"papo.hacking_guard=stop: the run ends after step {stop} (of {STEPS})" in log

    # ... and the model had collapsed at that step: near-uniform outputs at the length limit, accuracy ~0
    last = records[-1]["data"]
    ln_vocab = math.log(VOCAB_SIZE)
    assert last["papo/entropy_ori"] > 0.95 * ln_vocab and last["papo/entropy_aug"] > 0.95 * ln_vocab
    assert last["response_length/mean"] >= 0.9 * 8
    assert step_accuracy(run_dir / ROLLOUTS_DIR / f"{stop}.jsonl") <= 0.1
    assert records[0]["data"]["papo/entropy_ori"] < 0.5 * ln_vocab  # it rose: the warm-up left a healthy model
