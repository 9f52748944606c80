"""Open one split of a tabular source and read it lazily, in batches of Python dict rows.

A ``--source`` is, in this order of detection:

* an existing directory written by ``datasets`` ``save_to_disk`` (a ``Dataset`` or a
  ``DatasetDict``; contains ``state.json`` or ``dataset_dict.json``);
* an existing directory holding ``.parquet`` files (a hub snapshot such as
  ``data/train-00000-of-00002.parquet``: the split is the part before ``-NNNNN-of-NNNNN``, or the
  file stem);
* an existing ``.parquet``, ``.json`` (a list of objects) or ``.jsonl`` file: one split;
* otherwise a Hugging Face hub id ``owner/name``, loaded with ``datasets.load_dataset``.

Only the requested columns are read, one batch at a time, so memory does not grow with the number
of rows. Image columns are read as stored (``{bytes, path}`` structs), never decoded here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.problems import DataPrepError, RowProblem

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
SHARD_NAME = re.compile(r"(?P<split>.+?)-\d{5}-of-\d{5}")
TABLE_SUFFIXES = (".parquet", ".json", ".jsonl")

Row = dict[str, Any] | RowProblem


@dataclass
class TableSource:
    """One split of a source.

    Attributes:
        description: where the rows come from, for messages (path or hub id, and split).
        columns: the column names found.
        num_rows: number of rows in the split.
        base_dir: folder that relative image paths in this split are relative to (file sources), or
            ``None`` (hub and saved datasets store image bytes).
        read_batches: ``read_batches(columns, batch_size)`` yields lists of rows (dicts holding
            only ``columns``, missing keys as ``None``) or :class:`RowProblem` for records that
            cannot be parsed.
    """

    description: str
    columns: tuple[str, ...]
    num_rows: int
    base_dir: Path | None
    read_batches: Callable[[Sequence[str], int], Iterator[list[Row]]]

    def require(self, required: Sequence[str], optional: Sequence[str] = ()) -> None:
        """Raise :class:`DataPrepError` naming the first missing required column and all columns found."""
        for column in required:
            if column not in self.columns:
                expected = ", ".join(required) + (f" (optional: {', '.join(optional)})" if optional else "")
                raise DataPrepError(
                    f"{self.description}: missing column {column!r}. Columns found: "
                    f"{', '.join(self.columns) or '(none)'}. Expected columns: {expected}. "
                    "Point --source at a dataset with this layout (input layouts: docs/data.md)."
                )


def is_hub_id(source: str) -> bool:
    """True if ``source`` is not an existing path and has the ``owner/name`` form of a hub id.

    Names ending like a data file (``dir/train.parquet``) or whose first part is an existing local
    folder (``data/missing``) are taken as (missing) local paths.
    """
    path = Path(source)
    if path.exists() or source.startswith(".") or source.endswith((*TABLE_SUFFIXES, ".zip", ".arrow")):
        return False
    if path.parent != Path(".") and path.parent.is_dir():
        return False
    return HUB_ID.fullmatch(source) is not None


def check_local(source: str) -> Path:
    """``source`` as an existing path, or :class:`DataPrepError` saying what was expected."""
    path = Path(source)
    if not path.exists():
        raise DataPrepError(
            f"source {source!r} does not exist and is not a hub id (owner/name). Pass a saved dataset "
            "directory, a .parquet/.json/.jsonl file, a folder of parquet files, or a hub id."
        )
    return path


def split_of_parquet(path: Path) -> str:
    """The split a parquet file belongs to: ``train`` for ``train-00000-of-00004.parquet`` or ``train.parquet``."""
    match = SHARD_NAME.fullmatch(path.stem)
    return match.group("split") if match else path.stem


def parquet_files(directory: Path) -> list[Path]:
    """All parquet files under ``directory``, sorted by path."""
    return sorted(directory.rglob("*.parquet"))


def is_saved_dataset(directory: Path) -> bool:
    return (directory / "dataset_dict.json").is_file() or (directory / "state.json").is_file()


def available_splits(source: str) -> tuple[str, ...] | None:
    """Split names of ``source``, or ``None`` for a single unnamed split (one file or a saved ``Dataset``)."""
    if is_hub_id(source):
        import datasets

        try:
            return tuple(datasets.get_dataset_split_names(source))
        except Exception as error:
            raise hub_error(source, None, error) from None
    path = check_local(source)
    if path.is_file():
        return None
    if is_saved_dataset(path):
        return _load_from_disk_splits(path)
    files = parquet_files(path)
    if files:
        return tuple(dict.fromkeys(split_of_parquet(file) for file in files))
    raise _unrecognised_directory(path)


def _load_from_disk_splits(path: Path) -> tuple[str, ...] | None:
    if (path / "dataset_dict.json").is_file():
        try:
            return tuple(json.loads((path / "dataset_dict.json").read_text())["splits"])
        except (OSError, ValueError, KeyError) as error:
            raise DataPrepError(f"cannot read {path / 'dataset_dict.json'}: {error}") from None
    return None


def _unrecognised_directory(path: Path) -> DataPrepError:
    found = sorted(p.name for p in path.iterdir())[:20]
    return DataPrepError(
        f"source directory {path} is neither a saved dataset (no state.json or dataset_dict.json) nor a "
        f"folder of .parquet files; it contains: {', '.join(found) or '(nothing)'}."
    )


def hub_error(hub_id: str, split: str | None, error: Exception) -> DataPrepError:
    return DataPrepError(
        f"cannot load hub dataset {hub_id!r}" + (f" split {split!r}" if split else "") + f": "
        f"{type(error).__name__}: {error}. Without network access, download it elsewhere and pass the "
        "local copy (saved dataset directory, parquet or JSON) as --source; if you meant a local path, "
        "it does not exist."
    )


def choose_split(description: str, splits: Sequence[str], split: str | None) -> str:
    """``split`` if it is one of ``splits``; the only split when ``split`` is ``None``."""
    if split is None:
        if len(splits) == 1:
            return splits[0]
        raise DataPrepError(
            f"{description} has splits {', '.join(splits)}; choose one with --split (data_prep.all has no "
            "--split: run the dataset's own command, or point its --<name>-source at a single split)."
        )
    if split not in splits:
        raise DataPrepError(f"{description} has no split {split!r}; splits found: {', '.join(splits)}.")
    return split


def _single_split(description: str, split: str | None) -> None:
    """Refuse a split name for a source that has one unnamed split."""
    if split is not None:
        raise DataPrepError(f"{description} holds a single split; drop --split {split} (it selects nothing).")


def open_table(source: str, split: str | None) -> TableSource:
    """Open split ``split`` of ``source`` (``None``: its only split). See the module docstring."""
    if is_hub_id(source):
        return _open_hub(source, split)
    path = check_local(source)
    if path.is_file():
        _single_split(f"source file {path}", split)
        return _open_file(path)
    if is_saved_dataset(path):
        return _open_saved(path, split)
    files = parquet_files(path)
    if not files:
        raise _unrecognised_directory(path)
    splits = tuple(dict.fromkeys(split_of_parquet(file) for file in files))
    chosen = choose_split(f"parquet folder {path}", splits, split)
    return _open_parquet([file for file in files if split_of_parquet(file) == chosen], f"{path} (split {chosen})")


def _open_file(path: Path) -> TableSource:
    if path.suffix == ".parquet":
        return _open_parquet([path], str(path))
    if path.suffix in (".json", ".jsonl"):
        return open_json(path)
    raise DataPrepError(f"source file {path} has an unsupported type; use .parquet, .json or .jsonl.")


def dataset_table_source(dataset, description: str) -> TableSource:
    """A :class:`TableSource` over a ``datasets.Dataset`` (memory-mapped Arrow, read in batches)."""

    def read_batches(columns: Sequence[str], batch_size: int) -> Iterator[list[Row]]:
        present = [column for column in columns if column in dataset.column_names]
        view = dataset.select_columns(present).with_format("arrow")
        for table in view.iter(batch_size=batch_size):
            yield [{column: row.get(column) for column in columns} for row in table.to_pylist()]

    return TableSource(description, tuple(dataset.column_names), len(dataset), None, read_batches)


def _open_hub(hub_id: str, split: str | None) -> TableSource:
    import datasets

    try:
        chosen = choose_split(f"hub dataset {hub_id}", datasets.get_dataset_split_names(hub_id), split)
        dataset = datasets.load_dataset(hub_id, split=chosen)
    except DataPrepError:
        raise
    except Exception as error:
        raise hub_error(hub_id, split, error) from None
    return dataset_table_source(dataset, f"hub dataset {hub_id} (split {chosen})")


def _open_saved(path: Path, split: str | None) -> TableSource:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DataPrepError(f"cannot read saved dataset {path}: {type(error).__name__}: {error}") from None
    if isinstance(loaded, datasets.DatasetDict):
        chosen = choose_split(f"saved dataset {path}", list(loaded), split)
        return dataset_table_source(loaded[chosen], f"saved dataset {path} (split {chosen})")
    _single_split(f"saved dataset {path}", split)
    return dataset_table_source(loaded, f"saved dataset {path}")


def _open_parquet(files: list[Path], description: str) -> TableSource:
    import pyarrow.parquet as pq

    def open_file(file: Path):
        try:
            # pre_buffer=False: the default pre-buffering keeps every read column chunk cached until
            # the file is closed, so memory would grow with the number of rows read.
            return pq.ParquetFile(file, pre_buffer=False)
        except Exception as error:
            raise DataPrepError(
                f"cannot read parquet file {file}: {type(error).__name__}: {error}. Re-download or re-export it."
            ) from None

    handles = [open_file(file) for file in files]
    columns = tuple(handles[0].schema_arrow.names)
    for file, handle in zip(files[1:], handles[1:], strict=True):
        if tuple(handle.schema_arrow.names) != columns:
            raise DataPrepError(
                f"parquet file {file} has columns {', '.join(handle.schema_arrow.names)} but {files[0]} has "
                f"{', '.join(columns)}; all files of a split must share columns."
            )

    def read_batches(wanted: Sequence[str], batch_size: int) -> Iterator[list[Row]]:
        present = [column for column in wanted if column in columns]
        for handle in handles:
            for batch in handle.iter_batches(batch_size=batch_size, columns=present):
                yield [{column: row.get(column) for column in wanted} for row in batch.to_pylist()]

    num_rows = sum(handle.metadata.num_rows for handle in handles)
    return TableSource(f"parquet {description}", columns, num_rows, files[0].parent.resolve(), read_batches)


def _parse_jsonl_line(path: Path, number: int, line: str) -> Row:
    try:
        record = json.loads(line)
    except ValueError as error:
        return RowProblem("malformed_row", f"{path} line {number}: invalid JSON: {error}")
    if not isinstance(record, dict):
        return RowProblem("malformed_row", f"{path} line {number}: a JSON {type(record).__name__}, not an object")
    return record


def open_json(path: Path) -> TableSource:
    """A :class:`TableSource` over a JSON list of objects (``.json``) or JSON lines (``.jsonl``).

    A ``.json`` file is parsed whole (text only: images are paths); ``.jsonl`` is streamed.
    Every record is one row; a line or element that is not an object becomes a ``malformed_row``.
    """
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                lines = [number for number, line in enumerate(handle, 1) if line.strip()]
            records: list[Any] | None = None
        else:
            records = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(records, list):
                raise DataPrepError(
                    f"{path} holds a JSON {type(records).__name__}; expected a list of row objects "
                    "(or use .jsonl with one object per line)."
                )
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataPrepError(f"cannot read {path}: {type(error).__name__}: {error}") from None

    def parsed_rows() -> Iterator[Row]:
        if records is not None:
            for position, record in enumerate(records):
                yield (
                    record
                    if isinstance(record, dict)
                    else RowProblem(
                        "malformed_row", f"{path} element {position}: a JSON {type(record).__name__}, not an object"
                    )
                )
            return
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield _parse_jsonl_line(path, number, line)

    first = next((row for row in parsed_rows() if isinstance(row, dict)), {})
    num_rows = len(records) if records is not None else len(lines)

    def read_batches(wanted: Sequence[str], batch_size: int) -> Iterator[list[Row]]:
        batch: list[Row] = []
        for row in parsed_rows():
            batch.append(row if isinstance(row, RowProblem) else {column: row.get(column) for column in wanted})
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    return TableSource(f"JSON file {path}", tuple(first), num_rows, path.resolve().parent, read_batches)
