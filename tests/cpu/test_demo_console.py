"""The demo's console: phases and steps on screen, the whole output in the log, the log's tail on failure.

A small Python child stands in for the trainer's process here (what is tested is the handling of
any child's output and of verl's file-logger records); the real demo's console and log are checked
on the real run in ``tests/e2e/test_demo_e2e.py``.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

from papo_tools.demo.console import PHASES, TAIL_LINES, JsonlTail, Progress, run_logged, shown_path

# A child that prints 300 noise lines on stdout and stderr around the phase markers, writes two
# training records and a validation-only record as verl's file logger does, then exits with CODE.
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    markers, code = json.loads(sys.argv[1]), int(sys.argv[2])
    metrics = open(os.environ["VERL_FILE_LOGGER_PATH"], "wb", buffering=0)
    for i in range(300):
        print(f"noise line {i}", file=sys.stderr if i % 2 else sys.stdout, flush=True)
        if i % 60 == 0 and markers:
            print("(pid=1) " + markers.pop(0) + " twice", flush=True)
    for step in (1, 2):
        data = {"training/global_step": step, "critic/score/mean": 0.25 * step, "papo/kl_prcp": 0.001,
                "timing_s/step": 3.0}
        metrics.write(json.dumps({"step": step, "data": data}).encode() + b"\\n")
        time.sleep(1.5)  # the console line must come while the run is quiet
    metrics.write(json.dumps({"step": 2, "data": {"val-core/acc": 0.5}}).encode() + b"\\n")
    print("Traceback: the last words", file=sys.stderr, flush=True)
    sys.exit(code)
    """
)


def run_child(tmp_path: Path, code: int) -> tuple[int, list[str], Path]:
    metrics = tmp_path / "metrics.jsonl"
    log = tmp_path / "run.log"
    markers = [marker for marker, _ in PHASES] + [PHASES[0][0]]  # the first phase shows twice
    command = [sys.executable, "-c", CHILD, json.dumps(markers), str(code)]
    said: list[str] = []
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics)}
    returncode = run_logged(command, env, log, metrics, Progress(total_steps=2), say=said.append)
    return returncode, "\n".join(said).splitlines(), log


def test_console_shows_phases_and_steps_and_the_log_holds_everything(tmp_path):
    returncode, console, log = run_child(tmp_path, code=0)
    assert returncode == 0
    said = [line.split(" s  ", 1)[1] for line in console]
    phases = [text for text in said if not text.startswith("step ")]
    assert phases == [text for _, text in PHASES]  # each once, in order
    steps = [text for text in said if text.startswith("step ")]
    assert steps == [
        "step 1/2: reward 0.250, papo/kl_prcp 0.001, 3.0 s",
        "step 2/2: reward 0.500, papo/kl_prcp 0.001, 3.0 s",
    ]
    logged = log.read_text().splitlines()
    assert logged[0].startswith("[demo] running: ") and CHILD.strip().splitlines()[0] in log.read_text()
    assert {f"noise line {i}" for i in range(300)} <= set(logged)  # stdout and stderr
    assert sum(line.startswith("(pid=1) ") for line in logged) == len(PHASES) + 1
    assert logged[-1] == "Traceback: the last words"
    assert len(console) == len(PHASES) + 2


def test_a_failed_run_shows_the_end_of_the_log_and_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    returncode, console, log = run_child(tmp_path, code=3)
    assert returncode == 3
    header = next(i for i, line in enumerate(console) if "the run failed" in line)
    assert console[header] == f"[demo] the run failed (exit code 3); the last {TAIL_LINES} lines of run.log:"
    assert console[header + 1 : header + 1 + TAIL_LINES] == log.read_text().splitlines()[-TAIL_LINES:]
    assert console[-1] == "[demo] full log: run.log"


def test_jsonl_tail_returns_each_complete_record_once(tmp_path):
    path = tmp_path / "m.jsonl"
    tail = JsonlTail(path)
    assert tail.new_records() == []  # not written yet
    path.write_bytes(b'{"step": 1}\n{"step": 2')
    assert tail.new_records() == [{"step": 1}]
    with path.open("ab") as handle:
        handle.write(b"}\n")
    assert tail.new_records() == [{"step": 2}]
    assert tail.new_records() == []


def test_paths_are_shown_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "demo_output" / "run.log") == os.path.join("demo_output", "run.log")
    outside = tmp_path.parent / "elsewhere.log"
    assert shown_path(outside) == str(outside)


def test_progress_skips_records_that_are_not_training_steps():
    progress = Progress(total_steps=4)
    assert progress.step({"step": 4, "data": {"val-core/acc": 1.0}}) is None
    assert progress.step({"step": 3, "data": {"training/global_step": 3}}).endswith("  step 3/4")
