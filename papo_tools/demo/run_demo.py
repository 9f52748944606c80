"""``make demo``: a few PAPO-G training steps on the built-in tiny model and task, on CPU.

Builds the tiny random Qwen2.5-VL and the counting-shapes task in ``--out``, runs
``python -m recipe.papo.main_papo`` through verl's real v1 trainer with the CPU backend, and prints
the ``papo/*`` metrics of every step (read back from verl's ``file`` logger). While it runs it
prints only its start-up phases and one line per step; the run's whole output (verl, Ray and
vLLM, every worker) goes to ``<out>/run.log``, replaced by each launch, and a failed run shows the
log's last lines (:mod:`papo_tools.demo.console`).

    python -m papo_tools.demo.run_demo [--out demo_output] [--steps 4] [key=value ...]

Extra ``key=value`` arguments are passed to ``main_papo`` after the demo's own overrides.

Rerunning into the same ``--out`` never loses metrics. With a checkpoint saved (``trainer.save_freq``)
verl resumes from it: if it is the final step there is nothing to do (said, exit 0, nothing run);
otherwise training continues and the new steps are appended to ``metrics.jsonl``. Without a
checkpoint the run starts over and the previous ``metrics.jsonl`` is kept as
``metrics.<time>.jsonl``. (verl's file logger opens its file with mode ``"wb"``, so each launch
writes its own file, merged into ``metrics.jsonl`` when it ends.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import transformers

from papo_tools.cpu.launch import ROLLOUTS, cpu_env, cpu_overrides
from papo_tools.demo.console import Progress, run_logged, shown_path
from papo_tools.demo.reward import reward_overrides
from papo_tools.demo.task import write_demo_dataset
from papo_tools.demo.tiny_model import VLLM_SIZES, save_tiny_qwen2_5_vl

# PAPO-G with the double entropy loss (the paper's 7B setting), on the tiny demo.
PAPO_G_DEMO = (
    "papo.kl_prcp_coef=0.02",
    "papo.entropy_ori_coef=0.05",
    "papo.entropy_aug_coef=0.05",
)
SHOWN_METRICS = (
    "papo/gamma",
    "papo/kl_prcp",
    "papo/entropy_ori",
    "papo/entropy_aug",
    "papo/kl_prcp_clipfrac",
    "papo/logprob_gap",
    "papo/rows_without_image",
    "papo/loss",
    "papo/base_loss",
    "critic/score/mean",
    "actor/grad_norm",
)


def prepare_demo(out: Path) -> tuple[Path, Path, Path]:
    """Write the tiny model and the demo dataset under ``out``; returns (model_dir, train, val)."""
    model_dir = save_tiny_qwen2_5_vl(out / "tiny_qwen2_5_vl", seed=0, sizes=VLLM_SIZES)
    train, val = write_demo_dataset(out / "data", num_train=64, num_val=16, seed=0)
    return model_dir, train, val


def demo_command(
    model_dir: Path,
    train: Path,
    val: Path,
    out: Path,
    steps: int,
    extra: list[str] | tuple[str, ...] = (),
    rollout: str = "vllm",
) -> list[str]:
    """The ``main_papo`` command line of the demo run (CPU overrides, demo reward, PAPO-G settings).

    ``rollout``: the CPU rollout engine, ``"vllm"`` or ``"hf"`` (:func:`papo_tools.cpu.launch.rollout_overrides`).
    """
    overrides = cpu_overrides(
        model_dir,
        train,
        val,
        total_training_steps=steps,
        batch_size=4,
        rollout_n=4,
        max_prompt_length=128,
        max_response_length=16,
        output_dir=out / "checkpoints",
        project_name="papo_demo",
        experiment_name="papo_g_tiny",
        rollout=rollout,
    )
    return [sys.executable, "-m", "recipe.papo.main_papo", *overrides, *reward_overrides(), *PAPO_G_DEMO, *extra]


def checkpointed_step(checkpoint_dir: Path) -> int | None:
    """The step of the latest checkpoint verl saved in ``checkpoint_dir`` (its resume point), or None."""
    tracker = checkpoint_dir / "latest_checkpointed_iteration.txt"
    if not tracker.exists():
        return None
    return int(tracker.read_text().strip())


def keep_previous_metrics(metrics_path: Path, resuming: bool) -> str | None:
    """Before a launch: keep ``metrics.jsonl`` to append to (``resuming``), or move it aside.

    Returns a sentence for the user when the file was moved, else None.
    """
    if resuming or not metrics_path.exists() or metrics_path.stat().st_size == 0:
        return None
    kept = metrics_path.with_name(f"metrics.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    metrics_path.rename(kept)
    return f"no checkpoint to resume from: training starts over; the previous metrics are kept in {shown_path(kept)}"


def merge_launch_metrics(launch_path: Path, metrics_path: Path) -> int:
    """Append one launch's records to ``metrics.jsonl`` and remove its file; returns the records added."""
    if not launch_path.exists():
        return 0
    lines = [line for line in launch_path.read_text().splitlines() if line.strip()]
    with metrics_path.open("a") as handle:
        handle.writelines(line + "\n" for line in lines)
    launch_path.unlink()
    return len(lines)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, in order (blank lines skipped).

    Lines end at ``"\n"`` only: verl writes decoded responses unescaped, and a tiny model's random
    bytes can decode to U+0085 or U+2028, which ``str.splitlines`` would also split on.
    """
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def read_metrics(path: Path) -> list[dict]:
    """The ``{"step", "data"}`` records of verl's file logger, in order (empty if the file is missing)."""
    return read_jsonl(path) if path.exists() else []


def metrics_table(records: list[dict], names: tuple[str, ...] = SHOWN_METRICS) -> str:
    """A plain-text table: one row per training step, one column per metric."""
    rows = [r for r in records if any(name in r["data"] for name in names)]
    header = ["step", *names]
    lines = ["  ".join(f"{h:>22}" for h in header)]
    for record in rows:
        cells = [str(record["step"])] + [
            f"{record['data'][name]:.5g}" if isinstance(record["data"].get(name), int | float) else "-"
            for name in names
        ]
        lines.append("  ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="work directory (default: demo_output)")
    parser.add_argument("--steps", type=int, default=4, help="training steps (default: 4)")
    parser.add_argument(
        "--rollout",
        choices=ROLLOUTS,
        default="vllm",
        help="rollout engine: vllm (verl's vLLM rollout on the CPU build of vLLM, as the scripts run; default) or hf "
        "(the CPU backend's HF generate rollout: no vLLM start-up)",
    )
    args, extra = parser.parse_known_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    done = checkpointed_step(out / "checkpoints")
    if done is not None and done >= args.steps:
        print(
            f"[demo] nothing to do: {shown_path(out / 'checkpoints')} holds the checkpoint of step {done}, and --steps "
            f"is {args.steps}. The run's metrics are in {shown_path(metrics_path)}. To train further pass --steps "
            f"{done + 1} or more (training resumes from that checkpoint); to start over use another --out."
        )
        print(metrics_table(read_metrics(metrics_path)))
        return 0
    moved = keep_previous_metrics(metrics_path, resuming=done is not None)
    if moved:
        print(f"[demo] {moved}")
    elif done is not None:
        print(
            f"[demo] resuming from the checkpoint of step {done}; new steps are appended to {shown_path(metrics_path)}"
        )
    transformers.utils.logging.disable_progress_bar()  # saving the tiny model would print a progress bar
    model_dir, train, val = prepare_demo(out)
    command = demo_command(model_dir, train, val, out, args.steps, extra, rollout=args.rollout)
    launch_metrics = out / f"metrics.launch-{os.getpid()}.jsonl"
    log = out / "run.log"
    print(
        f"[demo] PAPO-G, {args.steps} steps on the tiny model ({shown_path(model_dir)}) and the counting task "
        f"({shown_path(train.parent)}), {args.rollout} rollout\n[demo] verl's trainer (python -m "
        f"recipe.papo.main_papo) starts; its whole output goes to {shown_path(log)}",
        flush=True,
    )
    progress = Progress(total_steps=args.steps)
    returncode = run_logged(
        command, {**os.environ, **cpu_env(file_logger_path=launch_metrics)}, log, launch_metrics, progress
    )
    elapsed = time.monotonic() - progress.started
    added = merge_launch_metrics(launch_metrics, metrics_path)
    print(f"[demo] PAPO-G on the tiny model: {added} metric records in {elapsed:.0f} s (exit code {returncode})")
    print(metrics_table(read_metrics(metrics_path)))
    print(f"[demo] all metrics: {shown_path(metrics_path)}\n[demo] full log: {shown_path(log)}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
