"""Everything at once: ``python -m data_prep.all --out DIR``.

Writes ``DIR/virl39k_train.parquet`` (train), ``DIR/mmk12_val.parquet`` (validation),
``DIR/eval/<benchmark>.parquet`` (the nine evaluation splits) and ``DIR/geometry3k_<split>.parquet``,
each with its ``.summary.json`` and ``.skipped.jsonl``, then ``DIR/all.summary.json`` and a table of
every split. A dataset that fails (bad source, or ``--strict`` with skipped rows) is reported and the
others still run; the exit code is then 2 (bad input) or 1 (``--strict``). Interrupted (SIGINT /
SIGTERM), the split being written keeps its previous outputs and ``all.summary.json`` is removed
(the run did not complete). It is removed when a run starts and written (atomically) when it ends, so
after a run killed outright (SIGKILL) it is absent too.
``--precompute-masks`` applies to the training set (virl39k) only: the other sets are not trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence

from data_prep import geometry3k, mmk12, papo_eval, virl39k
from data_prep.cli import add_run_arguments, interrupted_exit, run_options
from data_prep.interrupts import Terminated, terminate_raises
from data_prep.pipeline import RowMapper, RunOptions
from data_prep.problems import DataPrepError, StrictModeError
from data_prep.writer import SplitSummary

DATASETS = ("virl39k", "mmk12", "papo_eval", "geometry3k")


def plan(args: argparse.Namespace, options: RunOptions) -> dict[str, Callable[[RowMapper], list[SplitSummary]]]:
    """One conversion per selected dataset, with its source and output folder."""
    no_masks = dataclasses.replace(options, masks=None)
    eval_options = dataclasses.replace(no_masks, out_dir=options.out_dir / "eval")
    steps = {
        "virl39k": lambda mapper: virl39k.prepare(args.virl39k_source, options, mapper),
        "mmk12": lambda mapper: mmk12.prepare(args.mmk12_source, no_masks, mapper),
        "papo_eval": lambda mapper: papo_eval.prepare(args.eval_source, eval_options, mapper),
        "geometry3k": lambda mapper: geometry3k.prepare(args.geometry3k_source, no_masks, mapper),
    }
    return {name: steps[name] for name in DATASETS if name in args.only}


def render_table(summaries: list[SplitSummary], failures: dict[str, str]) -> str:
    lines = [f"{'dataset':<36}{'split':<12}{'rows in':>9}{'written':>9}{'skipped':>9}"]
    for summary in summaries:
        lines.append(
            f"{summary.dataset:<36}{summary.split:<12}{summary.rows_in:>9}{summary.rows_written:>9}{summary.rows_skipped:>9}"
        )
    lines += [f"FAILED {name}: {message}" for name, message in failures.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.all",
        description=__doc__.split("\n\n")[0] + " --precompute-masks applies to virl39k only.",
    )
    parser.add_argument("--virl39k-source", default=virl39k.DATASET.default_source, help="training set source")
    parser.add_argument("--mmk12-source", default=mmk12.DATASET.default_source, help="validation set source")
    parser.add_argument("--eval-source", default=papo_eval.DEFAULT_SOURCE, help="PAPO_eval source")
    parser.add_argument("--geometry3k-source", default=geometry3k.DEFAULT_SOURCE, help="Geometry3K source")
    parser.add_argument(
        "--only", nargs="+", choices=DATASETS, default=list(DATASETS), help="datasets to prepare (default: all)"
    )
    add_run_arguments(parser, masks=True)
    args = parser.parse_args(argv)
    try:
        options = run_options(args)
    except DataPrepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    summaries: list[SplitSummary] = []
    failures: dict[str, str] = {}
    exit_code = 0
    combined_path = options.out_dir / "all.summary.json"
    combined_path.unlink(missing_ok=True)  # it would describe splits this run is about to replace
    try:
        with terminate_raises(), RowMapper(options.num_proc) as mapper:
            for name, step in plan(args, options).items():
                try:
                    summaries += step(mapper)
                except (DataPrepError, StrictModeError) as error:
                    failures[name] = str(error)
                    print(f"error: {name}: {error}", file=sys.stderr)
                    exit_code = max(exit_code, 2 if isinstance(error, DataPrepError) else 1)
    except (Terminated, KeyboardInterrupt) as error:
        combined_path.unlink(missing_ok=True)
        return interrupted_exit(error)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    combined = {"splits": [summary.to_json() for summary in summaries], "failures": failures}
    staged = combined_path.with_name(combined_path.name + ".partial")
    staged.write_text(json.dumps(combined, indent=2) + "\n")
    os.replace(staged, combined_path)
    print(render_table(summaries, failures))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
