"""Output files of one split: the parquet (in row groups), the skipped-rows log and the summary.

For a split written as ``<out>/<stem>.parquet``:

* the parquet, one row group at a time;
* ``<stem>.skipped.jsonl``: one line per skipped row (``index``, ``id``, ``reason``, ``detail``);
* ``<stem>.summary.json``: the counts (rows in, written, skipped by reason), a few examples per
  reason, rows that reuse an earlier row's ``id``, and the options used. It has no timestamps, so
  it is reproducible too.

All three are written beside the old ones as ``<name>.partial`` and swapped in together by
:meth:`SplitOutputs.commit` when the run completes (with SIGINT/SIGTERM held back during the swap).
An interrupted or failed run deletes its ``.partial`` files, so the folder keeps the previous run's
three files untouched (or none). A ``--strict`` failure is a completed run: its summary and skip log
replace the old ones and the old parquet is removed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.interrupts import signals_deferred
from data_prep.rows import Skip

EXAMPLES_PER_REASON = 5
DUPLICATE_EXAMPLES = 5
OUTPUT_KINDS = ("parquet", "skipped", "summary")


def output_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    """The ``parquet``, ``skipped`` and ``summary`` paths of split ``stem`` under ``out_dir``."""
    return {
        "parquet": out_dir / f"{stem}.parquet",
        "skipped": out_dir / f"{stem}.skipped.jsonl",
        "summary": out_dir / f"{stem}.summary.json",
    }


def staging_path(path: Path) -> Path:
    """Where the new version of ``path`` is written before it is swapped in."""
    return path.with_name(path.name + ".partial")


class SplitOutputs:
    """The staging and final paths of one split's three output files."""

    def __init__(self, out_dir: Path, stem: str):
        self.final = output_paths(out_dir, stem)
        self.staging = {kind: staging_path(path) for kind, path in self.final.items()}

    def discard(self) -> None:
        """Delete the staging files (the final files are not touched)."""
        for path in self.staging.values():
            path.unlink(missing_ok=True)

    def commit(self, with_parquet: bool) -> None:
        """Swap the staged files in; without ``with_parquet`` the old parquet is removed instead."""
        with signals_deferred():
            if with_parquet:
                self.staging["parquet"].replace(self.final["parquet"])
            else:
                self.final["parquet"].unlink(missing_ok=True)
                self.staging["parquet"].unlink(missing_ok=True)
            self.staging["skipped"].replace(self.final["skipped"])
            self.staging["summary"].replace(self.final["summary"])


class RecordWriter:
    """Buffers records and writes them as parquet row groups of ``row_group_size`` rows.

    At most ``row_group_size`` records are held in memory. Row-group boundaries depend only on
    the sequence of records, so the same records give byte-identical files.
    """

    def __init__(self, path: Path, schema: pa.Schema, row_group_size: int):
        self.path = path
        self.schema = schema
        self.row_group_size = row_group_size
        self.buffer: list[dict[str, Any]] = []
        self.rows_written = 0
        self.row_groups = 0
        self.writer = pq.ParquetWriter(path, schema)

    def add(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_pylist(self.buffer, schema=self.schema)
        self.writer.write_table(table, row_group_size=self.row_group_size)
        self.rows_written += len(self.buffer)
        self.row_groups += 1
        self.buffer = []

    def close(self) -> None:
        """Write the last row group and close the file."""
        self._flush()
        self.writer.close()

    def abandon(self) -> None:
        """Close the file without writing the buffered rows (the caller deletes it)."""
        self.buffer = []
        self.writer.close()


@dataclass
class SplitSummary:
    """Row accounting of one output split: ``rows_in == rows_written + sum(skipped_by_reason)``."""

    dataset: str
    split: str
    source: str
    paths: dict[str, Path]
    options: dict[str, Any]
    rows_in: int = 0
    rows_written: int = 0
    row_groups: int = 0
    skipped_by_reason: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    status: str = "ok"
    duplicate_id_rows: int = 0
    duplicate_examples: list[dict[str, Any]] = field(default_factory=list)
    first_index_of_id: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    def note_id(self, row_id: str | None, index: int) -> None:
        """Count row ``index`` as a duplicate if an earlier row of the split has the same ``row_id``."""
        if row_id is None:
            return
        first = self.first_index_of_id.setdefault(row_id, index)
        if first != index:
            self.duplicate_id_rows += 1
            if len(self.duplicate_examples) < DUPLICATE_EXAMPLES:
                self.duplicate_examples.append({"id": row_id, "first_index": first, "index": index})

    def add_skip(self, skip: Skip) -> None:
        self.skipped_by_reason[skip.reason] += 1
        examples = self.examples.setdefault(skip.reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(skip.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "source": self.source,
            "status": self.status,
            "output": str(self.paths["parquet"]) if self.status == "ok" else None,
            "rows_in": self.rows_in,
            "rows_written": self.rows_written,
            "rows_skipped": self.rows_skipped,
            "row_groups": self.row_groups,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "skipped_examples": {reason: self.examples[reason] for reason in sorted(self.examples)},
            "duplicate_id_rows": self.duplicate_id_rows,
            "duplicate_id_examples": self.duplicate_examples,
            "skipped_rows_file": str(self.paths["skipped"]),
            "options": self.options,
        }

    def save(self, path: Path) -> None:
        """Write the summary JSON to ``path`` (the staging file; :class:`SplitOutputs` swaps it in)."""
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def render(self) -> str:
        """The human-readable summary printed after each split."""
        lines = [
            f"{self.dataset} [{self.split}] from {self.source}",
            f"  rows in      {self.rows_in:>8}",
            f"  written      {self.rows_written:>8}"
            + (f"  -> {self.paths['parquet']}" if self.status == "ok" else "  (no parquet: see status)"),
            f"  skipped      {self.rows_skipped:>8}"
            + (f"  (every row listed in {self.paths['skipped']})" if self.rows_skipped else ""),
        ]
        for reason, count in sorted(self.skipped_by_reason.items()):
            lines.append(
                f"    {reason:<22}{count:>8}   e.g. row {self.examples[reason][0]['index']}: "
                f"{self.examples[reason][0]['detail'][:100]}"
            )
        if self.duplicate_id_rows:
            example = self.duplicate_examples[0]
            lines.append(
                f"  duplicate ids{self.duplicate_id_rows:>8}   rows reuse an earlier row's id (e.g. id "
                f"{example['id']!r} at rows {example['first_index']} and {example['index']}); "
                "kept, masks differ per row"
            )
        lines.append(f"  status       {self.status}")
        lines.append(f"  summary      {self.paths['summary']}")
        return "\n".join(lines)


class SkipLog:
    """Appends one JSON line per skipped row to ``path`` (created empty, so it always exists)."""

    def __init__(self, path: Path):
        self.handle = path.open("w", encoding="utf-8")

    def write(self, skip: Skip) -> None:
        self.handle.write(json.dumps(skip.to_json(), sort_keys=True) + "\n")

    def close(self) -> None:
        self.handle.close()

    def abandon(self) -> None:
        """Close the log (the caller deletes it)."""
        self.handle.close()
