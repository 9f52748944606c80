"""The built-in demo task: count the shapes of one colour in a small rendered image.

Every row is generated in code, deterministically from a seed: a white square image with a few
filled circles and squares in four colours, and the question "how many <colour> shapes?". The
answer is only in the image (the text names a colour, never a count), so the task is
image-dependent, the property PAPO's perception loss is about.

Sizes fit the tiny demo model: images are ``image_size`` pixels square (default 56, the tiny
processor's minimum of 28*28*4 pixels, i.e. 4 visual tokens), the four colour names have the same
length, so every prompt has the same number of tokens (the tokenizer is byte-level: one token per
byte), which also exercises the equal-length ``position_ids`` path
(:mod:`recipe.papo.compat.verl`).

Rows follow verl's RLHF parquet schema (as in ``examples/data_preprocess/geo3k.py``):
``data_source``, ``prompt`` (chat messages with an ``<image>`` placeholder), ``images`` (a list of
``{"bytes", "path"}`` PNGs), ``ability``, ``reward_model`` (``{"style": "rule", "ground_truth"}``)
and ``extra_info`` (``{"split", "index"}``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw

DATA_SOURCE = "papo_demo/count_shapes"
ABILITY = "visual_counting"
# Equal-length names keep every prompt the same number of (byte) tokens.
COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (30, 80, 230),
    "pink": (240, 90, 170),
    "gold": (235, 180, 20),
    "lime": (60, 200, 60),
}
QUESTION = "How many {colour} shapes? Answer with a digit."


@dataclass(frozen=True)
class ShapeTaskConfig:
    """How the demo images are drawn."""

    image_size: int = 56
    shape_size: int = 9
    max_target: int = 4  # the answer is in 1..max_target
    max_distractors: int = 3  # shapes of other colours
    background: tuple[int, int, int] = (255, 255, 255)  # RGB of the empty image


def _free_cells(rng: random.Random, config: ShapeTaskConfig, count: int) -> list[tuple[int, int]]:
    """``count`` distinct grid cells (top-left pixel) so shapes never overlap."""
    cell = config.shape_size + 3
    per_side = config.image_size // cell
    if count > per_side * per_side:
        raise ValueError(f"{count} shapes do not fit a {config.image_size}px image")
    cells = rng.sample(range(per_side * per_side), count)
    margin = (config.image_size - per_side * cell) // 2 + 1
    return [(margin + (index % per_side) * cell, margin + (index // per_side) * cell) for index in cells]


def render_image(colours: list[str], rng: random.Random, config: ShapeTaskConfig) -> Image.Image:
    """An image of ``config.background`` with one filled circle or square per entry of ``colours``."""
    image = Image.new("RGB", (config.image_size, config.image_size), config.background)
    draw = ImageDraw.Draw(image)
    for colour, (x, y) in zip(colours, _free_cells(rng, config, len(colours)), strict=True):
        box = (x, y, x + config.shape_size - 1, y + config.shape_size - 1)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=COLOURS[colour])
        else:
            draw.rectangle(box, fill=COLOURS[colour])
    return image


def _png_bytes(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_row(index: int, split: str, rng: random.Random, config: ShapeTaskConfig) -> dict[str, Any]:
    """One verl RLHF row: an image with ``answer`` shapes of the asked colour plus distractors."""
    target = rng.choice(sorted(COLOURS))
    answer = rng.randint(1, config.max_target)
    others = [colour for colour in sorted(COLOURS) if colour != target]
    distractors = [rng.choice(others) for _ in range(rng.randint(0, config.max_distractors))]
    colours = [target] * answer + distractors
    rng.shuffle(colours)
    image = render_image(colours, rng, config)
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": "<image>" + QUESTION.format(colour=target)}],
        "images": [{"bytes": _png_bytes(image), "path": f"{split}_{index}.png"}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": str(answer)},
        "extra_info": {"split": split, "index": index},
    }


def make_rows(num_rows: int, split: str, seed: int = 0, config: ShapeTaskConfig = ShapeTaskConfig()) -> list[dict]:
    """``num_rows`` rows of one split; the same ``(split, seed)`` always gives the same rows."""
    rng = random.Random(f"{split}:{seed}")
    return [make_row(index, split, rng, config) for index in range(num_rows)]


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """Write rows as a verl RLHF parquet file (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def write_demo_dataset(
    output_dir: str | Path,
    num_train: int = 64,
    num_val: int = 16,
    seed: int = 0,
    config: ShapeTaskConfig = ShapeTaskConfig(),
) -> tuple[Path, Path]:
    """Write ``train.parquet`` and ``val.parquet`` of the demo task into ``output_dir``."""
    output_dir = Path(output_dir)
    train = write_parquet(make_rows(num_train, "train", seed, config), output_dir / "train.parquet")
    val = write_parquet(make_rows(num_val, "val", seed, config), output_dir / "val.parquet")
    return train, val
