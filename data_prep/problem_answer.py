"""Sources with columns ``images``, ``problem``, ``answer`` (and optionally ``id``).

This is the layout of ``PAPOGalaxy/PAPO_ViRL39K_train``, ``PAPOGalaxy/PAPO_MMK12_test`` and
``hiyouga/geometry3k``. Images are ``{bytes, path}`` structs (hub, saved datasets, parquet) or,
in JSON/JSONL and parquet files, paths relative to the file, found in folders or zip archives.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from data_prep.cli import add_run_arguments, run_prepare
from data_prep.pipeline import RowMapper, RunOptions, convert_split
from data_prep.problems import RowProblem
from data_prep.resolver import ImageResolver
from data_prep.rows import RawRow, RowSpec, Skip
from data_prep.sources import TableSource, open_table
from data_prep.writer import SplitSummary
from recipe.papo.prompt import data_source

REQUIRED_COLUMNS = ("images", "problem", "answer")
OPTIONAL_COLUMNS = ("id",)
# Every PAPO row is scored by the same math-answer reward (boxed answer graded by mathruler).
ABILITY = "math"


def source_id(value: Any) -> str | None:
    """The source ``id`` as a string (ids may be stored as integers), or ``None``."""
    return None if value is None else str(value)


def resolve_image_paths(images: Any, resolver: ImageResolver | None, base_dir) -> Any:
    """Replace path entries (strings, or ``{bytes: None, path}``) by ``{bytes, path}`` found under ``base_dir``.

    Other entries, and everything when there is no resolver (hub and saved datasets), pass through.
    """
    if resolver is None or not isinstance(images, list):
        return images
    resolved = []
    for entry in images:
        if isinstance(entry, str):
            entry = resolver.resolve(entry, base_dir)
        elif isinstance(entry, dict) and entry.get("bytes") is None and isinstance(entry.get("path"), str):
            entry = resolver.resolve(entry["path"], base_dir)
        resolved.append(entry)
    return resolved


def table_rows(table: TableSource, batch_size: int, resolver: ImageResolver | None) -> Iterator[RawRow | Skip]:
    """The rows of ``table`` as :class:`RawRow` (or :class:`Skip` for unparseable records), in order."""
    index = 0
    for batch in table.read_batches(REQUIRED_COLUMNS + OPTIONAL_COLUMNS, batch_size):
        for row in batch:
            if isinstance(row, RowProblem):
                yield Skip(index=index, id=None, reason=row.reason, detail=row.detail)
            else:
                yield RawRow(
                    index=index,
                    id=source_id(row["id"]),
                    question=row["problem"],
                    answer=row["answer"],
                    images=resolve_image_paths(row["images"], resolver, table.base_dir),
                )
            index += 1


def convert_table(
    *,
    dataset: str,
    stem: str,
    source: str,
    split: str | None,
    output_split: str,
    options: RunOptions,
    mapper: RowMapper,
) -> SplitSummary:
    """Convert split ``split`` of ``source`` to ``<out>/<stem>.parquet`` (``data_source`` ``papo/<dataset>``)."""
    table = open_table(source, split)
    table.require(REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
    spec = RowSpec(
        data_source=data_source(dataset),
        split=output_split,
        benchmark=dataset,
        group=None,
        ability=ABILITY,
        masks=options.masks,
    )
    resolver = ImageResolver(table.base_dir.resolve()) if table.base_dir is not None else nullcontext(None)
    with resolver as active:
        return convert_split(
            dataset=dataset,
            stem=stem,
            source=table.description,
            rows=table_rows(table, options.row_group_size, active),
            total=table.num_rows,
            spec=spec,
            options=options,
            mapper=mapper,
        )


@dataclass(frozen=True)
class SingleSplitDataset:
    """A one-split dataset in this layout, written to ``<out>/<name>_<output_split>.parquet``.

    Attributes:
        name: dataset name; ``data_source`` is ``papo/<name>`` and the command ``data_prep.<name>``.
        default_source: hub id used when ``--source`` is not given.
        output_split: ``extra_info.split`` of every row and the file-name suffix.
        masks: whether the command offers ``--precompute-masks`` (training data only).
    """

    name: str
    default_source: str
    output_split: str
    masks: bool

    @property
    def stem(self) -> str:
        return f"{self.name}_{self.output_split}"

    def prepare(
        self, source: str, options: RunOptions, mapper: RowMapper, split: str | None = None
    ) -> list[SplitSummary]:
        """Convert split ``split`` of ``source`` (``None``: its only split)."""
        return [
            convert_table(
                dataset=self.name,
                stem=self.stem,
                source=source,
                split=split,
                output_split=self.output_split,
                options=options,
                mapper=mapper,
            )
        ]

    def main(self, argv: Sequence[str] | None = None) -> int:
        """``python -m data_prep.<name> --source ... --out ...``."""
        parser = argparse.ArgumentParser(
            prog=f"python -m data_prep.{self.name}",
            description=f"Convert {self.default_source} (columns images/problem/answer) to verl parquet: "
            f"<out>/{self.stem}.parquet plus .summary.json and .skipped.jsonl.",
        )
        parser.add_argument(
            "--source",
            default=self.default_source,
            help="hub id or local path: saved dataset dir, .parquet, folder of parquet, .json/.jsonl "
            f"(default {self.default_source})",
        )
        parser.add_argument(
            "--split",
            default=None,
            help="split to read from a hub dataset, saved DatasetDict or parquet folder (default: the only one)",
        )
        add_run_arguments(parser, masks=self.masks)
        args = parser.parse_args(argv)

        return run_prepare(args, lambda options, mapper: self.prepare(args.source, options, mapper, split=args.split))
