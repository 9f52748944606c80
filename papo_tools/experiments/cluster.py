"""Ray clusters of the experiment's own, which its trainer runs join instead of starting Ray each.

Every arm is its own ``python -m recipe.papo.main_papo`` process, and by itself each starts and stops a
local Ray instance (GCS, raylet, dashboard and runtime-env agents: 4 to 32 s from ``ray.init`` to
"Started a local Ray instance" in the five ``--quick`` runs of a busy 2-core machine, and on an
overloaded one the raylet once missed Ray's 30 s registration limit and failed the run).
:func:`ray_cluster` starts a head node with ``ray start --head --block`` and the same logical resources
and environment a run's own ``ray.init`` has (:func:`~papo_tools.cpu.launch.cpu_env`, 16 CPUs, one
"GPU" slot, no dashboard); :func:`joining_command` and :meth:`RayHead.env` point a run at it. The run's
workers then start as before, from the head's environment plus the job's runtime env, which carries
the per-run ``VERL_FILE_LOGGER_PATH`` (docs/training.md, "Multi-node", explains the mechanism).

One run at a time per head: TransferQueue (verl's data plane) names its controller actor
cluster-wide, so two runs on one cluster would share it. Consecutive runs may share a head: a run's
actors end with its driver (checked: a named actor in TransferQueue's namespace is gone as soon as
the driver that made it has exited).

The head lives in a short temporary folder (Ray's socket paths must fit 107 bytes), picks free ports
(``--port=0``), and has its own token file, so it runs beside other Ray clusters on the machine and
never reads ``~/.ray``. Leaving the context stops it, in every outcome: SIGTERM to the ``ray start
--block`` process (Ray then stops the processes it started), SIGKILL to its process group if it has not
exited after :data:`STOP_GRACE_S`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from papo_tools.cpu.launch import RUNTIME_ENV_KEY, cpu_env

# The logical resources of a run's own ray.init (papo_tools.cpu.launch.cpu_overrides with one rank).
NUM_CPUS = 16
NUM_GPUS = 1
# cpu_overrides' ray.init arguments; Ray refuses resources when it joins a running cluster.
RAY_INIT_KEYS = (
    "ray_kwargs.ray_init.num_cpus",
    "ray_kwargs.ray_init.num_gpus",
    "ray_kwargs.ray_init.include_dashboard",
)
ADDRESS_FILE = "ray_current_cluster"  # where ``ray start`` writes the head's GCS address, in its --temp-dir
START_TIMEOUT_S = 300.0  # for the head to write its address, on a busy machine
STOP_GRACE_S = 30.0  # between SIGTERM and SIGKILL when the head stops


class RayHead:
    """A head node started by :func:`ray_cluster`; it comes up while the caller does other work.

    Attributes:
        log: the ``ray start`` output.
    """

    def __init__(self, process: subprocess.Popen, temp_dir: Path, auth: dict[str, str], log: Path) -> None:
        self._process, self._address_file, self._auth, self.log = process, temp_dir / ADDRESS_FILE, auth, log
        self._address: str | None = None

    def env(self) -> dict[str, str]:
        """What a process that joins the cluster needs in its environment (``RAY_ADDRESS``, the token).

        Waits for the head to write its address the first time.

        Raises:
            RuntimeError: the head exited, or wrote no address within :data:`START_TIMEOUT_S`, naming the log.
        """
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._address is None:
            if self._address_file.exists() and self._address_file.read_text().strip():
                self._address = self._address_file.read_text().strip()
            elif self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the experiment's Ray head did not start (exit code {self._process.poll()}); see {self.log}"
                )
            else:
                time.sleep(0.5)
        return {**self._auth, "RAY_ADDRESS": self._address}


def _auth_env(folder: Path) -> dict[str, str]:
    """Token authentication with a fresh token file of the cluster's own (not ``~/.ray/auth_token``)."""
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def head_command(temp_dir: Path) -> list[str]:
    """``ray start`` of the head node: the resources of a run's own ``ray.init``, free ports, blocking."""
    ray = Path(sys.executable).with_name("ray")
    return [
        str(ray) if ray.exists() else "ray",
        "start",
        "--head",
        "--block",
        "--port=0",
        f"--num-cpus={NUM_CPUS}",
        f"--num-gpus={NUM_GPUS}",
        "--include-dashboard=false",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the blocking ``ray start`` (it stops the head's processes), SIGKILL its group if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the head's daemons; no-op when they are gone
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def ray_cluster(log: Path) -> Iterator[RayHead]:
    """Start a head node for this process's trainer runs; stop it on leaving, whatever happened.

    Returns at once: the head comes up in the background, and :meth:`RayHead.env` waits for it.

    Args:
        log: file for the ``ray start`` output (created).
    """
    folder = Path(tempfile.mkdtemp(prefix="pq"))  # short: Ray's socket paths must fit 107 bytes
    temp_dir = folder / "ray"
    auth = _auth_env(folder)
    # The head's workers inherit this environment, as a run's own raylet inherits the run's.
    env = {**os.environ, **cpu_env(), **auth}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen(
            head_command(temp_dir), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield RayHead(process, temp_dir, auth, log)
    finally:
        _stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def joining_command(command: list[str], file_logger_path: Path) -> list[str]:
    """``command`` (a ``main_papo`` run with its own ``ray.init`` resources) to run on a running cluster.

    Drops :data:`RAY_INIT_KEYS` (the head has those resources) and sends ``VERL_FILE_LOGGER_PATH`` in
    the job's runtime env: the trainer runs in a worker of the head, which does not see the run's own
    environment.
    """
    kept = [arg for arg in command if arg.lstrip("+").split("=", 1)[0] not in RAY_INIT_KEYS]
    return [*kept, f"++{RUNTIME_ENV_KEY}.VERL_FILE_LOGGER_PATH='{file_logger_path}'"]
