"""Tiny copies of the paper's three datasets, in the hub's layout, with rendered images.

What ``hf download <repo> --repo-type dataset --local-dir <folder>`` would give for each repository the
paper trains and evaluates on (arXiv 2507.06448, Section 4 "Experimental Setup"), cut down to a few rows
that a tiny model on a CPU gets through in minutes:

* ``PAPO_ViRL39K_train`` (``PAPOGalaxy/PAPO_ViRL39K_train``, the training set): columns ``images``
  (a list of images), ``problem`` (text with ``<image>`` placeholders), ``answer``, ``id``;
  :data:`TRAIN_ROWS` rows, one of them with a blank answer (``data_prep`` skips it with the reason
  ``missing_answer``).
* ``PAPO_MMK12_test`` (``PAPOGalaxy/PAPO_MMK12_test``, training-time validation): the same columns,
  :data:`VAL_ROWS` rows.
* ``PAPO_eval`` (``PAPO-Galaxy/PAPO_eval``, the nine benchmarks of Table 1): one split per benchmark
  in the ShareGPT layout (``messages`` with the question in the user turn and the answer in the
  assistant turn, ``images`` as paths into the benchmark's image zip at the repository root). Each
  benchmark has :data:`EVAL_QUESTIONS` questions (answers 2, ``\\boxed{3}`` over two images, 4) and one
  row whose image is not in the zip (skipped as ``missing_image_file``).

Every image is a rendered picture of coloured shapes and every answer is the count the question asks
for. The questions of the evaluation copy name their benchmark and number, so each is unique across
benchmarks.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from data_prep.eval_layouts import IMAGE_ZIPS
from papo_tools.demo.task import COLOURS, ShapeTaskConfig, render_image
from papo_tools.journey.hub_layout import write_hub_repo, write_zip
from recipe.papo.prompt import EVAL_BENCHMARKS

TRAIN_REPO = "PAPO_ViRL39K_train"
VAL_REPO = "PAPO_MMK12_test"
EVAL_REPO = "PAPO_eval"
TRAIN_ROWS = 32
VAL_ROWS = 4
# 56 px images (the tiny processor's minimum: 4 merged visual tokens), 10 px shapes on a 4 x 4 grid.
IMAGE_CONFIG = ShapeTaskConfig(image_size=56, shape_size=10, max_target=4, max_distractors=2)
# Per benchmark: (shapes in each image, the assistant turn's answer). Two answers are written as data_prep
# finds them in the hub: plain, or as \boxed{...} (stored without the box).
EVAL_QUESTIONS: tuple[tuple[tuple[int, ...], str], ...] = (((2,), "2"), ((1, 2), "\\boxed{3}"), ((4,), "4"))
BLANK_ANSWER_ROW = 5  # the training row written with a blank answer


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_image(count: int, colour: str, rng: random.Random, distractors: int = 0) -> bytes:
    """A PNG of ``count`` shapes of ``colour`` plus ``distractors`` shapes of other colours."""
    others = [other for other in sorted(COLOURS) if other != colour]
    colours = [colour] * count + [rng.choice(others) for _ in range(distractors)]
    rng.shuffle(colours)
    return png(render_image(colours, rng, IMAGE_CONFIG))


def problem_rows(count: int, split: str, seed: int) -> list[dict]:
    """``count`` rows in the ViRL39K / MMK12 layout: one image, a counting question, the count as answer."""
    rng = random.Random(f"journey:{split}:{seed}")
    rows = []
    for index in range(count):
        colour = rng.choice(sorted(COLOURS))
        answer = 1 + index % IMAGE_CONFIG.max_target  # answers 1..4 in turn
        image = shapes_image(answer, colour, rng, distractors=rng.randint(0, IMAGE_CONFIG.max_distractors))
        rows.append(
            {
                "images": [{"bytes": image, "path": f"{split}_{index}.png"}],
                "problem": f"<image>How many {colour} shapes are there?",
                "answer": str(answer),
                "id": f"{split}-{index}",
            }
        )
    return rows


def write_problem_repo(root: Path, split: str, rows: list[dict], title: str) -> Path:
    """A ViRL39K-style repository: split ``split`` with columns ``images``, ``problem``, ``answer``, ``id``."""
    import datasets

    features = datasets.Features(
        {
            "images": datasets.List(datasets.Image()),
            "problem": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )
    return write_hub_repo(root, {split: rows}, features, title)


@dataclass(frozen=True)
class EvalBenchmark:
    """One benchmark of the evaluation copy: its rows and its image zip's members (name -> PNG bytes)."""

    rows: list[dict]
    members: dict[str, bytes]


def eval_benchmark(name: str, seed: int) -> EvalBenchmark:
    """The rows of benchmark ``name``: :data:`EVAL_QUESTIONS`, then one row whose image is missing."""
    rng = random.Random(f"journey:{name}:{seed}")
    rows, members = [], {}
    for number, (counts, answer) in enumerate(EVAL_QUESTIONS, start=1):
        paths = [f"{name}/q{number}_{k}.png" for k in range(len(counts))]
        for path, count in zip(paths, counts, strict=True):
            members[path] = shapes_image(count, "blue", rng)
        placeholders = " ".join("<image>" for _ in counts)
        pictures = "the picture" if len(counts) == 1 else f"the {len(counts)} pictures together"
        question = f"{placeholders}{name} question {number}: how many shapes are in {pictures}?"
        rows.append({"messages": _messages(question, answer), "images": paths, "id": number})
    missing = f"{name}/absent.png"  # named by the row, absent from the zip
    rows.append({"messages": _messages("<image>How many shapes?", "1"), "images": [missing], "id": 0})
    return EvalBenchmark(rows, members)


def _messages(question: str, answer: str) -> list[dict]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]


def write_eval_repo(root: Path, seed: int) -> Path:
    """The ``PAPO_eval`` copy: one split per benchmark of Table 1 and one image zip each."""
    import datasets

    features = datasets.Features(
        {
            "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "images": datasets.List(datasets.Value("string")),
            "id": datasets.Value("int64"),
        }
    )
    benchmarks = {name: eval_benchmark(name, seed) for name in EVAL_BENCHMARKS}
    write_hub_repo(root, {name: bench.rows for name, bench in benchmarks.items()}, features, "PAPO_eval (tiny copy)")
    for name, bench in benchmarks.items():
        write_zip(root / IMAGE_ZIPS[name], bench.members)
    return root


def write_hub_copies(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write the three repositories under ``root``; returns repository name -> folder."""
    train = problem_rows(TRAIN_ROWS, "train", seed)
    train[BLANK_ANSWER_ROW]["answer"] = " "
    return {
        TRAIN_REPO: write_problem_repo(root / TRAIN_REPO, "train", train, "PAPO_ViRL39K_train (tiny copy)"),
        VAL_REPO: write_problem_repo(
            root / VAL_REPO, "test", problem_rows(VAL_ROWS, "test", seed), "PAPO_MMK12_test (tiny copy)"
        ),
        EVAL_REPO: write_eval_repo(root / EVAL_REPO, seed),
    }
