"""Convert one split: read rows in batches, convert them (optionally in worker processes), write.

Memory: one input batch of ``row_group_size`` rows, their converted records, and the writer's
buffer of at most one row group are held at a time, whatever the number of rows.
Determinism: batches are converted with an order-preserving ``map`` and :func:`convert_row` is a
pure function, so the output does not depend on ``--num-proc``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.images import MaskOptions
from data_prep.interrupts import worker_signals
from data_prep.problems import StrictModeError
from data_prep.rows import RawRow, RowSpec, Skip, convert_row
from data_prep.schema import output_schema
from data_prep.writer import RecordWriter, SkipLog, SplitOutputs, SplitSummary
from recipe.papo.prompt import DEFAULT_PROMPT_TEMPLATE


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
        prompt_template: the user turn, ``{question}`` replaced by the trimmed question (checked).
    """

    out_dir: Path
    num_proc: int = 1
    max_rows: int | None = None
    strict: bool = False
    row_group_size: int = 256
    masks: MaskOptions | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE

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
            "prompt_template": self.prompt_template,
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
            self.pool = multiprocessing.get_context(method).Pool(num_proc, initializer=worker_signals)

    def __enter__(self) -> RowMapper:
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if self.pool is not None:
            if exc_type is None:
                self.pool.close()
            else:  # interrupted or failed: do not wait for queued work
                self.pool.terminate()
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

    The outputs are written beside the previous ones and swapped in only when the split completes
    (see :mod:`data_prep.writer`); an exception or signal leaves the previous outputs as they were.
    """
    options.out_dir.mkdir(parents=True, exist_ok=True)
    outputs = SplitOutputs(options.out_dir, stem)
    outputs.begin()  # deletes what a run killed outright left, and makes this run's version folder
    summary = SplitSummary(dataset, spec.split, source, outputs.final, options.summary_options())
    if options.max_rows is not None:
        rows = itertools.islice(rows, options.max_rows)
        total = min(total, options.max_rows)
    spec = dataclasses.replace(spec, prompt_template=options.prompt_template)
    convert = functools.partial(convert_row, spec=spec)
    schema = output_schema(spec.masks is not None)
    writer, skip_log = None, None
    try:
        writer = RecordWriter(outputs.staging["parquet"], schema, options.row_group_size)
        skip_log = SkipLog(outputs.staging["skipped"])
        with tqdm(total=total, desc=f"{dataset} {spec.split}", unit="row") as progress:
            for batch in batched(rows, options.row_group_size):
                for row in batch:
                    summary.note_id(row.id, row.index)
                for result in mapper.map(convert, batch):
                    if isinstance(result, Skip):
                        summary.add_skip(result)
                        skip_log.write(result)
                    else:
                        writer.add(result)
                summary.rows_in += len(batch)
                progress.update(len(batch))
        writer.close()
        skip_log.close()
        if options.strict and summary.rows_skipped:
            summary.status = f"failed: --strict and {summary.rows_skipped} row(s) skipped"
        else:
            summary.rows_written, summary.row_groups = writer.rows_written, writer.row_groups
        summary.save(outputs.staging["summary"])
        outputs.commit(with_parquet=summary.status == "ok")
    except BaseException:
        for handle in (writer, skip_log):
            if handle is not None:
                handle.abandon()
        outputs.discard()
        raise
    print(summary.render(), flush=True)
    if summary.status != "ok":
        raise StrictModeError(
            f"{dataset} [{spec.split}]: {summary.rows_skipped} row(s) skipped with --strict "
            f"({', '.join(f'{r}={n}' for r, n in sorted(summary.skipped_by_reason.items()))}); "
            f"see {outputs.final['skipped']}. Fix the source or drop --strict."
        )
    return summary
