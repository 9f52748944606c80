"""Geometry3K in its hub layout: ``python -m data_prep.geometry3k --source hiyouga/geometry3k --out DIR``.

Reads splits ``train``, ``validation`` and ``test`` (columns images/problem/answer) from the hub, a
saved ``DatasetDict`` or a hub snapshot folder (``data/<split>-NNNNN-of-NNNNN.parquet``) and writes
``DIR/geometry3k_<split>.parquet`` (``data_source`` ``papo/geometry3k``, ``extra_info.split`` = the
split). A one-split source (a single file or saved ``Dataset``) needs exactly one ``--splits`` value,
which names it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from data_prep.cli import add_run_arguments, run_prepare
from data_prep.pipeline import RowMapper, RunOptions
from data_prep.problem_answer import convert_table
from data_prep.problems import DataPrepError
from data_prep.sources import available_splits
from data_prep.writer import SplitSummary

NAME = "geometry3k"
DEFAULT_SOURCE = "hiyouga/geometry3k"


def prepare(
    source: str, options: RunOptions, mapper: RowMapper, splits: Sequence[str] | None = None
) -> list[SplitSummary]:
    """Convert ``splits`` of ``source`` (``None``: every split the source has)."""
    found = available_splits(source)
    if found is None:
        if splits is None or len(splits) != 1:
            raise DataPrepError(
                f"source {source} holds a single split; name it with exactly one --splits value (e.g. --splits test)."
            )
        plan = [(None, splits[0])]
    else:
        plan = [(split, split) for split in (splits if splits is not None else found)]
    return [
        convert_table(
            dataset=NAME,
            stem=f"{NAME}_{output_split}",
            source=source,
            split=split,
            output_split=output_split,
            options=options,
            mapper=mapper,
        )
        for split, output_split in plan
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m data_prep.{NAME}",
        description="Convert Geometry3K (hub layout) to verl parquet: <out>/geometry3k_<split>.parquet per split.",
    )
    parser.add_argument(
        "--source",
        default=DEFAULT_SOURCE,
        help=f"hub id, saved DatasetDict, hub snapshot folder or one-split file (default {DEFAULT_SOURCE})",
    )
    parser.add_argument("--splits", nargs="+", default=None, help="splits to convert (default: all the source has)")
    add_run_arguments(parser, masks=True)
    args = parser.parse_args(argv)

    return run_prepare(args, lambda options, mapper: prepare(args.source, options, mapper, splits=args.splits))


if __name__ == "__main__":
    sys.exit(main())
