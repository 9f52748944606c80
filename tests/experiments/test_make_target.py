"""``make experiment`` runs the experiment's command line with an output folder (docs/dynamics.md)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from papo_tools.experiments.dynamics import build_parser

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
