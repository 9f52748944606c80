"""The smoke run ``scripts/common.sh`` starts for ``SMOKE=1``: compose (:func:`plan`), run (:func:`execute`).

    python -m papo_tools.smoke --script NAME.sh --out DIR --user-args K -- OVERRIDE ...

``OVERRIDE ...`` is the script's full ``main_papo`` argument list, whose last ``K`` entries are the
user's own ``key=value`` arguments. The run's overrides are, in order: the script's, the smoke
sizes/machine/task (:mod:`.sizes`), the user's (so the user's win). Writes into ``DIR/<script
stem>/``: ``config.yaml`` (the fully resolved configuration, written before Ray starts),
``metrics.jsonl`` (verl's file logger), ``run.log``, the tiny model and the task's parquet files.
Exits 0 only when the run succeeded and :func:`.checks.check_records` found nothing wrong.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from papo_tools.demo.run_demo import read_metrics
from papo_tools.smoke.checks import Expectations, check_records, metrics_table, vppo_expectations
from papo_tools.smoke.sizes import (
    CPU_VLLM_UNSUPPORTED,
    TRAIN_ROWS,
    TRAINING_STEPS,
    VAL_ROWS,
    Machine,
    detect_machine,
    machine_overrides,
    micro_batches_per_worker,
    size_overrides,
    task_overrides,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
MARKER = ".papo-smoke"  # marks a folder this command created (and may therefore replace)


class SmokeError(RuntimeError):
    """A smoke run that cannot start; the message says what to do."""


def say(message: str) -> None:
    print(f"[smoke] {message}", flush=True)


def compose(overrides: list[str]) -> DictConfig:
    """``configs/papo_trainer.yaml`` composed in this process with ``overrides`` (as main_papo does)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name="papo_trainer", overrides=overrides)


def split_arguments(arguments: list[str], user_count: int) -> tuple[list[str], list[str]]:
    """(script's overrides, user's overrides): the user's are the last ``user_count``."""
    if not 0 <= user_count <= len(arguments):
        raise SmokeError(f"--user-args {user_count} is outside 0..{len(arguments)}")
    cut = len(arguments) - user_count
    return arguments[:cut], arguments[cut:]


def fresh_folder(folder: Path) -> None:
    """Create ``folder`` empty; a previous smoke run's folder is replaced (and that is said)."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise SmokeError(
                f"{folder} exists and was not written by a smoke run; refusing to replace it. "
                "Point SMOKE_OUT at another folder or remove this one."
            )
        say(f"replacing the previous smoke output in {folder}")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by `SMOKE=1 bash scripts/<name>.sh`; replaced by the next smoke run\n")


def run_logged(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> int:
    """Run ``command``, echoing its output and keeping it in ``log``; returns the exit code."""
    with (
        log.open("w") as handle,
        subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process,
    ):
        for line in process.stdout:
            sys.stdout.write(line)
            handle.write(line)
        return process.wait()


def switch_on_cpu_backend_without_cuda() -> None:
    """Without CUDA, switch the project's CPU backend on in this process before verl is imported.

    Composing the config imports verl, and verl imports the CPU backend only if the switch is set
    then; the start-up checks run here (``main_papo.prepare``) must know its "hf" rollout, as in the
    ``main_papo`` process, which inherits this environment.
    """
    import torch

    import papo_tools.cpu
    from papo_tools.cpu.launch import cpu_env

    if not torch.cuda.is_available():
        os.environ.update(cpu_env())
        papo_tools.cpu.activate()  # imported above before the switch was set


@dataclass(frozen=True)
class SmokePlan:
    """A smoke run, composed but not started.

    Attributes:
        script: the run script's file name.
        folder: its output folder, ``<out>/<script stem>``.
        model_type: the family of the script's model (and of the tiny model).
        machine: where it trains.
        overrides: ``main_papo``'s arguments: script's, smoke's, user's.
        config: ``overrides`` composed in this process (what ``main_papo`` composes).
    """

    script: str
    folder: Path
    model_type: str
    machine: Machine
    overrides: list[str]
    config: DictConfig

    @property
    def model_dir(self) -> Path:
        return self.folder / f"tiny_{self.model_type}"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.jsonl"


def plan(
    script: str, out: Path, script_args: list[str], user_args: list[str], machine: Machine | None = None
) -> SmokePlan:
    """Compose the smoke run of ``script`` (nothing is written or started) on ``machine`` (default: this one)."""
    from recipe.papo.model_families import UnsupportedModelError, family_of_model_name

    folder = (out / Path(script).stem).resolve()
    intended = compose(script_args + user_args)
    if "file" not in list(intended.trainer.logger):
        raise SmokeError(
            f"trainer.logger={list(intended.trainer.logger)} has no 'file': the smoke checks read its metrics"
        )
    try:
        model_type = family_of_model_name(intended.actor_rollout_ref.model.path)
    except UnsupportedModelError as error:
        raise SmokeError(f"no tiny model for this script's model: {error}") from error
    machine = machine or detect_machine(intended.trainer.n_gpus_per_node * intended.trainer.nnodes)
    model_dir, data_dir = folder / f"tiny_{model_type}", folder / "data"
    overrides = [
        *script_args,
        *size_overrides(intended, machine, model_type),
        *machine_overrides(intended, machine, model_type),
        *task_overrides(
            model_dir, data_dir / "train.parquet", data_dir / "val.parquet", folder, folder / "metrics.jsonl"
        ),
        *user_args,
    ]
    return SmokePlan(script, folder, model_type, machine, overrides, compose(overrides))


def execute(smoke: SmokePlan) -> int:
    """Write the tiny model and task, validate, run ``main_papo`` and check its metrics; the exit code."""
    from papo_tools.demo.task import write_demo_dataset
    from papo_tools.demo.tiny_model import VLLM_SIZES, save_tiny_model
    from recipe.papo.main_papo import prepare

    fresh_folder(smoke.folder)
    say(
        f"{smoke.script}: its configuration on a tiny random {smoke.model_type} model and the built-in counting "
        f"task, {TRAINING_STEPS} steps + 1 validation pass on {smoke.machine.world_size} {smoke.machine.device} "
        "worker(s)"
    )
    save_tiny_model(smoke.model_dir, smoke.model_type, sizes=VLLM_SIZES)  # the same sizes for both rollouts
    write_demo_dataset(smoke.data_dir, num_train=TRAIN_ROWS, num_val=VAL_ROWS)
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(smoke.metrics)}
    config = smoke.config
    summary = prepare(config)  # main_papo's start-up checks, before Ray
    OmegaConf.save(config, smoke.folder / "config.yaml", resolve=True)
    say(
        f"resolved configuration: {smoke.folder / 'config.yaml'} "
        f"(remove-padding {config.actor_rollout_ref.model.use_remove_padding}, "
        f"reference KL {config.actor_rollout_ref.actor.use_kl_loss}, "
        f"{micro_batches_per_worker(config)} micro-batches per worker per optimiser step, "
        f"rollout {config.actor_rollout_ref.rollout.name})"
    )
    if smoke.machine.device == "cpu" and smoke.model_type in CPU_VLLM_UNSUPPORTED:
        say(f"{smoke.model_type} on CPU uses the HF rollout: {CPU_VLLM_UNSUPPORTED[smoke.model_type]}")

    started = time.monotonic()
    command = [sys.executable, "-m", "recipe.papo.main_papo", *smoke.overrides]
    returncode = run_logged(command, env, smoke.folder, smoke.folder / "run.log")
    elapsed = time.monotonic() - started
    records = read_metrics(smoke.metrics)
    print(metrics_table(records), flush=True)
    if returncode != 0:
        say(f"FAILED: main_papo exited with code {returncode} after {elapsed:.0f} s; log: {smoke.folder / 'run.log'}")
        return returncode
    rollout_log_probs = bool(config.actor_rollout_ref.rollout.calculate_log_probs)
    expect = Expectations(
        TRAINING_STEPS, summary["papo.enabled"], bool(config.actor_rollout_ref.actor.use_kl_loss), rollout_log_probs
    )
    if not rollout_log_probs:
        say("rollout-fidelity check skipped: actor_rollout_ref.rollout.calculate_log_probs=False")
    failures = check_records(records, expect, vppo_expectations(summary))
    for failure in failures:
        say(f"FAILED: {failure}")
    if failures:
        return 1
    say(f"OK: {smoke.script} in {elapsed:.0f} s; metrics {smoke.metrics}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line ``scripts/common.sh`` passes (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m papo_tools.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--script", required=True, help="the run script's file name (names the output folder)")
    parser.add_argument("--out", type=Path, default=Path("smoke_output"), help="parent output folder (SMOKE_OUT)")
    parser.add_argument("--user-args", type=int, default=0, help="how many trailing overrides are the user's")
    parser.add_argument("overrides", nargs="*", help="the script's main_papo overrides, the user's last")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    switch_on_cpu_backend_without_cuda()
    try:
        script_args, user_args = split_arguments(args.overrides, args.user_args)
        return execute(plan(args.script, args.out, script_args, user_args))
    except SmokeError as error:
        say(f"error: {error}")
        return 2
