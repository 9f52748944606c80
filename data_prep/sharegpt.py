"""ShareGPT-style evaluation rows (the rows of ``PAPO-Galaxy/PAPO_eval``).

A row has

* ``messages``: ``[{role, content}, ...]`` with exactly one ``user`` turn (the question, with one
  ``<image>`` per image) and the answer in the last ``assistant`` turn (system turns are ignored:
  the PAPO prompt replaces them);
* ``images``: image paths (relative, with a prefix that depends on where the images were
  extracted), found in folders or zip archives by :class:`data_prep.resolver.ImageResolver`; or
  ``{bytes, path}`` images;
* optionally ``id`` (added by the hub upload).

A split stored as JSON is ``<split>.json`` / ``<split>.jsonl`` anywhere under the root (such as the
authors' ``papo/<split>.json``), or the ``file_name`` that a LLaMA-Factory ``dataset_info.json`` at
the root gives for the split. Where the splits are in each layout: :mod:`data_prep.eval_layouts`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_prep.problem_answer import source_id
from data_prep.problems import DataPrepError, RowProblem
from data_prep.resolver import ImageResolver
from data_prep.rows import RawRow, Skip
from data_prep.sources import TableSource

REQUIRED_COLUMNS = ("messages", "images")
OPTIONAL_COLUMNS = ("id",)
# An assistant answer that is only "\boxed{X}" is stored as X (the reward boxes the response, not the truth).
WHOLE_BOXED = re.compile(r"\s*\\boxed\{(.*)\}\s*", re.DOTALL)


def locate_split_file(root: Path, split: str) -> Path:
    """The JSON/JSONL file of ``split`` under ``root``; :class:`DataPrepError` if none or several."""
    info_path = root / "dataset_info.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise DataPrepError(f"cannot parse {info_path}: {error}") from None
        file_name = info.get(split, {}).get("file_name") if isinstance(info, dict) else None
        if file_name and (root / file_name).is_file():
            return root / file_name
    matches = sorted(path for suffix in (".json", ".jsonl") for path in root.rglob(f"{split}{suffix}"))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.json*") if p.name != "dataset_info.json")
        raise DataPrepError(
            f"no {split}.json or {split}.jsonl under {root} (and no hub layout: README.md with a configs block "
            f"or data/*.parquet); JSON files found: {', '.join(found[:20]) or '(none)'}. Pass a copy of the "
            "PAPO_eval repository folder (or choose other --splits)."
        )
    raise DataPrepError(f"several files for split {split} under {root}: {', '.join(map(str, matches))}; keep one.")


def parse_messages(messages: Any) -> tuple[str, Any]:
    """``(question, answer)`` from ShareGPT ``messages``; the answer is ``None`` without an assistant turn.

    Raises:
        RowProblem: ``malformed_messages``.
    """
    if not isinstance(messages, list) or not all(
        isinstance(turn, dict) and isinstance(turn.get("role"), str) and "content" in turn for turn in messages
    ):
        raise RowProblem("malformed_messages", f"messages must be a list of {{role, content}}, got {messages!r:.120}")
    users = [turn["content"] for turn in messages if turn["role"] == "user"]
    if len(users) != 1:
        roles = [turn["role"] for turn in messages]
        raise RowProblem("malformed_messages", f"expected exactly one user turn, roles are {roles}")
    answers = [turn["content"] for turn in messages if turn["role"] == "assistant"]
    return users[0], unbox(answers[-1]) if answers else None


def unbox(answer: Any) -> Any:
    """``X`` for an answer that is exactly ``\\boxed{X}``; anything else unchanged."""
    if isinstance(answer, str):
        match = WHOLE_BOXED.fullmatch(answer)
        if match:
            return match.group(1)
    return answer


def resolve_images(images: Any, resolver: ImageResolver, base_dir: Path | None) -> Any:
    """``images`` with every path entry (a string, or ``{bytes: None, path}``) replaced by ``{bytes, path}``.

    Other entries, and a value that is not a list, pass through (checked when the row is written).

    Raises:
        RowProblem: ``missing_image_file`` or ``ambiguous_image_path`` (:meth:`ImageResolver.find`).
    """
    if not isinstance(images, list):
        return images
    resolved = []
    for position, entry in enumerate(images):
        path = entry if isinstance(entry, str) else None
        if isinstance(entry, dict) and entry.get("bytes") is None and isinstance(entry.get("path"), str):
            path = entry["path"]
        if path is None:
            resolved.append(entry)
            continue
        try:
            resolved.append(resolver.find(path, base_dir))
        except RowProblem as problem:
            raise RowProblem(problem.reason, f"image {position}: {problem.detail}") from None
    return resolved


def sharegpt_rows(table: TableSource, batch_size: int, resolver: ImageResolver) -> Iterator[RawRow | Skip]:
    """The rows of a ShareGPT split as :class:`RawRow` (or :class:`Skip`), in order."""
    index = 0
    for batch in table.read_batches(REQUIRED_COLUMNS + OPTIONAL_COLUMNS, batch_size):
        for row in batch:
            row_id = None if isinstance(row, RowProblem) else source_id(row["id"])
            try:
                if isinstance(row, RowProblem):
                    raise row
                question, answer = parse_messages(row["messages"])
                images = resolve_images(row["images"], resolver, table.base_dir)
            except RowProblem as problem:
                yield Skip(index=index, id=row_id, reason=problem.reason, detail=problem.detail)
            else:
                yield RawRow(index=index, id=row_id, question=question, answer=answer, images=images)
            index += 1
