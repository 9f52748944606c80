"""A finished run is reused only when its command and step count match (no trainer is started)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import papo_tools.experiments.run as run_module
from papo_tools.experiments.arms import ARMS
from papo_tools.experiments.run import (
    ROLLOUTS_DIR,
    RunSize,
    arm_command,
    model_fingerprint,
    run_arm,
    step_accuracy,
)
from papo_tools.experiments.summary import ACCURACY_KEY


def _finish(run_dir: Path, command: list[str], steps: int, model: str = "") -> None:
    run_dir.mkdir(parents=True)
    records = [{"step": s, "data": {"critic/score/mean": 0.5, "papo/kl_prcp": 0.1 * s}} for s in range(1, steps + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "run.json").write_text(json.dumps({"command": command, "model": model, "wall_s": 12.5}))


def test_a_finished_run_with_the_same_command_is_reused(tmp_path):
    paths = (tmp_path / "model", tmp_path / "train.parquet", tmp_path / "val.parquet", tmp_path / "run")
    size = RunSize(steps=3)
    _finish(paths[3], arm_command(ARMS[0], 0, *paths, size), steps=3)
    records, wall_s = run_arm(ARMS[0], 0, *paths, size)
    assert [r["data"]["papo/kl_prcp"] for r in records] == [0.1, 0.2, 0.30000000000000004]
    assert wall_s == 12.5


def test_every_arm_command_runs_main_papo_with_its_own_overrides_last(tmp_path):
    paths = (tmp_path / "model", tmp_path / "train.parquet", tmp_path / "val.parquet", tmp_path / "run")
    for arm in ARMS:
        command = arm_command(arm, 1, *paths, RunSize(steps=2))
        assert command[1:3] == ["-m", "recipe.papo.main_papo"]
        assert command[-len(arm.overrides) :] == list(arm.overrides)
        assert "data.seed=1" in command and "papo.mask_seed=1" in command


def test_the_accuracy_of_a_step_is_read_from_its_rollout_dump(tmp_path):
    paths = (tmp_path / "model", tmp_path / "train.parquet", tmp_path / "val.parquet", tmp_path / "run")
    size = RunSize(steps=2)
    command = arm_command(ARMS[0], 0, *paths, size)
    assert f"trainer.rollout_data_dir={paths[3] / ROLLOUTS_DIR}" in command
    _finish(paths[3], command, steps=2)
    dumps = paths[3] / ROLLOUTS_DIR
    dumps.mkdir()
    # verl's dump lines (trainer_base._log_rollout_data): decoded response and ground truth per rollout
    lines = [
        {"output": "2", "gts": "2"},
        {"output": "3", "gts": "2"},
        {"output": "x2", "gts": "2"},
        {"output": "", "gts": "1"},
    ]
    (dumps / "1.jsonl").write_text("".join(json.dumps({**line, "score": 0.0, "step": 1}) + "\n" for line in lines))
    (dumps / "2.jsonl").write_text(json.dumps({"output": "1", "gts": "1", "score": 1.0, "step": 2}) + "\n")
    records, _ = run_arm(ARMS[0], 0, *paths, size)
    # "x2" counts: the first integer of the response is the answer (papo_tools.demo.reward)
    assert [r["data"][ACCURACY_KEY] for r in records] == [0.5, 1.0]
    assert step_accuracy(dumps / "1.jsonl") == 0.5
    # verl writes responses unescaped; random bytes can decode to characters that str.splitlines breaks on
    odd = [{"output": f"1{char}", "gts": "1"} for char in ("\u2028", "\x85", "\x0c", "\x1e")]
    (dumps / "4.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in odd))
    assert step_accuracy(dumps / "4.jsonl") == 1.0
    (dumps / "3.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="3.jsonl holds no rollouts"):
        step_accuracy(dumps / "3.jsonl")


def test_a_finished_run_from_other_starting_weights_is_not_reused(tmp_path, monkeypatch):
    paths = (tmp_path / "model", tmp_path / "train.parquet", tmp_path / "val.parquet", tmp_path / "run")
    paths[0].mkdir()
    (paths[0] / "model.safetensors").write_bytes(b"warm-up A")
    size = RunSize(steps=2)
    command = arm_command(ARMS[0], 0, *paths, size)
    _finish(paths[3], command, steps=2, model=model_fingerprint(paths[0]))
    assert run_arm(ARMS[0], 0, *paths, size)[1] == 12.5  # same weights: reused
    (paths[0] / "model.safetensors").write_bytes(b"warm-up B")  # e.g. another warm-up config
    started = []

    def trainer(command, **kwargs):  # stands in for main_papo: the run starts again
        started.append(command)
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(run_module.subprocess, "run", trainer)
    with pytest.raises(RuntimeError, match="exit code 1"):
        run_arm(ARMS[0], 0, *paths, size)
    assert started == [command]
    assert not (paths[3] / "run.json").exists()  # the stale record is gone
