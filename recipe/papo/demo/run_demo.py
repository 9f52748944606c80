"""``make demo``: a few PAPO-G training steps on the built-in tiny model and task, on CPU.

Builds the tiny random Qwen2.5-VL and the counting-shapes task in ``--out``, runs
``python -m recipe.papo.main_papo`` through verl's real v1 trainer with the CPU backend, and prints
the ``papo/*`` metrics of every step (read back from verl's ``file`` logger).

    python -m recipe.papo.demo.run_demo [--out demo_output] [--steps 4] [key=value ...]

Extra ``key=value`` arguments are passed to ``main_papo`` after the demo's own overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from recipe.papo.cpu.launch import cpu_env, cpu_overrides
from recipe.papo.demo.reward import reward_overrides
from recipe.papo.demo.task import write_demo_dataset
from recipe.papo.demo.tiny_model import save_tiny_qwen2_5_vl

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
    model_dir = save_tiny_qwen2_5_vl(out / "tiny_qwen2_5_vl", seed=0)
    train, val = write_demo_dataset(out / "data", num_train=64, num_val=16, seed=0)
    return model_dir, train, val


def demo_command(
    model_dir: Path, train: Path, val: Path, out: Path, steps: int, extra: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """The ``main_papo`` command line of the demo run (CPU overrides, demo reward, PAPO-G settings)."""
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
    )
    return [sys.executable, "-m", "recipe.papo.main_papo", *overrides, *reward_overrides(), *PAPO_G_DEMO, *extra]


def read_metrics(path: Path) -> list[dict]:
    """The ``{"step", "data"}`` records of verl's file logger, in order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metrics_table(records: list[dict], names: tuple[str, ...] = SHOWN_METRICS) -> str:
    """A plain-text table: one row per training step, one column per metric."""
    rows = [r for r in records if any(name in r["data"] for name in names)]
    header = ["step", *names]
    lines = ["  ".join(f"{h:>22}" for h in header)]
    for record in rows:
        cells = [str(record["step"])] + [
            f"{record['data'][name]:.5g}" if isinstance(record["data"].get(name), int | float) else "-" for name in names
        ]
        lines.append("  ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="work directory (default: demo_output)")
    parser.add_argument("--steps", type=int, default=4, help="training steps (default: 4)")
    args, extra = parser.parse_known_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    model_dir, train, val = prepare_demo(out)
    command = demo_command(model_dir, train, val, out, args.steps, extra)
    env = {**os.environ, **cpu_env(file_logger_path=metrics_path)}
    print(f"[demo] model {model_dir}\n[demo] data {train.parent}\n[demo] running: {' '.join(command)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, env=env, check=False)
    elapsed = time.monotonic() - started
    print(f"\n[demo] PAPO-G on the tiny model: {args.steps} steps, {elapsed:.0f} s (exit code {result.returncode})")
    print(metrics_table(read_metrics(metrics_path)))
    print(f"[demo] all metrics: {metrics_path}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
