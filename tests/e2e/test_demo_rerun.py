"""``make demo``'s console and log, and rerunning it into a finished output folder.

One real 1-step demo with a checkpoint. Its console is short (phases, one line per step, the table)
and names its log relative to the working directory; the log holds the run's whole output, without
TransferQueue's thread-count warnings. Then rerunning (issue: 0 steps, metrics.jsonl truncated):
verl's file logger opens its JSONL with mode ``"wb"``; a relaunch used to empty the demo's
``metrics.jsonl`` even when it then trained 0 steps. The same command again (nothing to do, metrics
untouched, nothing launched), then ``--steps 2`` (continues from the checkpoint and appends step 2).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from memory_slots import memory_slot
from user_env import user_env

from papo_tools.demo.console import PHASES
from papo_tools.demo.run_demo import read_metrics

pytestmark = pytest.mark.e2e

SAVE_EVERY_STEP = "trainer.save_freq=1"
# issue 32: "make demo prints at most about 60 lines"
MAX_CONSOLE_LINES = 60


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


@dataclass(frozen=True)
class FinishedDemo:
    """The first launch: its output folder, what it printed (stdout, stderr) and its ``run.log``.

    The log is read at once: a later launch (``--steps 2``) replaces it.
    """

    out: Path
    stdout: str
    stderr: str
    log: str


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory) -> FinishedDemo:
    out = tmp_path_factory.mktemp("demo_rerun") / "demo_output"
    done = run_demo(out, steps=1)
    assert training_steps(out / "metrics.jsonl") == [1]
    assert (out / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    return FinishedDemo(out, done.stdout, done.stderr, (out / "run.log").read_text(encoding="utf-8"))


def test_console_is_short_and_the_log_holds_the_whole_run(finished_demo):
    console = (finished_demo.stdout + finished_demo.stderr).splitlines()
    assert len(console) <= MAX_CONSOLE_LINES, "\n".join(console)
    said = "\n".join(console)
    for _, phase in PHASES:
        assert phase in said
    assert "s  step 1/1: reward " in said and ", papo/kl_prcp " in said
    assert "[demo] full log: demo_output/run.log" in console  # relative to the working directory
    assert str(finished_demo.out.parent) not in said  # no absolute path of this machine
    assert "Traceback" not in said
    log = finished_demo.log.splitlines()
    assert len(log) > 10 * len(console)
    assert log[0].startswith("[demo] running: ") and "-m recipe.papo.main_papo" in log[0]
    for whole_run in (
        "Started a local Ray instance",  # Ray's driver output
        "'actor_rollout_ref': {",  # verl's config dump in the TaskRunner actor
        "(WorkerDict pid=",  # a training worker's lines, forwarded by Ray
        " step:1 - global_seqlen",  # verl's console logger (the TaskRunner's line for step 1)
        *(marker for marker, _ in PHASES),
    ):
        assert any(whole_run in line for line in log), whole_run
    assert not [line for line in log if "target_num_threads" in line]  # TransferQueue's warning, prevented


def test_rerun_of_a_finished_run_says_so_and_keeps_its_metrics(finished_demo):
    out = finished_demo.out
    metrics = out / "metrics.jsonl"
    before = metrics.read_bytes()
    started = time.monotonic()
    done = run_demo(out, steps=1)
    assert "nothing to do" in done.stdout
    # says how to train further; in any test order (the other test may have trained step 2 already)
    finished = int((out / "checkpoints" / "latest_checkpointed_iteration.txt").read_text())
    assert f"--steps {finished + 1}" in done.stdout
    assert metrics.read_bytes() == before
    assert time.monotonic() - started < 60, "a finished run must not start Ray again"


def test_rerun_with_more_steps_continues_and_appends(finished_demo):
    out = finished_demo.out
    metrics = out / "metrics.jsonl"
    first = read_metrics(metrics)
    done = run_demo(out, steps=2)
    assert "resuming from the checkpoint of step 1" in done.stdout
    assert training_steps(metrics) == [1, 2]
    assert read_metrics(metrics)[: len(first)] == first  # earlier records byte-for-byte kept
    assert not list(out.glob("metrics.launch-*.jsonl"))
