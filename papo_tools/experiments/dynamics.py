"""PAPO's training dynamics at toy scale on CPU: KL_prcp, both entropies and reward per arm.

    python -m papo_tools.experiments.dynamics --out DIR [--quick] [--seeds N] [--steps N] [--arms A,B] [--jobs N]
    python -m papo_tools.experiments.dynamics --out DIR --quick --sweep-gammas 0.02,0.1,1

For every seed: build the tiny Qwen2.5-VL, warm it up on the true answers until a held-out probe
reaches the target accuracy (:mod:`~papo_tools.experiments.warmup`), write the counting task
(:mod:`~papo_tools.experiments.task`); then train every arm (:mod:`~papo_tools.experiments.arms`)
from that same warmed-up model on the same data with ``python -m recipe.papo.main_papo`` on CPU,
``--jobs`` runs at a time, each joining a Ray cluster started once for the experiment
(:mod:`~papo_tools.experiments.cluster`) instead of starting Ray itself.
Writes ``DIR/summary.json`` (:mod:`~papo_tools.experiments.summary`), ``DIR/dynamics.png`` and
per run ``DIR/seed<S>/<arm>/{train.log,metrics.jsonl}``. ``--arms`` picks arms (a subset of the five, or
the extra Double Entropy Loss arm); with ``--sweep-gammas`` the arms are PAPO-G without entropy terms
at each gamma instead.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from queue import Queue

from papo_tools.experiments.arms import ARM_NAMES, ARMS, EXTRA_ARMS, SELECTABLE_ARMS, Arm, sweep_arm
from papo_tools.experiments.cluster import RayHead, ray_cluster
from papo_tools.experiments.plot import plot_dynamics
from papo_tools.experiments.run import RunSize, run_arm
from papo_tools.experiments.summary import ACCURACY_KEY, aggregate, all_finite, curves, write_summary
from papo_tools.experiments.task import write_task
from papo_tools.experiments.warmup import WarmupConfig, warm_up_model

QUICK = RunSize(steps=12)
FULL = RunSize(steps=60)
QUICK_SEEDS = 1
FULL_SEEDS = 3
NUM_TRAIN_ROWS = 512
NUM_VAL_ROWS = 16
DEFAULT_JOBS = 2  # trainer runs at once (docs/dynamics.md, "Cost")


def _parse_gammas(text: str) -> list[float]:
    try:
        gammas = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sweep-gammas wants comma-separated numbers, got {text!r}") from None
    if not gammas or any(g <= 0 for g in gammas):
        raise argparse.ArgumentTypeError(f"--sweep-gammas wants positive numbers, got {text!r}")
    return gammas


def _parse_arms(text: str) -> tuple[Arm, ...]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = [arm.name for arm in SELECTABLE_ARMS]
    unknown = sorted(set(names) - set(known))
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--arms wants comma-separated names from {', '.join(known)}; unknown: {', '.join(unknown) or text!r}"
        )
    return tuple(arm for arm in SELECTABLE_ARMS if arm.name in names)


def _target_accuracy(text: str) -> float | None:
    """``--warmup-target-accuracy``: a probe accuracy in (0, 1], or ``none`` (run every warm-up step)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan  # fails the range check below
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"wants a number in (0, 1] or 'none', got {text!r}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.steps} steps, {QUICK_SEEDS} seed (< 10 min)")
    parser.add_argument("--seeds", type=_positive, help=f"seeds 0..N-1 (default {FULL_SEEDS}; --quick {QUICK_SEEDS})")
    parser.add_argument("--steps", type=_positive, help=f"training steps per run (default {FULL.steps})")
    parser.add_argument(
        "--warmup-steps", type=_positive, default=WarmupConfig().steps, help="format warm-up steps before RL"
    )
    parser.add_argument(
        "--warmup-answer-fraction",
        type=float,
        default=WarmupConfig().answer_fraction,
        help="share of warm-up examples whose target is the true count",
    )
    parser.add_argument("--warmup-lr", type=float, default=WarmupConfig().lr, help="learning rate of the warm-up")
    parser.add_argument(
        "--warmup-target-accuracy",
        type=_target_accuracy,
        default=WarmupConfig().target_accuracy,
        help="stop the warm-up once its held-out probe accuracy reaches this; 'none': run all warm-up steps",
    )
    parser.add_argument("--lr", type=float, help=f"actor learning rate (default {FULL.lr})")
    parser.add_argument(
        "--arms",
        type=_parse_arms,
        help=f"run these arms (default: {', '.join(ARM_NAMES)}; also: {', '.join(a.name for a in EXTRA_ARMS)})",
    )
    parser.add_argument(
        "--jobs", type=_positive, default=DEFAULT_JOBS, help="trainer runs at once (each about 4.5 GiB of memory)"
    )
    parser.add_argument("--sweep-gammas", type=_parse_gammas, help="run PAPO-G without entropy at these gammas")
    return parser


@contextmanager
def _ray_heads(out: Path, count: int) -> Iterator[Queue[RayHead]]:
    """``count`` Ray clusters of the experiment's own, in a queue of free ones; stopped on leaving.

    Their ``ray start`` output is ``out/ray_head<i>.log``.
    """
    with ExitStack() as stack:
        heads: Queue[RayHead] = Queue()
        for lane in range(count):
            heads.put(stack.enter_context(ray_cluster(out / f"ray_head{lane}.log")))
        yield heads


def _train_arm(
    arm: Arm, seed: int, seed_dir: Path, data: tuple[Path, Path], size: RunSize, heads: Queue[RayHead]
) -> tuple[dict[str, list[float]], float]:
    """Train ``arm`` at ``seed`` (or reuse its finished run) on a free head of ``heads``; print a line;
    return its curves and wall seconds."""
    head = heads.get()  # free: at most one run per head (run_experiment)
    try:
        records, wall_s = run_arm(arm, seed, seed_dir / "model", *data, seed_dir / arm.name, size, head)
    finally:
        heads.put(head)
    arm_curves = curves(records)
    kl, accuracy = arm_curves["papo/kl_prcp"], arm_curves[ACCURACY_KEY]
    print(
        f"[dynamics] seed {seed} {arm.name}: {wall_s:.0f} s, "
        f"kl_prcp {kl[0]:.4g} -> {kl[-1]:.4g}, accuracy {accuracy[0]:.3f} -> {accuracy[-1]:.3f}",
        flush=True,
    )
    return arm_curves, wall_s


def run_experiment(
    out: Path,
    arms: tuple[Arm, ...],
    seeds: int,
    size: RunSize,
    warmup: WarmupConfig,
    command: str,
    jobs: int = DEFAULT_JOBS,
) -> dict:
    """Train every arm at seeds ``0..seeds-1``; write and return the summary, and the figure.

    Each seed's arms run ``jobs`` at a time, each in its own trainer process from the same files, so
    ``jobs`` changes the wall time, not the results. The runs join ``jobs`` Ray clusters started here
    (they come up during the first warm-up) and stopped before returning, one run at a time on each:
    TransferQueue's controller is a cluster-wide named actor, so two runs must not share a cluster
    at once (:mod:`~papo_tools.experiments.cluster`).
    """
    out.mkdir(parents=True, exist_ok=True)
    jobs = min(jobs, len(arms))
    per_seed: dict[str, dict[int, dict[str, list[float]]]] = {arm.name: {} for arm in arms}
    seconds: dict[str, float] = {}
    warmup_losses: dict[str, list[float]] = {}
    start_accuracy: dict[str, float] = {}
    with _ray_heads(out, jobs) as heads, ThreadPoolExecutor(max_workers=jobs) as pool:
        for seed in range(seeds):
            seed_dir = out / f"seed{seed}"
            started = time.monotonic()
            warmed = warm_up_model(seed_dir / "model", seed, warmup)
            losses = warmed.losses
            warmup_losses[str(seed)] = [round(loss, 4) for loss in losses]
            start_accuracy[str(seed)] = round(warmed.start_accuracy, 4)
            train, val = write_task(seed_dir / "data", NUM_TRAIN_ROWS, NUM_VAL_ROWS, seed)
            seconds[f"seed{seed}/warmup"] = round(time.monotonic() - started, 1)
            print(
                f"[dynamics] seed {seed}: {len(losses)} warm-up steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
                f"start accuracy {warmed.start_accuracy:.3f}",
                flush=True,
            )
            # each arm in its own trainer process, on a free head
            train_arm = partial(_train_arm, seed=seed, seed_dir=seed_dir, data=(train, val), size=size, heads=heads)
            finished = list(pool.map(train_arm, arms))
            for arm, (arm_curves, wall_s) in zip(arms, finished, strict=True):  # in arm order, however they ended
                per_seed[arm.name][seed] = arm_curves
                seconds[f"seed{seed}/{arm.name}"] = wall_s
    run = {
        "command": command,
        "seeds": list(range(seeds)),
        "size": vars(size),
        "warmup": {**vars(warmup), "losses": warmup_losses, "start_accuracy": start_accuracy},
        "arms": {arm.name: {"overrides": list(arm.overrides), "description": arm.description} for arm in arms},
        "seconds": seconds,
    }
    summary = aggregate(per_seed, run)
    write_summary(summary, out / "summary.json")
    title = f"tiny Qwen2.5-VL, counting task, {size.steps} steps, {seeds} seed(s) (mean, band = +- std)"
    plot_dynamics(summary, out / "dynamics.png", title=title)
    if not all_finite(summary):
        raise RuntimeError(f"non-finite values in {out / 'summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.steps is not None:
        size = replace(size, steps=args.steps)
    if args.lr is not None:
        size = replace(size, lr=args.lr)
    seeds = args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS)
    arms = tuple(sweep_arm(g) for g in args.sweep_gammas) if args.sweep_gammas else (args.arms or ARMS)
    command = "python -m papo_tools.experiments.dynamics " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    warmup = WarmupConfig(
        steps=args.warmup_steps,
        lr=args.warmup_lr,
        answer_fraction=args.warmup_answer_fraction,
        target_accuracy=args.warmup_target_accuracy,
    )
    run_experiment(args.out.resolve(), arms, seeds, size, warmup, command, args.jobs)
    elapsed = time.monotonic() - started
    print(f"[dynamics] done in {elapsed:.0f} s: {args.out / 'summary.json'}, {args.out / 'dynamics.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
