"""Convert one split: read rows in batches, convert them (optionally in worker processes), write.

Memory: one input batch of ``row_group_size`` rows, their converted records, and the writer's
buffer of at most one row group are held at a time, whatever the number of rows.
Determinism: batches are converted with an order-preserving ``map`` and :func:`convert_row` is a
pure function, so the output does not depend on ``--num-proc``.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.images import MaskOptions
from data_prep.problems import StrictModeError
from data_prep.rows import RawRow, RowSpec, Skip, convert_row
from data_prep.schema import output_schema
from data_prep.writer import RecordWriter, SkipLog, SplitSummary, output_paths


@dataclass(frozen=True)
class RunOptions:
    """Options shared by every command.

    Attributes:
        out_dir: output folder (created if missing).
        num_proc: worker processes converting rows (1: convert in the main process).
        max_rows: read at most this many rows per split (``None``: all).
        strict: fail (exit 1, no parquet) if any row is skipped.
        row_group_size: rows per parquet row group, also the read batch size.
        masks: pre-compute ``images_aug`` with these settings, or ``None``.
    """

    out_dir: Path
    num_proc: int = 1
    max_rows: int | None = None
    strict: bool = False
    row_group_size: int = 256
    masks: MaskOptions | None = None

    def summary_options(self) -> dict[str, Any]:
        """The options recorded in each summary JSON."""
        masks = self.masks
        return {
            "max_rows": self.max_rows,
            "strict": self.strict,
            "precompute_masks": masks is not None,
            "mask_ratio": masks.ratio if masks else None,
            "patch_size": masks.patch_size if masks else None,
            "seed": masks.seed if masks else None,
        }


class RowMapper:
    """Order-preserving ``map`` over a list, in-process or in a pool of ``num_proc`` processes.

    Workers are forked where the platform allows it (they inherit the parent's imports, so they
    start in milliseconds) and spawned elsewhere. Work in the workers is PIL and NumPy only.
    """

    def __init__(self, num_proc: int):
        if num_proc < 1:
            raise ValueError(f"num_proc must be >= 1, got {num_proc}")
        self.num_proc = num_proc
        self.pool = None
        if num_proc > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = multiprocessing.get_context(method).Pool(num_proc)

    def __enter__(self) -> RowMapper:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()

    def map(self, function, items: list) -> list:
        if self.pool is None:
            return [function(item) for item in items]
        chunksize = max(1, len(items) // (4 * self.num_proc))
        return self.pool.map(function, items, chunksize=chunksize)


def batched(rows: Iterable[RawRow | Skip], size: int) -> Iterator[list[RawRow | Skip]]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def convert_split(
    *,
    dataset: str,
    stem: str,
    source: str,
    rows: Iterable[RawRow | Skip],
    total: int,
    spec: RowSpec,
    options: RunOptions,
    mapper: RowMapper,
) -> SplitSummary:
    """Convert ``rows`` (at most ``options.max_rows``) of one split into ``<out_dir>/<stem>.parquet``.

    Args:
        dataset: dataset name for messages and the summary (e.g. ``virl39k``).
        stem: output file stem.
        source: where the rows come from (path or hub id, and split), for the summary.
        rows: the split's rows in source order.
        total: number of rows in the split (before ``max_rows``), for the progress bar.
        spec: per-split record fields.
        options: shared options.
        mapper: where rows are converted.

    Returns:
        The split's summary (already printed and saved).

    Raises:
        StrictModeError: ``options.strict`` and at least one row was skipped (no parquet is left).
    """
    options.out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(options.out_dir, stem)
    summary = SplitSummary(dataset, spec.split, source, paths, options.summary_options())
    if options.max_rows is not None:
        rows = itertools.islice(rows, options.max_rows)
        total = min(total, options.max_rows)
    convert = functools.partial(convert_row, spec=spec)
    writer = RecordWriter(paths["parquet"], output_schema(spec.masks is not None), options.row_group_size)
    skip_log = SkipLog(paths["skipped"])
    try:
        with tqdm(total=total, desc=f"{dataset} {spec.split}", unit="row") as progress:
            for batch in batched(rows, options.row_group_size):
                for result in mapper.map(convert, batch):
                    if isinstance(result, Skip):
                        summary.add_skip(result)
                        skip_log.write(result)
                    else:
                        writer.add(result)
                summary.rows_in += len(batch)
                progress.update(len(batch))
        if options.strict and summary.rows_skipped:
            summary.status = f"failed: --strict and {summary.rows_skipped} row(s) skipped"
            writer.abort()
        else:
            writer.commit()
            summary.rows_written, summary.row_groups = writer.rows_written, writer.row_groups
    except BaseException:
        writer.abort()
        raise
    finally:
        skip_log.close()
    summary.save()
    print(summary.render(), flush=True)
    if summary.status != "ok":
        raise StrictModeError(
            f"{dataset} [{spec.split}]: {summary.rows_skipped} row(s) skipped with --strict "
            f"({', '.join(f'{r}={n}' for r, n in sorted(summary.skipped_by_reason.items()))}); "
            f"see {paths['skipped']}. Fix the source or drop --strict."
        )
    return summary
