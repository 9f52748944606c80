"""The experiment's task: count the shapes in a small image, answer with one digit.

The demo counting task (:mod:`papo_tools.demo.task`) with no distractor shapes, bigger shapes and
answers in ``1..MAX_COUNT``: every shape in the image has the asked colour, so the answer is the
number of coloured blobs, which a tiny vision tower can pick up within a few dozen RL steps. The
answer is only in the image (the question names a colour, never a count). Rows use the demo's data
source, so the demo reward (:mod:`papo_tools.demo.reward`) scores them: 1 for the right digit,
about 0.49 for a wrong digit, less for a non-digit first character.
"""

from __future__ import annotations

from pathlib import Path

from papo_tools.demo.task import ShapeTaskConfig, make_rows, write_parquet

MAX_COUNT = 3
# The processor's normalisation mean (OpenAI CLIP's, Qwen2.5-VL's image_mean) as 8-bit RGB: an empty
# image normalises to about 0, so the shapes are the whole input to the vision tower. On a white
# image the normalised background (about +1.9 in every pixel) swamps them: the tiny random vision
# tower's outputs then differ between images by about 1e-3 of their size, and not even a supervised
# warm-up on the true answers learns the task (docs/dynamics.md, "task").
BACKGROUND = (123, 117, 104)
# 56 px images (4 merged visual tokens, 16 patches of 14 px); 12 px shapes on a 3 x 3 grid.
TASK_CONFIG = ShapeTaskConfig(
    image_size=56, shape_size=12, max_target=MAX_COUNT, max_distractors=0, background=BACKGROUND
)
ANSWER_DIGITS: tuple[str, ...] = tuple(str(count) for count in range(1, MAX_COUNT + 1))


def write_task(output_dir: Path, num_train: int, num_val: int, seed: int) -> tuple[Path, Path]:
    """Write ``train.parquet`` / ``val.parquet`` (verl RLHF schema) under ``output_dir``."""
    train = write_parquet(make_rows(num_train, "train", seed, TASK_CONFIG), output_dir / "train.parquet")
    val = write_parquet(make_rows(num_val, "val", seed, TASK_CONFIG), output_dir / "val.parquet")
    return train, val
