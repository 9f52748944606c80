"""Output files of one split: the parquet (in row groups), the skipped-rows log and the summary.

For a split written as ``<out>/<stem>.parquet``:

* the parquet is written to ``<stem>.parquet.partial`` one row group at a time and renamed when
  complete, so an interrupted or ``--strict``-failed run never leaves a half file under the final
  name;
* ``<stem>.skipped.jsonl`` gets one line per skipped row (``index``, ``id``, ``reason``, ``detail``),
  streamed as rows are skipped;
* ``<stem>.summary.json`` holds the counts (rows in, written, skipped by reason), a few examples
  per reason and the options used. It has no timestamps, so it is reproducible too.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.rows import Skip

EXAMPLES_PER_REASON = 5


def output_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    """The ``parquet``, ``skipped`` and ``summary`` paths of split ``stem`` under ``out_dir``."""
    return {
        "parquet": out_dir / f"{stem}.parquet",
        "skipped": out_dir / f"{stem}.skipped.jsonl",
        "summary": out_dir / f"{stem}.summary.json",
    }


class RecordWriter:
    """Buffers records and writes them as parquet row groups of ``row_group_size`` rows.

    At most ``row_group_size`` records are held in memory. Row-group boundaries depend only on
    the sequence of records, so the same records give byte-identical files.
    """

    def __init__(self, path: Path, schema: pa.Schema, row_group_size: int):
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.schema = schema
        self.row_group_size = row_group_size
        self.buffer: list[dict[str, Any]] = []
        self.rows_written = 0
        self.row_groups = 0
        self.writer = pq.ParquetWriter(self.partial, schema)

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

    def commit(self) -> None:
        """Write the last row group and move the file to its final name."""
        self._flush()
        self.writer.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        """Close and delete the partial file; remove a stale final file from an earlier run too."""
        self.writer.close()
        self.partial.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


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

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

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
            "skipped_rows_file": str(self.paths["skipped"]),
            "options": self.options,
        }

    def save(self) -> None:
        self.paths["summary"].write_text(json.dumps(self.to_json(), indent=2) + "\n")

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
