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
# 56 px images (4 merged visual tokens, 16 patches of 14 px); 12 px shapes on a 3 x 3 grid.
TASK_CONFIG = ShapeTaskConfig(image_size=56, shape_size=12, max_target=MAX_COUNT, max_distractors=0)
ANSWER_DIGITS: tuple[str, ...] = tuple(str(count) for count in range(1, MAX_COUNT + 1))


def write_task(output_dir: Path, num_train: int, num_val: int, seed: int) -> tuple[Path, Path]:
    """Write ``train.parquet`` / ``val.parquet`` (verl RLHF schema) under ``output_dir``."""
    train = write_parquet(make_rows(num_train, "train", seed, TASK_CONFIG), output_dir / "train.parquet")
    val = write_parquet(make_rows(num_val, "val", seed, TASK_CONFIG), output_dir / "val.parquet")
    return train, val
