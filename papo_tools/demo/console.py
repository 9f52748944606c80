"""What ``make demo`` shows while verl trains: start-up phases and one line per step; the rest goes to a log.

A run through verl's trainer prints about a thousand lines on its own (verl's config dump, Ray's and
vLLM's start-up logs, every worker's warnings). :func:`run_logged` runs the command with its stdout
and stderr (the Ray workers' output reaches the driver's) written whole to a log file, and prints
only:

- a line when the run's output first shows one of the start-up phases of :data:`PHASES`;
- a line per training step, read from verl's ``file`` logger (``VERL_FILE_LOGGER_PATH``, which verl
  writes unbuffered, one JSON record per step) while the run goes on;
- when the run fails, the last lines of the log, so the error is on screen.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# (text in a line of the run's output, what the demo says when it first appears), in start-up order.
# Lines that Ray and verl 0.9.1's trainer print whatever the rollout engine; a marker that never shows
# only leaves its line out. Ray forwards the workers' lines in batches, so a phase may show late.
PHASES: tuple[tuple[str, str], ...] = (
    ("Started a local Ray instance", "Ray started; verl's trainer is loading the data"),
    ("create worker group", "starting the training workers (FSDP2 actor and reference model)"),
    ("actor and ref model engine initialized", "workers ready; starting the rollout engine and reward workers"),
    ("all initialize finished, ready to fit", "start-up done; training"),
)
# Lines of the log printed when the run fails.
TAIL_LINES = 40
# How often the metrics file is read while the run is quiet, s.
POLL_S = 1.0


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (the checkout for ``make demo``), else as is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass
class Progress:
    """Turns the run's output lines and verl's metric records into the demo's console lines.

    Attributes:
        total_steps: ``trainer.total_training_steps`` (the N of "step k/N").
        started: ``time.monotonic()`` at launch; lines say the seconds since.
    """

    total_steps: int
    started: float = field(default_factory=time.monotonic)
    _phases_seen: set[str] = field(default_factory=set)

    def _stamp(self, text: str) -> str:
        return f"[demo] {time.monotonic() - self.started:5.0f} s  {text}"

    def phase(self, line: str) -> str | None:
        """The console line for a line of the run's output that first shows a start-up phase, else None."""
        for marker, said in PHASES:
            if marker in line and said not in self._phases_seen:
                self._phases_seen.add(said)
                return self._stamp(said)
        return None

    def step(self, record: dict) -> str | None:
        """The console line of one ``{"step", "data"}`` record of verl's file logger (None: not a training step)."""
        data = record["data"]
        if "training/global_step" not in data:
            return None
        head = f"step {record['step']}/{self.total_steps}"
        parts = []
        for name, label, spec in (
            ("critic/score/mean", "reward", ".3f"),
            ("papo/kl_prcp", "papo/kl_prcp", ".4g"),
        ):
            if isinstance(data.get(name), int | float):
                parts.append(f"{label} {data[name]:{spec}}")
        if isinstance(data.get("timing_s/step"), int | float):
            parts.append(f"{data['timing_s/step']:.1f} s")
        return self._stamp(f"{head}: {', '.join(parts)}" if parts else head)


class JsonlTail:
    """The complete JSON lines appended to a file since the last read (the file may not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def new_records(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        end = chunk.rfind(b"\n") + 1  # a record being written stays for the next read
        self._offset += end
        return [json.loads(line) for line in chunk[:end].split(b"\n") if line.strip()]


def _say(line: str) -> None:
    print(line, flush=True)


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_logged(
    command: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    metrics: Path,
    progress: Progress,
    say: Callable[[str], None] = _say,
) -> int:
    """Run ``command`` with its whole output in ``log``, saying only its phases and steps; returns its exit code.

    Args:
        command: the run's command line (written as the log's first line).
        env: its environment; verl's file logger must write ``metrics`` (``VERL_FILE_LOGGER_PATH``).
        log: the log file (replaced).
        metrics: verl's file-logger JSONL of this launch, read while the run goes on.
        progress: turns output lines and metric records into console lines.
        say: prints one console line (default: to stdout, at once).
    """
    tail = JsonlTail(metrics)
    lines: queue.Queue = queue.Queue()
    with (
        log.open("w", encoding="utf-8") as handle,
        subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
        ) as process,
    ):
        handle.write(f"[demo] running: {' '.join(command)}\n")
        reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
        reader.start()
        done = False
        while not done:
            try:
                line = lines.get(timeout=POLL_S)
            except queue.Empty:
                line = ""
            if line is None:
                done = True
            elif line:
                handle.write(line)
                handle.flush()
                said = progress.phase(line)
                if said:
                    say(said)
            for record in tail.new_records():
                said = progress.step(record)
                if said:
                    say(said)
        returncode = process.wait()
    if returncode:
        say(failure_report(log, returncode))
    return returncode


def failure_report(log: Path, returncode: int, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``log`` with a header naming the exit code and the log."""
    last = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(
        [
            f"[demo] the run failed (exit code {returncode}); the last {len(last)} lines of {shown_path(log)}:",
            *last,
            f"[demo] full log: {shown_path(log)}",
        ]
    )
