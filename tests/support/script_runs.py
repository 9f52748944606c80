"""Run the shell scripts of ``scripts/`` as a user would (``bash scripts/<name> key=value ...``).

Test support: importable as ``script_runs`` once ``tests/support`` is on ``sys.path``
(``tests/conftest.py`` puts it there). The session-wide pool of dry runs is the ``dry_runs``
fixture of ``tests/scripts/conftest.py`` (:class:`DryRuns`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from memory_slots import memory_slot
from user_env import user_env

from papo_tools.demo.run_demo import read_jsonl

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
DRY_RUN_BANNER = "PAPO dry run: configuration composed and validated; resolved settings:"
# Two dry runs at a time: each is CPU-bound (imports), and CI machines have few cores.
POOL_SIZE = 2
SCRIPT_TIMEOUT_S = 300


@dataclass(frozen=True)
class ScriptRun:
    """One finished script run."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict:
        """The resolved settings the dry run printed after :data:`DRY_RUN_BANNER`."""
        assert self.returncode == 0, f"{' '.join(self.args)} failed ({self.returncode}):\n{self.stderr[-4000:]}"
        _, banner, tail = self.stdout.partition(DRY_RUN_BANNER)
        assert banner, f"no dry-run banner in the output of {' '.join(self.args)}:\n{self.stdout[-2000:]}"
        return json.loads(tail)


def script_knobs() -> set[str]:
    """Every env-var knob of the scripts: the ``NAME=${NAME:-default}`` assignments."""
    pattern = re.compile(r"^(?:export )?([A-Z_][A-Z0-9_]*)=\$\{\1:[-?]", re.MULTILINE)
    knobs = {name for path in SCRIPTS.glob("*.sh") for name in pattern.findall(path.read_text())}
    return knobs | {"VERL_FILE_LOGGER_PATH"}  # read by verl; eval_papo.sh sets it


def script_env(**overrides: str) -> dict[str, str]:
    """The caller's environment without any script knob (a developer's exports must not leak in),
    this venv's ``bin`` first on PATH (``python3`` is the project's), plus ``overrides``."""
    # What the test session set (its CPU-backend switch, process-group variables: user_env) is not a
    # user's environment either.
    hidden = script_knobs()
    env = {key: value for key, value in user_env().items() if key not in hidden}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(overrides)
    return env


def run_script(name: str, *args: str, cwd: Path, timeout: int = SCRIPT_TIMEOUT_S, **env: str) -> ScriptRun:
    """``bash scripts/<name> args...`` in ``cwd`` (Hydra writes its ``outputs/`` there)."""
    command = ("bash", str(SCRIPTS / name), *args)
    done = subprocess.run(
        command, check=False, cwd=cwd, env=script_env(**env), capture_output=True, text=True, timeout=timeout
    )
    return ScriptRun(command, done.returncode, done.stdout, done.stderr)


SMOKE_TIMEOUT_S = 900
HF_ROLLOUT = "actor_rollout_ref.rollout.name=hf"


def run_smoke(name: str, *args: str, cwd: Path, timeout: int = SMOKE_TIMEOUT_S) -> ScriptRun:
    """``SMOKE=1 bash scripts/<name> args...`` in ``cwd``, started once a memory slot of its rollout is free.

    The slot's kind is ``hf`` where ``args`` pass :data:`HF_ROLLOUT`, else the scripts' ``vllm``
    (``memory_slots``: several training runs at once outgrow a CI machine's memory).
    """
    with memory_slot("hf" if HF_ROLLOUT in args else "vllm"):
        return run_script(name, *args, cwd=cwd, timeout=timeout, SMOKE="1")


def smoke_outputs(script: str, *args: str, cwd: Path):
    """``SMOKE=1 bash scripts/<script> args...`` in ``cwd``, asserted to succeed.

    Returns:
        ``(run, resolved config, training records)``: the :class:`ScriptRun`, the run's ``config.yaml``
        (an OmegaConf config) and the records of ``metrics.jsonl`` that carry a training step.
    """
    from omegaconf import OmegaConf

    run = run_smoke(script, *args, cwd=cwd)
    folder = cwd / "smoke_output" / script.removesuffix(".sh")
    log = (folder / "run.log").read_text() if (folder / "run.log").exists() else ""
    assert run.returncode == 0, f"rc={run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-3000:]}\n{log[-6000:]}"
    config = OmegaConf.load(folder / "config.yaml")
    train = [r for r in read_jsonl(folder / "metrics.jsonl") if "training/global_step" in r["data"]]
    return run, config, train


# Stands in for $PYTHON: appends the arguments of each call to "$RECORDED_ARGS" (NUL after each argument,
# \x01 after each call) and exits 0.
RECORD_ARGS = '#!/usr/bin/env bash\nprintf "%s\\0" "$@" >> "$RECORDED_ARGS"\nprintf "\\1" >> "$RECORDED_ARGS"\n'
ENTRY_POINTS = ("papo_tools.smoke", "recipe.papo.main_papo")


def python_args_of(name: str, *args: str, cwd: Path, **env: str) -> list[str]:
    """What ``bash scripts/<name> args...`` (with ``env``) passes to ``$PYTHON`` to start the run, without running it.

    The run's call is the one of ``python -m`` :data:`ENTRY_POINTS` (a script may call ``$PYTHON`` for
    other things too, such as ``eval_papo.sh``'s table). Bash only (no Python start, no verl import):
    the tests then compose those arguments in-process.
    """
    stub, record = cwd / "record_python_args", cwd / "python_args"
    stub.write_text(RECORD_ARGS)
    stub.chmod(0o755)
    record.unlink(missing_ok=True)
    run = run_script(name, *args, cwd=cwd, PYTHON=str(stub), RECORDED_ARGS=str(record), **env)
    assert run.returncode == 0, run.stderr[-3000:]
    calls = [call.split("\0")[:-1] for call in record.read_text().split("\1")[:-1]]
    (call,) = [call for call in calls if call[:1] == ["-m"] and call[1:2][0] in ENTRY_POINTS]
    return call


class DryRuns:
    """Dry runs started in the background on first request, shared by every test of the session."""

    def __init__(self, workdir: Path):
        self._workdir = workdir
        self._pool = ThreadPoolExecutor(max_workers=POOL_SIZE)
        self._futures: dict[tuple, Future] = {}

    def start(self, name: str, *args: str, **env: str) -> Future:
        key = (name, args, tuple(sorted(env.items())))
        if key not in self._futures:
            cwd = self._workdir / f"run{len(self._futures)}"
            cwd.mkdir()
            self._futures[key] = self._pool.submit(run_script, name, *args, cwd=cwd, DRY_RUN="1", **env)
        return self._futures[key]

    def get(self, name: str, *args: str, **env: str) -> ScriptRun:
        return self.start(name, *args, **env).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
