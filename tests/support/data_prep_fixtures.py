"""Small synthetic inputs written in each source layout the data_prep commands read.

Test support: importable by name once ``tests/support`` is on ``sys.path`` (``tests/conftest.py``
puts it there); the data_prep tests import it as ``fx`` (``import data_prep_fixtures as fx``).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# Truncated PNG: the signature and part of a header, then garbage. PIL cannot decode it.
CORRUPT_IMAGE = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10garbage"


def png_bytes(width: int = 20, height: int = 12, seed: int = 0) -> bytes:
    """A small RGB PNG with distinct, non-black pixel values (so masked cells are detectable)."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [((x * 7 + seed) % 200 + 50, (y * 11 + seed) % 200 + 50, 128) for y in range(height) for x in range(width)]
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image(width: int = 20, height: int = 12, seed: int = 0) -> dict:
    return {"bytes": png_bytes(width, height, seed), "path": None}


def problem_rows(with_missing_file: bool = True) -> tuple[list[dict], dict[str, int], list[int]]:
    """Rows in the images/problem/answer layout, with one or more rows per bad-input class.

    ``with_missing_file=False`` leaves out the row whose image path points to no file (a saved
    dataset cannot hold one). Returns:
        ``(rows, expected skip counts by reason, indices of rows that must be written)``.
    """
    rows = [
        {"id": "a0", "problem": "<image>What is 1+1?", "answer": "2", "images": [image(20, 12, 0)]},
        {
            "id": "a1",
            "problem": "Compare <image> and <image>.",
            "answer": "A",
            "images": [image(30, 16, 1), image(8, 40, 2)],
        },
        {
            "id": "a2",
            "problem": "<image>Broken image.",
            "answer": "3",
            "images": [{"bytes": CORRUPT_IMAGE, "path": None}],
        },
        {"id": "a3", "problem": "No placeholder here.", "answer": "4", "images": [image(10, 10, 3)]},
        {"id": "a4", "problem": "<image>Blank answer.", "answer": "   ", "images": [image(10, 10, 4)]},
        {"id": "a5", "problem": "<image>No answer.", "answer": None, "images": [image(10, 10, 5)]},
        {"id": "a6", "problem": "  <image>Area of the square?  ", "answer": "16", "images": [image(28, 28, 6)]},
        {
            "id": "a7",
            "problem": "<image>Missing file.",
            "answer": "5",
            "images": [{"bytes": None, "path": "nowhere/missing.png"}],
        },
        {"id": "a8", "problem": "<image>Last one.", "answer": "x=3", "images": [image(15, 9, 8)]},
    ]
    expected = {"corrupt_image": 1, "image_count_mismatch": 1, "missing_answer": 2, "missing_image_file": 1}
    if not with_missing_file:
        del rows[7], expected["missing_image_file"]
        return rows, expected, [0, 1, 6, 7]
    return rows, expected, [0, 1, 6, 8]


def write_parquet(
    path: Path, rows: list[dict], columns: tuple[str, ...] = ("id", "images", "problem", "answer")
) -> Path:
    """Parquet with images as list<struct<bytes, path>> (the hub storage of ``datasets.Image``)."""
    types = {
        "id": pa.string(),
        "images": pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "problem": pa.string(),
        "answer": pa.string(),
    }
    schema = pa.schema([(column, types[column]) for column in columns])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{c: row[c] for c in columns} for row in rows], schema=schema), path)
    return path


def write_saved_dataset(path: Path, splits: dict[str, list[dict]] | list[dict]) -> Path:
    """``datasets`` ``save_to_disk`` output with an ``Image`` feature: a DatasetDict, or a Dataset for a list.

    ``save_to_disk`` embeds image files, so rows must not hold path-only images of absent files.
    """
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
            "problem": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    )

    def build(rows: list[dict]):
        return datasets.Dataset.from_list(rows, features=features)

    if isinstance(splits, dict):
        datasets.DatasetDict({name: build(rows) for name, rows in splits.items()}).save_to_disk(str(path))
    else:
        build(splits).save_to_disk(str(path))
    return path


def sharegpt_row(question: str, answer: str | None, images: list[str], row_id: str | None = None) -> dict:
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    row = {"messages": messages, "images": images}
    if row_id is not None:
        row["id"] = row_id
    return row


def write_sharegpt(root: Path, split: str, zipped: bool, jsonl: bool = False) -> dict:
    """One PAPO_eval-style split: ``<root>/<split>.json`` and images under ``<root>/images/<split>/``.

    With ``zipped`` the image folder is stored as ``<root>/images/<split>.zip`` (members
    ``<split>/<file>``) and not extracted. Returns the expected counts and written indices.
    """
    files = {f"{split}/q{i}.png": png_bytes(12 + i, 10 + i, i) for i in range(3)}
    rows = [
        sharegpt_row("<image>How many objects?", "3", [f"images/{split}/q0.png"], "e0"),
        sharegpt_row(
            "<image> vs <image>: which is larger?",
            "\\boxed{B}",
            [f"images/{split}/q1.png", f"images/{split}/q2.png"],
            "e1",
        ),
        sharegpt_row("<image>Missing image file.", "1", [f"images/{split}/absent.png"], "e2"),
        sharegpt_row("<image>No assistant turn.", None, [f"images/{split}/q0.png"], "e3"),
        {"messages": [{"role": "assistant", "content": "1"}], "images": []},
        sharegpt_row("Two placeholders <image><image> but one image", "2", [f"images/{split}/q0.png"], "e5"),
    ]
    root.mkdir(parents=True, exist_ok=True)
    if zipped:
        (root / "images").mkdir(exist_ok=True)
        with zipfile.ZipFile(root / "images" / f"{split}.zip", "w") as archive:
            for name, data in sorted(files.items()):
                archive.writestr(name, data)
    else:
        for name, data in files.items():
            target = root / "images" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    if jsonl:
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        (root / f"{split}.json").write_text(json.dumps(rows, indent=1))
    expected = {"missing_image_file": 1, "missing_answer": 1, "malformed_messages": 1, "image_count_mismatch": 1}
    return {"rows": rows, "images": files, "expected": expected, "written": [0, 1]}


def read_parquet(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def decode(image_dict: dict) -> Image.Image:
    return Image.open(io.BytesIO(image_dict["bytes"]))
