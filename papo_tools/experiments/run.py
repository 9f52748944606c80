"""Run one arm of the experiment for one seed through ``python -m recipe.papo.main_papo`` on CPU.

Each run is a fresh process (verl's real v1 trainer, Ray, FSDP2 on gloo, the CPU "hf" rollout)
whose metrics are read back from verl's ``file`` logger. verl logs the mean shaped score, not the
accuracy, so the trainer also dumps every step's rollouts (``trainer.rollout_data_dir``) and the
accuracy of a step (:data:`ACCURACY_KEY`) is the share of its responses that
:func:`~papo_tools.demo.reward.score_count_answer` counts as correct.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from papo_tools.cpu.launch import cpu_env, cpu_overrides
from papo_tools.demo.reward import reward_overrides, score_count_answer
from papo_tools.demo.run_demo import read_jsonl, read_metrics
from papo_tools.experiments.arms import Arm
from papo_tools.experiments.cluster import RayHead, joining_command
from papo_tools.experiments.summary import ACCURACY_KEY

# GRPO as in PAPO-G (the published settings of arXiv 2507.06448): low_var_kl reference-KL loss 0.01, clip
# 0.2 / 0.3. The learning rate is the toy scale's (the paper's 1e-6 moves a tiny model nowhere).
BASE_OVERRIDES: tuple[str, ...] = (
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.kl_loss_coef=0.01",
    "actor_rollout_ref.actor.clip_ratio_low=0.2",
    "actor_rollout_ref.actor.clip_ratio_high=0.3",
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0",
    "actor_rollout_ref.actor.optim.weight_decay=0.01",
    "actor_rollout_ref.rollout.temperature=1.0",
    "algorithm.filter_groups.enable=False",
)


ROLLOUTS_DIR = "rollouts"  # verl's per-step rollout dumps (<step>.jsonl) inside a run directory


@dataclass(frozen=True)
class RunSize:
    """Size of one run.

    Attributes:
        steps: training steps (one rollout batch and one optimiser step each).
        batch_size: prompts per step.
        rollout_n: responses per prompt (the GRPO group).
        max_response_length: response budget in tokens (an answer is a digit and ``<|im_end|>``).
        lr: actor learning rate (AdamW, constant).
    """

    steps: int
    batch_size: int = 8
    rollout_n: int = 5
    max_response_length: int = 8
    lr: float = 5e-4


def arm_command(
    arm: Arm, seed: int, model_dir: Path, train: Path, val: Path, run_dir: Path, size: RunSize
) -> list[str]:
    """The ``main_papo`` command line of ``arm`` at ``seed``."""
    overrides = cpu_overrides(
        model_dir,
        train,
        val,
        total_training_steps=size.steps,
        batch_size=size.batch_size,
        rollout_n=size.rollout_n,
        max_prompt_length=128,
        max_response_length=size.max_response_length,
        output_dir=run_dir / "checkpoints",
        project_name="papo_dynamics",
        experiment_name=f"{arm.name}_seed{seed}",
        rollout="hf",  # dozens of short runs: no vLLM start-up per run (papo_tools.cpu.launch.rollout_overrides)
    )
    seeded = (f"data.seed={seed}", f"papo.mask_seed={seed}", f"actor_rollout_ref.actor.optim.lr={size.lr}")
    dumps = (f"trainer.rollout_data_dir={run_dir / ROLLOUTS_DIR}",)
    return [
        sys.executable,
        "-m",
        "recipe.papo.main_papo",
        *overrides,
        *reward_overrides(),
        *BASE_OVERRIDES,
        *seeded,
        *dumps,
        *arm.overrides,
    ]


def step_accuracy(dump_path: Path) -> float:
    """Accuracy of one step's rollout dump (verl's ``<step>.jsonl``: one response per line, ``output``, ``gts``)."""
    rows = read_jsonl(dump_path)
    if not rows:
        raise ValueError(f"{dump_path} holds no rollouts")
    return sum(score_count_answer(row["output"], str(row["gts"]))["acc"] for row in rows) / len(rows)


def _steps_logged(run_dir: Path) -> list[dict]:
    """The training-step records of a run's metrics file (validation-only records left out), each with
    :data:`ACCURACY_KEY` from its step's rollout dump where that dump exists."""
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "critic/score/mean" in r["data"]]
    for record in records:
        dump = run_dir / ROLLOUTS_DIR / f"{record['step']}.jsonl"
        if dump.exists():
            record["data"][ACCURACY_KEY] = step_accuracy(dump)
    return records


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 of the starting weights (``model_dir/*.safetensors``, by name), hex; ``""`` without any."""
    paths = sorted(Path(model_dir).glob("*.safetensors"))
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest() if paths else ""


def run_arm(
    arm: Arm,
    seed: int,
    model_dir: Path,
    train: Path,
    val: Path,
    run_dir: Path,
    size: RunSize,
    head: RayHead | None = None,
) -> tuple[list[dict], float]:
    """Train ``arm`` at ``seed``; returns its per-step metric records and the run's wall seconds.

    With ``head`` the trainer joins that running Ray cluster instead of starting its own
    (:mod:`~papo_tools.experiments.cluster`); the run is the same :func:`arm_command` either way, and
    ``run.json`` records that command.

    Writes ``run_dir/train.log`` (the command, then the trainer's output), ``metrics.jsonl`` and
    ``run.json`` (command, :func:`model_fingerprint` and wall seconds of a finished run). A
    ``run_dir`` whose ``run.json`` holds the same command and the fingerprint of the same starting
    weights, and whose metrics hold every step, is reused as it is, so an interrupted or extended
    experiment (more seeds) runs only what is missing, and a changed warm-up trains afresh.

    Raises:
        RuntimeError: the trainer exited with an error or logged fewer steps than asked for.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path, log_path, record_path = run_dir / "metrics.jsonl", run_dir / "train.log", run_dir / "run.json"
    command = arm_command(arm, seed, model_dir, train, val, run_dir, size)
    fingerprint = model_fingerprint(model_dir)
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record["command"] == command and record.get("model") == fingerprint:
            finished = _steps_logged(run_dir)  # reads every rollout dump: only for a matching record
            if len(finished) == size.steps:
                return finished, record["wall_s"]
    record_path.unlink(missing_ok=True)
    metrics_path.unlink(missing_ok=True)
    shutil.rmtree(run_dir / ROLLOUTS_DIR, ignore_errors=True)
    env = {**os.environ, **cpu_env(file_logger_path=metrics_path)}
    launched = command
    if head is not None:
        env.update(head.env())
        launched = joining_command(command, metrics_path)
    started = time.monotonic()
    with log_path.open("w") as log:
        log.write(" ".join(launched) + "\n")
        log.flush()
        result = subprocess.run(launched, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall_s = round(time.monotonic() - started, 1)
    records = _steps_logged(run_dir)
    if result.returncode != 0 or len(records) < size.steps:
        raise RuntimeError(
            f"arm {arm.name} seed {seed}: trainer exit code {result.returncode}, {len(records)} of {size.steps} "
            f"steps logged; see {log_path}"
        )
    record_path.write_text(json.dumps({"command": command, "model": fingerprint, "wall_s": wall_s}))
    return records, wall_s
