"""The two kinds of bad input: a row-level defect (skip the row) and a fatal one (stop with a message)."""

from __future__ import annotations

# Every reason a row can be skipped for, with the text shown to users.
SKIP_REASONS: dict[str, str] = {
    "corrupt_image": "image bytes cannot be decoded",
    "image_values_out_of_range": "an image wider than 8 bits has values its 8-bit conversion has no rule for "
    "(I: outside 0..65535; F: NaN, infinite, or outside 0..255)",
    "missing_image_file": "an image path points to no file (searched folders and zip archives)",
    "ambiguous_image_path": "an image path's longest matching suffix ends several different images",
    "invalid_image_entry": "an image entry is not bytes, {bytes, path}, a path or a PIL image, "
    "or the images value is not a list",
    "image_count_mismatch": "number of <image> placeholders differs from the number of images",
    "missing_question": "question text is missing or empty",
    "missing_answer": "answer is missing or empty",
    "invalid_answer": "answer is not a string or a number",
    "malformed_messages": "ShareGPT messages are not a list of {role, content} with one user turn",
    "malformed_row": "the JSON record is not an object or is not valid JSON",
}


class RowProblem(Exception):
    """A row-level defect: ``reason`` is a key of :data:`SKIP_REASONS`, ``detail`` says where."""

    def __init__(self, reason: str, detail: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DataPrepError(Exception):
    """Input that stops the whole command (unreadable source, missing column, bad flag).

    The message names the file, split or column and says what to do; the CLI prints it and exits 2.
    """


class StrictModeError(Exception):
    """``--strict`` was given and at least one row was skipped; the CLI exits 1."""
