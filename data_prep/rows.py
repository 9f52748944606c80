"""One input row in, one verl parquet record or one named skip out.

A reader turns each source row into a :class:`RawRow` (question, answer and image entries in the
source's own types) or, when the row cannot even be parsed, directly into a :class:`Skip`.
:func:`convert_row` validates a :class:`RawRow` and builds the output record; it is a pure
function of its arguments, so it can run in worker processes and its output is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_prep.images import MaskOptions, decode_image, entry_to_blob, masked_blobs
from data_prep.problems import RowProblem
from recipe.papo.prompt import format_question

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class RawRow:
    """A source row before validation.

    Attributes:
        index: 0-based position of the row in its source split.
        id: the source's ``id`` value, if it has one.
        question: problem text, expected to contain one ``<image>`` per image.
        answer: ground-truth answer (string or number expected).
        images: the source's image value: a list of bytes, ``{bytes, path}`` dicts, paths, PIL
            images or :class:`data_prep.images.MissingImage` markers.
    """

    index: int
    id: str | None
    question: Any
    answer: Any
    images: Any


@dataclass(frozen=True)
class Skip:
    """A row that is not written, with its reason (a key of :data:`SKIP_REASONS`) and a detail."""

    index: int
    id: str | None
    reason: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class RowSpec:
    """What every record of one output split shares.

    Attributes:
        data_source: ``data_source`` column value (``papo/<name>``, routes to the PAPO reward).
        split: ``extra_info.split`` (``train``, ``val``, ``test`` or the hub split name).
        benchmark: ``extra_info.benchmark`` (dataset or benchmark name).
        group: ``extra_info.group``: ``general`` / ``vision-dependent`` for evaluation benchmarks,
            ``None`` otherwise.
        ability: ``ability`` column value.
        masks: pre-computed mask settings, or ``None`` for no ``images_aug`` column.
    """

    data_source: str
    split: str
    benchmark: str
    group: str | None
    ability: str
    masks: MaskOptions | None = None


def skip_from(raw: RawRow, problem: RowProblem) -> Skip:
    """The :class:`Skip` for ``raw`` failing with ``problem``."""
    return Skip(index=raw.index, id=raw.id, reason=problem.reason, detail=problem.detail)


def clean_question(question: Any) -> str:
    """The question as a non-empty string, or :class:`RowProblem` ``missing_question``."""
    if not isinstance(question, str) or not question.strip():
        raise RowProblem("missing_question", f"question is {question!r}")
    return question


def clean_answer(answer: Any) -> str:
    """The answer as a trimmed non-empty string (numbers are converted with ``str``)."""
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        if answer is None:
            raise RowProblem("missing_answer", "answer is None")
        raise RowProblem("invalid_answer", f"answer has type {type(answer).__name__}: {answer!r:.80}")
    text = str(answer).strip()
    if not text:
        raise RowProblem("missing_answer", f"answer is {answer!r}")
    return text


def convert_row(raw: RawRow | Skip, spec: RowSpec) -> dict[str, Any] | Skip:
    """Validate ``raw`` and build its verl parquet record (see :mod:`data_prep.schema`).

    Checks, in order: question, answer, that images is a list, placeholder count == image count,
    then every image is found and decodes. The first failing check names the skip reason.
    """
    if isinstance(raw, Skip):
        return raw
    try:
        question = clean_question(raw.question)
        answer = clean_answer(raw.answer)
        entries = raw.images if raw.images is not None else []
        if not isinstance(entries, list | tuple):
            raise RowProblem("invalid_image_entry", f"images is a {type(entries).__name__}, not a list")
        placeholders = question.count(IMAGE_PLACEHOLDER)
        if placeholders != len(entries):
            raise RowProblem(
                "image_count_mismatch",
                f"question has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) "
                f"but the row has {len(entries)} image(s)",
            )
        blobs = [entry_to_blob(entry, position) for position, entry in enumerate(entries)]
        decoded = [decode_image(blob, position) for position, blob in enumerate(blobs)]
    except RowProblem as problem:
        return skip_from(raw, problem)

    record: dict[str, Any] = {
        "data_source": spec.data_source,
        "prompt": [{"role": "user", "content": format_question(question)}],
        "images": [blob.to_json() for blob in blobs],
        "ability": spec.ability,
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {
            "split": spec.split,
            "index": raw.index,
            "id": raw.id,
            "benchmark": spec.benchmark,
            "group": spec.group,
        },
    }
    if spec.masks is not None:
        row_key = raw.id if raw.id is not None else str(raw.index)
        record["images_aug"] = [blob.to_json() for blob in masked_blobs(decoded, spec.masks, row_key)]
    return record
