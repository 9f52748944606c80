"""Output files of one split: the parquet (in row groups), the skipped-rows log and the summary.

For a split written as ``<out>/<stem>.parquet``:

* the parquet, one row group at a time;
* ``<stem>.skipped.jsonl``: one line per skipped row (``index``, ``id``, ``reason``, ``detail``);
* ``<stem>.summary.json``: the counts (rows in, written, skipped by reason), a few examples per
  reason, rows that reuse an earlier row's ``id``, and the options used. It has no timestamps, so
  it is reproducible too.

Crash safety (:class:`SplitOutputs`). Each run writes its three files into a fresh version folder,
``<out>/.data_prep/<stem>/<n>/``. The user-visible paths ``<out>/<stem>.parquet`` etc. are
relative symbolic links into ``<out>/.data_prep/<stem>/current/``, and ``current`` is itself a
link to one version folder. A completed run makes the links if missing, then switches
``current`` to its folder with one ``os.replace`` (atomic on POSIX), then deletes the older
folders. So whenever the process stops, even by SIGKILL or a power cut (files and folders are
fsynced before the switch), the three paths show either the previous run's complete set or the
new one, never a mix. SIGINT/SIGTERM are held back during the switch; an interrupted or failed
run deletes its own folder, and the next run deletes any folder a killed run left. A ``--strict``
failure is a completed run: its summary and skip log replace the old ones and its version has no
parquet, so ``<stem>.parquet`` disappears (its link is removed after the switch; until then it
dangles, which readers see as no file).

Outputs of an earlier data_prep (plain files at the user-visible paths) are adopted on the first
run: hard-linked (or copied) into a version folder that ``current`` points to, then each path is
replaced by its link atomically; every path shows the old content throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import time
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
# Hidden folder of an output folder that holds every split's versions.
STATE_DIR = ".data_prep"
CURRENT = "current"
# Test hook: ``DATA_PREP_TEST_PAUSE=<point>:<marker file>`` makes the process write the marker file and
# sleep at that point of the commit, so a test can kill it there (points: :data:`PAUSE_POINTS`).
PAUSE_ENV = "DATA_PREP_TEST_PAUSE"
PAUSE_POINTS = ("adopting", "before_switch", "after_switch")
PAUSE_SECONDS = 300


def output_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    """The user-visible ``parquet``, ``skipped`` and ``summary`` paths of split ``stem`` under ``out_dir``."""
    return {
        "parquet": out_dir / f"{stem}.parquet",
        "skipped": out_dir / f"{stem}.skipped.jsonl",
        "summary": out_dir / f"{stem}.summary.json",
    }


def legacy_staging_path(path: Path) -> Path:
    """Where data_prep before versioned outputs staged ``path`` (deleted if a killed run left it)."""
    return path.with_name(path.name + ".partial")


def pause_point(name: str) -> None:
    """The :data:`PAUSE_ENV` test hook: at point ``name``, write the marker file and sleep."""
    setting = os.environ.get(PAUSE_ENV, "")
    point, _, marker = setting.partition(":")
    if point != name or not marker:
        return
    Path(marker).write_text(f"{os.getpid()}\n")
    time.sleep(PAUSE_SECONDS)


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_with_symlink(path: Path, target: str) -> None:
    """Make ``path`` a symbolic link to ``target`` in one atomic step (whatever ``path`` was)."""
    temporary = path.with_name(f".{path.name}.link-{os.getpid()}")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, path)


class SplitOutputs:
    """One split's versioned outputs: the folder this run writes (:attr:`staging`) and the switch.

    Args:
        out_dir: the output folder.
        stem: the split's file stem (``virl39k_train``).

    Call :meth:`begin` before writing to :attr:`staging`, then :meth:`commit` or :meth:`discard`.
    """

    def __init__(self, out_dir: Path, stem: str):
        self.out_dir = out_dir
        self.stem = stem
        self.final = output_paths(out_dir, stem)
        self.root = out_dir / STATE_DIR / stem
        self.current = self.root / CURRENT
        self.version: Path | None = None
        self.staging: dict[str, Path] = {}
        self.committed = False

    def link_target(self, kind: str) -> str:
        """The relative target of the user-visible link of ``kind``."""
        return f"{STATE_DIR}/{self.stem}/{CURRENT}/{self.final[kind].name}"

    def is_our_link(self, kind: str) -> bool:
        path = self.final[kind]
        return path.is_symlink() and os.readlink(path) == self.link_target(kind)

    def current_version(self) -> Path | None:
        """The version folder ``current`` points to, or None."""
        if not self.current.is_symlink():
            return None
        return self.root / os.readlink(self.current)

    def versions(self) -> list[Path]:
        """Every version folder of the split (numbered), in any state."""
        if not self.root.is_dir():
            return []
        return [entry for entry in self.root.iterdir() if entry.name.isdigit() and not entry.is_symlink()]

    def new_version(self) -> Path:
        """A fresh, empty version folder numbered one above every existing one."""
        self.root.mkdir(parents=True, exist_ok=True)
        number = max((int(entry.name) for entry in self.versions()), default=0) + 1
        folder = self.root / str(number)
        folder.mkdir()
        return folder

    def begin(self) -> None:
        """Delete what killed runs left (their version folders, links that lead nowhere, old
        ``.partial`` files) and create this run's version folder; :attr:`staging` points into it."""
        for path in self.final.values():
            legacy_staging_path(path).unlink(missing_ok=True)
        current = self.current_version()
        for folder in self.versions():
            if current is None or folder.name != current.name:
                shutil.rmtree(folder, ignore_errors=True)
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith("."):  # a temporary link of a killed switch
                    entry.unlink(missing_ok=True)
        for kind, path in self.final.items():
            if self.is_our_link(kind) and not path.exists():
                path.unlink()
            for leftover in path.parent.glob(f".{path.name}.link-*"):  # a temporary link of a killed run
                leftover.unlink(missing_ok=True)
        self.version = self.new_version()
        self.staging = {kind: self.version / path.name for kind, path in self.final.items()}

    def discard(self) -> None:
        """Delete this run's version folder (the visible outputs are not touched); no-op once committed."""
        if self.version is not None and not self.committed:
            shutil.rmtree(self.version, ignore_errors=True)

    def adopt_plain_files(self) -> None:
        """Turn outputs that are not this layout's links (an earlier data_prep's plain files) into a
        version that ``current`` points to, then into links, without changing what any path shows."""
        if self.current_version() is not None:
            return
        present = {kind: path for kind, path in self.final.items() if path.exists()}
        if not present:
            return
        adopted = self.new_version()
        for path in present.values():
            try:
                os.link(path, adopted / path.name)
            except OSError:  # another filesystem, or no hard links: a copy
                shutil.copy2(path, adopted / path.name)
            fsync_path(adopted / path.name)
        fsync_path(adopted)
        replace_with_symlink(self.current, adopted.name)
        fsync_path(self.root)
        for index, kind in enumerate(present):
            replace_with_symlink(self.final[kind], self.link_target(kind))
            if index == 0:
                pause_point("adopting")

    def commit(self, with_parquet: bool) -> None:
        """Switch the visible outputs to this run's version; without ``with_parquet`` it has no parquet.

        The three files are flushed, the links made, then ``current`` is switched atomically; older
        versions are deleted afterwards.
        """
        assert self.version is not None, "begin() was not called"
        with signals_deferred():
            if not with_parquet:
                self.staging["parquet"].unlink(missing_ok=True)
            for path in self.staging.values():
                if path.exists():
                    fsync_path(path)
            fsync_path(self.version)
            self.adopt_plain_files()
            for kind, path in self.final.items():
                if not self.is_our_link(kind):
                    replace_with_symlink(path, self.link_target(kind))
            fsync_path(self.out_dir)
            pause_point("before_switch")
            replace_with_symlink(self.current, self.version.name)
            self.committed = True
            fsync_path(self.root)
            pause_point("after_switch")
            for path in self.final.values():
                if not path.exists():  # a version without this file (--strict failure: no parquet)
                    path.unlink(missing_ok=True)
            for folder in self.versions():
                if folder.name != self.version.name:
                    shutil.rmtree(folder, ignore_errors=True)


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
        """Write the summary JSON to ``path`` (in the run's version folder; :class:`SplitOutputs` switches to it)."""
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
