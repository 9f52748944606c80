"""Synthetic copies of ``PAPO-Galaxy/PAPO_eval`` in each layout ``data_prep.papo_eval`` reads.

Every benchmark gets the same six rows (two written, four skipped for different reasons) with image
files named uniquely per benchmark, stored in that benchmark's zip under the name the hub uses.
Row image paths and zip members relate differently per benchmark (row ``images/d/f.png`` for member
``d/f.png``, ``d/f.png`` for ``d/f.png``, ``f.png`` for ``d/f.png``, ``images/f.png`` for ``f.png``), as
the prefix inside the hub's rows is not known.

Layouts:

* :func:`write_hub_layout`: what ``push_to_hub`` leaves in a dataset repository: parquet shards
  ``data/<split>-00000-of-00001.parquet``, a ``README.md`` whose YAML header has ``dataset_info`` and
  a ``configs`` block naming each split's files, and the image zips at the root;
* :func:`write_authors_layout`: the authors' tooling output: ``papo/<split>.json`` (rows without
  ``id``) and every zip extracted into ``images/``;
* :func:`write_json_layout`: ``<split>.json`` / ``.jsonl`` files (one named by a LLaMA-Factory
  ``dataset_info.json``) and zips named ``images/<split>.zip``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from papo_tools.journey.hub_layout import write_hub_repo, write_zip

BENCHMARKS = (
    "hiyouga_geometry3k",
    "AI4Math_MathVista",
    "We_Math",
    "PAPO_MMK12",
    "AI4Math_MathVerse",
    "AI4Math_MathVerse_vision_dependent",
    "BUAADreamer_clevr_count_70k",
    "lscpku_LogicVista",
    "MMMU_MMMU_Pro",
)
# The zip names of the hub repository, written out here independently of data_prep's table.
HUB_ZIPS = {
    "hiyouga_geometry3k": "hiyouga_geometry3k_images.zip",
    "AI4Math_MathVista": "AI4Math_MathVista_images.zip",
    "We_Math": "We-Math_We-Math_images.zip",
    "PAPO_MMK12": "PAPO_MMK12_test_images.zip",
    "AI4Math_MathVerse": "AI4Math_MathVerse_images.zip",
    "AI4Math_MathVerse_vision_dependent": "AI4Math_MathVerse_vision_dependent_images.zip",
    "BUAADreamer_clevr_count_70k": "BUAADreamer_clevr_count_70k_images.zip",
    "lscpku_LogicVista": "lscpku_LogicVista_images.zip",
    "MMMU_MMMU_Pro": "MMMU_MMMU_Pro_images.zip",
}
# Skip reasons of the six rows of every benchmark; rows 0 and 1 are written.
EXPECTED_SKIPS = {"missing_image_file": 1, "ambiguous_image_path": 1, "missing_answer": 1, "image_count_mismatch": 1}
WRITTEN = (0, 1)


def png(seed: int, width: int = 14, height: int = 10) -> bytes:
    """A small RGB PNG whose pixels depend on ``seed``."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            ((x * 9 + seed * 31) % 256, (y * 13 + seed * 7) % 256, seed % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Benchmark:
    """One benchmark's rows, its zip members (name -> bytes) and the images each written row holds."""

    name: str
    rows: list[dict]
    members: dict[str, bytes]
    row_images: dict[int, list[bytes]] = field(default_factory=dict)
    row_paths: dict[int, list[str]] = field(default_factory=dict)


def _message(question: str, answer: str | None) -> list[dict]:
    turns = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": question}]
    return turns + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def benchmark(position: int, name: str) -> Benchmark:
    """The six rows and zip members of benchmark ``name`` (``position`` picks the path style)."""
    folder = f"{name}_imgs"
    files = {k: f"{name}-{k}.png" for k in range(3)}
    style = position % 4
    member_of = (lambda f: f) if style == 3 else (lambda f: f"{folder}/{f}")
    row_path = {
        0: lambda f: f"images/{folder}/{f}",
        1: lambda f: f"{folder}/{f}",
        2: lambda f: f,
        3: lambda f: f"images/{f}",
    }[style]
    members = {member_of(f): png(position * 10 + k) for k, f in files.items()}
    members[f"{folder}/a/dup.png"] = png(position * 10 + 7)
    members[f"{folder}/b/dup.png"] = png(position * 10 + 8)  # a different image with the same name
    members[f"__MACOSX/{folder}/._{files[0]}"] = b"resource fork, not an image"
    rows = [
        {"messages": _message("<image>How many objects?", "3"), "images": [row_path(files[0])]},
        {
            "messages": _message("<image> vs <image>: which is larger?", "\\boxed{B}"),
            "images": [row_path(files[1]), row_path(files[2])],
        },
        {"messages": _message("<image>Missing file.", "1"), "images": [row_path(f"{name}-absent.png")]},
        {"messages": _message("<image>Ambiguous file.", "2"), "images": ["dup.png"]},
        {"messages": _message("<image>No assistant turn.", None), "images": [row_path(files[0])]},
        {"messages": _message("Two <image><image> for one image", "2"), "images": [row_path(files[0])]},
    ]
    for index, row in enumerate(rows):
        row["id"] = position * 100 + index
    return Benchmark(
        name=name,
        rows=rows,
        members=members,
        row_images={0: [members[member_of(files[0])]], 1: [members[member_of(files[k])] for k in (1, 2)]},
        row_paths={0: rows[0]["images"], 1: rows[1]["images"]},
    )


def all_benchmarks(names: tuple[str, ...] = BENCHMARKS) -> dict[str, Benchmark]:
    return {name: benchmark(BENCHMARKS.index(name), name) for name in names}


def write_hub_layout(root: Path, names: tuple[str, ...] = BENCHMARKS) -> dict[str, Benchmark]:
    """The repository as ``DatasetDict.push_to_hub`` writes it, plus one image zip per benchmark."""
    import datasets

    features = datasets.Features(
        {
            "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "images": datasets.List(datasets.Value("string")),
            "id": datasets.Value("int64"),
        }
    )
    content = all_benchmarks(names)
    write_hub_repo(root, {name: bench.rows for name, bench in content.items()}, features, "PAPO_eval (test copy)")
    for name, bench in content.items():
        write_zip(root / HUB_ZIPS[name], bench.members)
    return content


def write_authors_layout(root: Path, names: tuple[str, ...] = BENCHMARKS) -> dict[str, Benchmark]:
    """``papo/<split>.json`` without ``id`` (the authors' script drops it) and every zip extracted into ``images/``."""
    content = all_benchmarks(names)
    (root / "papo").mkdir(parents=True, exist_ok=True)
    for name, bench in content.items():
        rows = [{key: value for key, value in row.items() if key != "id"} for row in bench.rows]
        (root / "papo" / f"{name}.json").write_text(json.dumps(rows, indent=1))
        for member, data in bench.members.items():
            target = root / "images" / member
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return content


def write_json_layout(root: Path, names: tuple[str, ...] = BENCHMARKS) -> dict[str, Benchmark]:
    """``splits/<split>.json`` (``.jsonl`` for every other split, one renamed through
    ``dataset_info.json``) with images zipped as ``images/<split>.zip``."""
    content = all_benchmarks(names)
    info = {}
    for position, (name, bench) in enumerate(content.items()):
        if position == 0:
            path = root / "renamed" / "first_split.json"
            info[name] = {"file_name": "renamed/first_split.json", "formatting": "sharegpt"}
        else:
            path = root / "splits" / (f"{name}.jsonl" if position % 2 else f"{name}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jsonl":
            path.write_text("".join(json.dumps(row) + "\n" for row in bench.rows))
        else:
            path.write_text(json.dumps(bench.rows))
        write_zip(root / "images" / f"{name}.zip", bench.members)
    (root / "dataset_info.json").write_text(json.dumps(info))
    return content
