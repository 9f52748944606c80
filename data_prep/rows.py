"""One input row in, one verl parquet record or one named skip out.

A reader turns each source row into a :class:`RawRow` (question, answer and image entries in the
source's own types) or, when the row cannot even be parsed, directly into a :class:`Skip`.
:func:`convert_row` validates a :class:`RawRow` and builds the output record; it is a pure
function of its arguments, so it can run in worker processes and its output is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from data_prep.images import (
    MaskOptions,
    decode_image,
    entry_to_blob,
    masked_blobs,
    to_eight_bit,
)
from data_prep.problems import RowProblem
from recipe.papo.prompt import DEFAULT_PROMPT_TEMPLATE, format_question

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
        prompt_template: the user turn, ``{question}`` replaced by the trimmed question (set from
            the run's ``--prompt-template`` by :func:`data_prep.pipeline.convert_split`).
    """

    data_source: str
    split: str
    benchmark: str
    group: str | None
    ability: str
    masks: MaskOptions | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE


def skip_from(raw: RawRow, problem: RowProblem) -> Skip:
    """The :class:`Skip` for ``raw`` failing with ``problem``."""
    return Skip(index=raw.index, id=raw.id, reason=problem.reason, detail=problem.detail)


def clean_question(question: Any) -> str:
    """The question as a non-empty string, or :class:`RowProblem` ``missing_question``."""
    if not isinstance(question, str) or not question.strip():
        raise RowProblem("missing_question", f"question is {question!r}")
    return question


def clean_answer(answer: Any) -> str:
    """The answer as a trimmed non-empty string (numbers are converted with ``str``).

    A NaN (how pandas and some readers store a missing value) is a missing answer; an infinite
    number is an invalid one. Neither is written as the text ``nan`` / ``inf``.
    """
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        if answer is None:
            raise RowProblem("missing_answer", "answer is None")
        raise RowProblem("invalid_answer", f"answer has type {type(answer).__name__}: {answer!r:.80}")
    if isinstance(answer, float) and math.isnan(answer):
        raise RowProblem("missing_answer", "answer is NaN (a missing value in the source)")
    if isinstance(answer, float) and math.isinf(answer):
        raise RowProblem("invalid_answer", f"answer is {answer!r}, not a finite number")
    text = str(answer).strip()
    if not text:
        raise RowProblem("missing_answer", f"answer is {answer!r}")
    return text


def mask_row_key(raw: RawRow) -> str:
    """The key that seeds a row's pre-computed masks: ``<id>@<index>``, or ``<index>`` without an id.

    The row index makes rows that share an id (duplicates in the source) get different masks.
    """
    return str(raw.index) if raw.id is None else f"{raw.id}@{raw.index}"


def convert_row(raw: RawRow | Skip, spec: RowSpec) -> dict[str, Any] | Skip:
    """Validate ``raw`` and build its verl parquet record (see :mod:`data_prep.schema`).

    Checks, in order: question, answer, that images is a list, placeholder count == image count,
    then every image is found and decodes. The first failing check names the skip reason.
    Images wider than 8 bits (16/32-bit integer, 32-bit float) are rewritten as 8-bit PNG
    (:func:`data_prep.images.to_eight_bit`).
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
        converted = [
            to_eight_bit(blob, image, position)
            for position, (blob, image) in enumerate(zip(blobs, decoded, strict=False))
        ]
        blobs, decoded = [blob for blob, _ in converted], [image for _, image in converted]
    except RowProblem as problem:
        return skip_from(raw, problem)

    record: dict[str, Any] = {
        "data_source": spec.data_source,
        "prompt": [{"role": "user", "content": format_question(question, spec.prompt_template)}],
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
        record["images_aug"] = [blob.to_json() for blob in masked_blobs(decoded, spec.masks, mask_row_key(raw))]
    return record
