"""``make experiment`` runs the experiment's command line with an output folder, and the committed results are its
output (docs/dynamics.md)."""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from papo_tools.experiments.arms import ARM_NAMES, ARMS
from papo_tools.experiments.dynamics import FULL, FULL_SEEDS, build_parser
from papo_tools.experiments.warmup import WarmupConfig

REPO = Path(__file__).resolve().parents[2]
MODULE = "papo_tools.experiments.dynamics"


def experiment_args(*make_args: str) -> list[str]:
    """The arguments ``make -n experiment`` would pass to ``python -m papo_tools.experiments.dynamics``."""
    done = subprocess.run(
        ["make", "-n", "experiment", *make_args], cwd=REPO, capture_output=True, text=True, check=True
    )
    line = next(line for line in done.stdout.splitlines() if f"-m {MODULE}" in line)
    words = shlex.split(line)
    return words[words.index(MODULE) + 1 :]


def test_make_experiment_writes_into_experiment_output_by_default():
    args = build_parser().parse_args(experiment_args())
    assert args.out == Path("experiment_output")
    assert not args.quick


def test_make_experiment_passes_its_knobs():
    args = build_parser().parse_args(experiment_args("EXPERIMENT_OUT=quick_out", "EXPERIMENT_ARGS=--quick --seeds 2"))
    assert args.out == Path("quick_out")
    assert args.quick and args.seeds == 2


def test_the_warm_up_stops_at_a_target_accuracy_unless_told_none():
    parser = build_parser()
    assert parser.parse_args(["--out", "o"]).warmup_target_accuracy == WarmupConfig().target_accuracy == 0.4
    assert parser.parse_args(["--out", "o", "--warmup-target-accuracy", "none"]).warmup_target_accuracy is None
    assert parser.parse_args(["--out", "o", "--warmup-target-accuracy", "0.55"]).warmup_target_accuracy == 0.55
    for bad in ("0", "1.5", "high"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--out", "o", "--warmup-target-accuracy", bad])


def test_the_committed_results_are_what_make_experiment_makes_with_todays_defaults():
    """papo_tools/experiments/results/dynamics_summary.json came from ``make experiment`` with the current
    defaults, so changing a default without rerunning the experiment fails here."""
    run = json.loads((REPO / "papo_tools" / "experiments" / "results" / "dynamics_summary.json").read_text())["run"]
    assert run["command"] == f"python -m {MODULE} " + " ".join(experiment_args())
    assert run["seeds"] == list(range(FULL_SEEDS))
    assert run["size"] == asdict(FULL)
    assert {key: run["warmup"][key] for key in asdict(WarmupConfig())} == asdict(WarmupConfig())
    assert list(run["arms"]) == list(ARM_NAMES)
    assert {name: run["arms"][name]["overrides"] for name in ARM_NAMES} == {a.name: list(a.overrides) for a in ARMS}
