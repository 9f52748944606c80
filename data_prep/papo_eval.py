"""Evaluation benchmarks: ``python -m data_prep.papo_eval [--source PAPO-Galaxy/PAPO_eval] --out DIR [--splits ...]``.

Converts the nine ShareGPT-style splits of ``PAPO-Galaxy/PAPO_eval`` (rows: :mod:`data_prep.sharegpt`;
where rows and images are in each source layout: :mod:`data_prep.eval_layouts`) to
``DIR/<benchmark>.parquet`` with ``data_source`` ``papo/<benchmark>``, ``extra_info.split``
``test``, ``extra_info.benchmark`` and ``extra_info.group`` (``general`` or ``vision-dependent``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from data_prep.cli import add_run_arguments, run_prepare
from data_prep.eval_layouts import BenchmarkSource, archive_names, plan_sources
from data_prep.pipeline import RowMapper, RunOptions, convert_split
from data_prep.problem_answer import ABILITY
from data_prep.resolver import ImageResolver
from data_prep.rows import RowSpec
from data_prep.sharegpt import sharegpt_rows
from data_prep.writer import SplitSummary
from recipe.papo.prompt import EVAL_BENCHMARKS, benchmark_group, data_source

NAME = "papo_eval"
DEFAULT_SOURCE = "PAPO-Galaxy/PAPO_eval"
OUTPUT_SPLIT = "test"


def convert_benchmark(item: BenchmarkSource, options: RunOptions, mapper: RowMapper) -> SplitSummary:
    """Convert one benchmark's rows to ``<out>/<benchmark>.parquet``, resolving its images."""
    absent = None
    if not item.archives:
        absent = f"looked for {' or '.join(archive_names(item.benchmark))} under {item.image_root}"
        if item.folder is None or not item.folder.has_images():
            print(
                f"papo_eval: warning: no image zip for {item.benchmark} ({absent}) and no image files there; "
                "rows that name image paths will be skipped.",
                file=sys.stderr,
            )
    spec = RowSpec(
        data_source=data_source(item.benchmark),
        split=OUTPUT_SPLIT,
        benchmark=item.benchmark,
        group=benchmark_group(item.benchmark),
        ability=ABILITY,
    )
    with ImageResolver(item.image_root, item.archives, item.folder, absent_archives=absent) as resolver:
        return convert_split(
            dataset=item.benchmark,
            stem=item.benchmark,
            source=item.table.description,
            rows=sharegpt_rows(item.table, options.row_group_size, resolver),
            total=item.table.num_rows,
            spec=spec,
            options=options,
            mapper=mapper,
        )


def prepare(
    source: str, options: RunOptions, mapper: RowMapper, splits: Sequence[str] | None = None
) -> list[SplitSummary]:
    """Convert ``splits`` (default: all nine) of ``source`` to ``<out>/<benchmark>.parquet``."""
    return [convert_benchmark(item, options, mapper) for item in plan_sources(source, splits)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m data_prep.{NAME}",
        description="Convert the PAPO_eval benchmarks (ShareGPT rows + per-benchmark image zips) to "
        "verl parquet: <out>/<benchmark>.parquet per split.",
    )
    parser.add_argument(
        "--source",
        default=DEFAULT_SOURCE,
        help="hub id (rows via datasets.load_dataset, one image zip per chosen benchmark via hf_hub_download), "
        "a local copy of the repository folder, a folder with <benchmark>.json splits (e.g. papo/ + images/), "
        f"or one split's .json/.jsonl (default {DEFAULT_SOURCE})",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=EVAL_BENCHMARKS,
        default=None,
        metavar="BENCHMARK",
        help=f"benchmarks to convert (default: all nine: {', '.join(EVAL_BENCHMARKS)})",
    )
    add_run_arguments(parser, masks=False)
    args = parser.parse_args(argv)

    return run_prepare(args, lambda options, mapper: prepare(args.source, options, mapper, splits=args.splits))


if __name__ == "__main__":
    sys.exit(main())
