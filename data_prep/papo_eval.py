"""Evaluation benchmarks: ``python -m data_prep.papo_eval --source PAPO-Galaxy/PAPO_eval --out DIR [--splits ...]``.

Converts the nine ShareGPT-style splits of ``PAPO-Galaxy/PAPO_eval`` (layout in
:mod:`data_prep.sharegpt`) to ``DIR/<benchmark>.parquet`` with ``data_source`` ``papo/<benchmark>``,
``extra_info.split`` ``test``, ``extra_info.benchmark`` and ``extra_info.group`` (``general`` or
``vision-dependent``). The source is the hub id (the repository is downloaded with
``huggingface_hub.snapshot_download``: its JSON files name images inside zip archives, which
``datasets.load_dataset`` cannot follow), a local copy of it (image folders extracted or still
zipped), or one split's JSON/JSONL file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep.cli import add_run_arguments, run_prepare
from data_prep.pipeline import RowMapper, RunOptions, convert_split
from data_prep.problem_answer import ABILITY
from data_prep.problems import DataPrepError
from data_prep.resolver import ImageResolver
from data_prep.rows import RowSpec
from data_prep.sharegpt import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, locate_split_file, sharegpt_rows
from data_prep.sources import check_local, hub_error, is_hub_id, open_json
from data_prep.writer import SplitSummary
from recipe.papo.prompt import EVAL_BENCHMARKS, benchmark_group, data_source

NAME = "papo_eval"
DEFAULT_SOURCE = "PAPO-Galaxy/PAPO_eval"
OUTPUT_SPLIT = "test"


def local_copy(source: str) -> Path:
    """``source`` as a local absolute path, downloading the hub repository if ``source`` is a hub id."""
    if is_hub_id(source):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=source, repo_type="dataset"))
        except Exception as error:
            raise hub_error(source, None, error) from None
    return check_local(source).resolve()


def plan_splits(path: Path, splits: Sequence[str] | None) -> tuple[Path, list[tuple[str, Path]]]:
    """``(image root, [(benchmark, split file), ...])`` for a dataset folder or a one-split file."""
    if path.is_file():
        if splits is not None and len(splits) != 1:
            raise DataPrepError(f"{path} is one split; pass at most one --splits value to name it.")
        benchmark = splits[0] if splits else path.stem
        if benchmark not in EVAL_BENCHMARKS:
            raise DataPrepError(
                f"cannot tell which benchmark {path} is; name it with --splits (one of {', '.join(EVAL_BENCHMARKS)})."
            )
        return path.parent, [(benchmark, path)]
    chosen = list(splits) if splits is not None else list(EVAL_BENCHMARKS)
    return path, [(benchmark, locate_split_file(path, benchmark)) for benchmark in chosen]


def prepare(
    source: str, options: RunOptions, mapper: RowMapper, splits: Sequence[str] | None = None
) -> list[SplitSummary]:
    """Convert ``splits`` (default: all nine) of ``source`` to ``<out>/<benchmark>.parquet``."""
    root, plan = plan_splits(local_copy(source), splits)
    summaries = []
    with ImageResolver(root) as resolver:
        for benchmark, split_file in plan:
            table = open_json(split_file)
            table.require(REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
            spec = RowSpec(
                data_source=data_source(benchmark),
                split=OUTPUT_SPLIT,
                benchmark=benchmark,
                group=benchmark_group(benchmark),
                ability=ABILITY,
            )
            summaries.append(
                convert_split(
                    dataset=benchmark,
                    stem=benchmark,
                    source=table.description,
                    rows=sharegpt_rows(table, options.row_group_size, resolver),
                    total=table.num_rows,
                    spec=spec,
                    options=options,
                    mapper=mapper,
                )
            )
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m data_prep.{NAME}",
        description="Convert the PAPO_eval benchmarks (ShareGPT JSON + image folders or zips) to "
        "verl parquet: <out>/<benchmark>.parquet per split.",
    )
    parser.add_argument(
        "--source",
        default=DEFAULT_SOURCE,
        help=f"hub id, local PAPO_eval folder, or one split's .json/.jsonl (default {DEFAULT_SOURCE})",
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
