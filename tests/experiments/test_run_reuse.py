"""A finished run is reused only when its command and step count match (no trainer is started)."""

from __future__ import annotations

import json
from pathlib import Path

from papo_tools.experiments.arms import ARMS
from papo_tools.experiments.run import RunSize, arm_command, run_arm


def _finish(run_dir: Path, command: list[str], steps: int) -> None:
    run_dir.mkdir(parents=True)
    records = [{"step": s, "data": {"critic/score/mean": 0.5, "papo/kl_prcp": 0.1 * s}} for s in range(1, steps + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "run.json").write_text(json.dumps({"command": command, "wall_s": 12.5}))


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
