"""Rerunning ``make demo`` into a finished output folder (issue: 0 steps, metrics.jsonl truncated).

verl's file logger opens its JSONL with mode ``"wb"``; a relaunch used to empty the demo's
``metrics.jsonl`` even when it then trained 0 steps. One real 1-step demo with a checkpoint, then:
the same command again (nothing to do, metrics untouched, nothing launched), then ``--steps 2``
(continues from the checkpoint and appends step 2).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from memory_slots import memory_slot
from user_env import user_env

from papo_tools.demo.run_demo import read_metrics

pytestmark = pytest.mark.e2e

SAVE_EVERY_STEP = "trainer.save_freq=1"


def run_demo(out: Path, steps: int) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "papo_tools.demo.run_demo",
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--rollout",
        "hf",  # what is checked is the metrics file across launches, not the rollout engine
        SAVE_EVERY_STEP,
    ]
    # A user's environment: the demo sets the CPU backend's environment for its own run.
    with memory_slot("hf"):
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=600, cwd=out.parent, env=user_env()
        )
    assert done.returncode == 0, f"demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def training_steps(path: Path) -> list[int]:
    return [record["step"] for record in read_metrics(path) if "training/global_step" in record["data"]]


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_rerun") / "demo_output"
    run_demo(out, steps=1)
    assert training_steps(out / "metrics.jsonl") == [1]
    assert (out / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    return out


def test_rerun_of_a_finished_run_says_so_and_keeps_its_metrics(finished_demo):
    metrics = finished_demo / "metrics.jsonl"
    before = metrics.read_bytes()
    started = time.monotonic()
    done = run_demo(finished_demo, steps=1)
    assert "nothing to do" in done.stdout
    # says how to train further; in any test order (the other test may have trained step 2 already)
    finished = int((finished_demo / "checkpoints" / "latest_checkpointed_iteration.txt").read_text())
    assert f"--steps {finished + 1}" in done.stdout
    assert metrics.read_bytes() == before
    assert time.monotonic() - started < 60, "a finished run must not start Ray again"


def test_rerun_with_more_steps_continues_and_appends(finished_demo):
    metrics = finished_demo / "metrics.jsonl"
    first = read_metrics(metrics)
    done = run_demo(finished_demo, steps=2)
    assert "resuming from the checkpoint of step 1" in done.stdout
    assert training_steps(metrics) == [1, 2]
    assert read_metrics(metrics)[: len(first)] == first  # earlier records byte-for-byte kept
    assert not list(finished_demo.glob("metrics.launch-*.jsonl"))
