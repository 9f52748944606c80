"""The smoke run ``scripts/common.sh`` starts for ``SMOKE=1``: compose (:func:`plan`), run (:func:`execute`).

    python -m papo_tools.smoke --script NAME.sh --out DIR [--data builtin|script] [--model tiny|script]
        --user-args K -- OVERRIDE ...

``OVERRIDE ...`` is the script's full ``main_papo`` argument list, whose last ``K`` entries are the
user's own ``key=value`` arguments. The run's overrides are, in order: the script's, the smoke
sizes/machine/task (:mod:`.sizes`), the user's (so the user's win). ``--data builtin`` (the default)
replaces the script's data and reward by the built-in counting task and its reward, ``--data
script`` keeps them (``SMOKE_DATA``); ``--model tiny`` (the default) replaces the script's model by
a tiny random one of its family, ``--model script`` keeps it (``SMOKE_MODEL``). Writes into
``DIR/<script stem>/``: ``config.yaml`` (the fully resolved configuration, written before Ray
starts), ``metrics.jsonl`` (verl's file logger; where the script names another file, there),
``rollouts/`` and ``validation/`` (verl's generation dumps, unless the script names its own
folders), ``checkpoints/``, ``run.log``, and the tiny model and the task's parquet files where they
are used. Exits 0 only when the run succeeded and :func:`.checks.check_records` found nothing wrong.
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
    VAL_ROWS,
    Machine,
    builtin_task_overrides,
    detect_machine,
    machine_overrides,
    micro_batches_per_worker,
    model_overrides,
    output_overrides,
    size_overrides,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
MARKER = ".papo-smoke"  # marks a folder this command created (and may therefore replace)
# What SMOKE may replace (SMOKE_DATA / SMOKE_MODEL): "builtin" / "tiny" replace, "script" keeps the script's.
DATA_MODES = ("builtin", "script")
MODEL_MODES = ("tiny", "script")
FILE_LOGGER_PATH_KEY = "ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"


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
        data: ``"builtin"`` (the counting task and its reward) or ``"script"`` (the script's own).
        model: ``"tiny"`` (a tiny random model of the family) or ``"script"`` (the script's own).
        metrics: verl's file-logger output (the script's own file where it names one).
    """

    script: str
    folder: Path
    model_type: str
    machine: Machine
    overrides: list[str]
    config: DictConfig
    data: str = "builtin"
    model: str = "tiny"
    metrics: Path = Path("metrics.jsonl")

    @property
    def model_dir(self) -> Path:
        """The tiny model's folder (where ``--model tiny`` writes it)."""
        return self.folder / f"tiny_{self.model_type}"

    @property
    def data_dir(self) -> Path:
        """The built-in task's folder (where ``--data builtin`` writes it)."""
        return self.folder / "data"

    @property
    def val_only(self) -> bool:
        """An evaluation script: one validation pass, no training."""
        return bool(self.config.trainer.get("val_only", False))


def data_files(value) -> list[str]:
    """``data.train_files`` / ``data.val_files`` as a list of paths (verl takes one path or a list)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(path) for path in value]


def parquet_rows(paths: list[str], key: str) -> int:
    """Rows in the parquet files ``paths`` (read from their footers); a missing file is a :class:`SmokeError`."""
    import pyarrow.parquet as pq

    rows = 0
    for path in paths:
        if not Path(path).is_file():
            raise SmokeError(
                f"SMOKE_DATA=script keeps the script's {key}, but {path} does not exist: prepare the data first "
                '(python -m data_prep.all --out "$DATA_DIR", docs/data.md) or set DATA_DIR / TRAIN_FILE / VAL_FILE'
            )
        rows += pq.ParquetFile(path).metadata.num_rows
    return rows


def check_script_data(config: DictConfig) -> None:
    """The script's own data (``--data script``) exists and holds at least one smoke training batch."""
    if config.trainer.get("val_only", False):
        parquet_rows(data_files(config.data.val_files), "data.val_files")
        return
    train = data_files(config.data.train_files)
    rows, batch = parquet_rows(train, "data.train_files"), int(config.data.train_batch_size)
    parquet_rows(data_files(config.data.val_files), "data.val_files")
    if rows < batch:
        raise SmokeError(
            f"SMOKE_DATA=script: data.train_files ({', '.join(train)}) hold {rows} rows, fewer than the smoke run's "
            f"training batch of {batch} prompts; give it at least {batch} rows"
        )


def plan(
    script: str,
    out: Path,
    script_args: list[str],
    user_args: list[str],
    machine: Machine | None = None,
    data: str = "builtin",
    model: str = "tiny",
) -> SmokePlan:
    """Compose the smoke run of ``script`` (nothing is written or started) on ``machine`` (default: this one).

    ``data`` / ``model``: what SMOKE replaces (:data:`DATA_MODES`, :data:`MODEL_MODES`; the module docstring).
    """
    from recipe.papo.model_families import UnsupportedModelError, family_of_model_name

    if data not in DATA_MODES or model not in MODEL_MODES:
        raise SmokeError(
            f"--data must be one of {DATA_MODES} and --model one of {MODEL_MODES}, got {data!r}, {model!r}"
        )
    folder = (out / Path(script).stem).resolve()
    intended = compose(script_args + user_args)
    if "file" not in list(intended.trainer.logger):
        raise SmokeError(
            f"trainer.logger={list(intended.trainer.logger)} has no 'file': the smoke checks read its metrics"
        )
    if intended.trainer.get("val_only", False) and data == "builtin":
        raise SmokeError(
            f"{script} only evaluates (trainer.val_only=True): the built-in task has no benchmark to evaluate. "
            "Run it with SMOKE_DATA=script on the prepared evaluation data"
        )
    try:
        model_type = family_of_model_name(intended.actor_rollout_ref.model.path)
    except UnsupportedModelError as error:
        raise SmokeError(f"no tiny model for this script's model: {error}") from error
    machine = machine or detect_machine(
        intended.trainer.n_gpus_per_node * intended.trainer.nnodes, int(intended.trainer.nnodes)
    )
    metrics = Path(OmegaConf.select(intended, FILE_LOGGER_PATH_KEY) or folder / "metrics.jsonl")
    task_dir = folder / "data"
    overrides = [
        *script_args,
        *size_overrides(intended, machine, model_type, script_data=data == "script"),
        *machine_overrides(intended, machine, model_type),
        *(model_overrides(folder / f"tiny_{model_type}") if model == "tiny" else []),
        *(builtin_task_overrides(task_dir / "train.parquet", task_dir / "val.parquet") if data == "builtin" else []),
        *output_overrides(folder, metrics, intended),
        *user_args,
    ]
    config = compose(overrides)
    if data == "script":
        check_script_data(config)
    return SmokePlan(script, folder, model_type, machine, overrides, config, data, model, metrics)


def describe(smoke: SmokePlan, first_step: int = 1) -> str:
    """One sentence: what the smoke run runs (model, data, steps ``first_step..``) and where."""
    model = (
        f"a tiny random {smoke.model_type} model"
        if smoke.model == "tiny"
        else f"the script's model {smoke.config.actor_rollout_ref.model.path}"
    )
    data = (
        "the built-in counting task and its reward"
        if smoke.data == "builtin"
        else f"the script's data and reward (train {smoke.config.data.train_files}, val {smoke.config.data.val_files})"
    )
    last = int(smoke.config.trainer.total_training_steps or 0)
    steps = f"{last} steps" if first_step == 1 else f"steps {first_step}..{last}"
    work = "1 validation pass" if smoke.val_only else f"{steps} + 1 validation pass"
    nodes = f" on the running Ray cluster's {smoke.machine.nnodes} nodes" if smoke.machine.nnodes > 1 else ""
    return (
        f"{smoke.script}: its configuration on {model} and {data}, {work} on {smoke.machine.world_size} "
        f"{smoke.machine.device} worker(s){nodes}"
    )


def resumed_step(config: DictConfig, run_dir: Path) -> int:
    """The step verl's trainer resumes from (0: from scratch), found as verl 0.9.1 finds it.

    ``trainer.resume_mode``: ``disable`` starts from scratch, ``resume_path`` from
    ``trainer.resume_from_path`` (a ``global_step_<k>`` folder), ``auto`` from the latest checkpoint
    in ``trainer.default_local_dir`` (verl's tracker file ``latest_checkpointed_iteration.txt``), if
    any. A relative path is relative to ``run_dir``, the folder ``main_papo`` runs in (verl joins it
    with its working directory).
    """
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

    mode = config.trainer.resume_mode
    if mode == "disable":
        return 0
    folder = (
        config.trainer.resume_from_path
        if mode == "resume_path"
        else find_latest_ckpt_path(str(run_dir / config.trainer.default_local_dir))
    )
    return int(str(folder).rsplit("global_step_", 1)[-1]) if folder else 0


def execute(smoke: SmokePlan) -> int:
    """Write the tiny model and task, validate, run ``main_papo`` and check its metrics; the exit code."""
    from papo_tools.demo.task import write_demo_dataset
    from papo_tools.demo.tiny_model import VLLM_SIZES, save_tiny_model
    from recipe.papo.main_papo import prepare

    fresh_folder(smoke.folder)
    first_step = 1 if smoke.val_only else resumed_step(smoke.config, smoke.folder) + 1
    say(describe(smoke, first_step))
    if first_step > 1:
        say(f"resuming from the checkpoint of step {first_step - 1} in {smoke.config.trainer.default_local_dir}")
    if smoke.model == "tiny":
        save_tiny_model(smoke.model_dir, smoke.model_type, sizes=VLLM_SIZES)  # the same sizes for both rollouts
    if smoke.data == "builtin":
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
        0 if smoke.val_only else int(config.trainer.total_training_steps),
        summary["papo.enabled"],
        bool(config.actor_rollout_ref.actor.use_kl_loss),
        rollout_log_probs,
        first_step=first_step,
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
    parser.add_argument(
        "--data", choices=DATA_MODES, default="builtin", help="builtin: the counting task; script: the script's own"
    )
    parser.add_argument(
        "--model", choices=MODEL_MODES, default="tiny", help="tiny: a tiny random model; script: the script's own"
    )
    parser.add_argument("--user-args", type=int, default=0, help="how many trailing overrides are the user's")
    parser.add_argument("overrides", nargs="*", help="the script's main_papo overrides, the user's last")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    switch_on_cpu_backend_without_cuda()
    try:
        script_args, user_args = split_arguments(args.overrides, args.user_args)
        return execute(plan(args.script, args.out, script_args, user_args, data=args.data, model=args.model))
    except SmokeError as error:
        say(f"error: {error}")
        return 2
