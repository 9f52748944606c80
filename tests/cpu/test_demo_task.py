"""The demo counting task: deterministic, verl-shaped, answerable only from the image."""

from __future__ import annotations

import asyncio
from io import BytesIO

import numpy as np
import pytest
from demo_prompts import demo_prompt
from PIL import Image

from papo_tools.demo.task import COLOURS, DATA_SOURCE, QUESTION, ShapeTaskConfig, make_rows


def count_blobs(image: Image.Image, colour: tuple[int, int, int]) -> int:
    """Connected regions (4-neighbourhood) of exactly ``colour``."""
    mask = np.all(np.asarray(image.convert("RGB")) == colour, axis=-1)
    seen = np.zeros_like(mask)
    blobs = 0
    for start in zip(*np.nonzero(mask), strict=False):
        if seen[start]:
            continue
        blobs += 1
        stack = [start]
        while stack:
            y, x = stack.pop()
            if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]) or seen[y, x] or not mask[y, x]:
                continue
            seen[y, x] = True
            stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    return blobs


def test_rows_are_deterministic_per_split_and_seed():
    assert make_rows(6, "train", seed=3) == make_rows(6, "train", seed=3)
    assert make_rows(6, "train", seed=3) != make_rows(6, "train", seed=4)
    assert make_rows(6, "train", seed=3) != make_rows(6, "val", seed=3)


def test_rows_follow_verl_schema(demo_rows):
    for index, row in enumerate(demo_rows):
        assert row["data_source"] == DATA_SOURCE and DATA_SOURCE.startswith("papo_demo/")
        (message,) = row["prompt"]
        assert message["role"] == "user" and message["content"].startswith("<image>")
        assert message["content"].count("<image>") == len(row["images"]) == 1
        assert set(row["images"][0]) == {"bytes", "path"}
        assert row["reward_model"]["style"] == "rule"
        assert row["extra_info"] == {"split": "train", "index": index}
        assert isinstance(row["ability"], str)


def test_answer_is_the_count_of_the_asked_colour_in_the_image():
    config = ShapeTaskConfig()
    answers = []
    for row in make_rows(40, "train", seed=1, config=config):
        image = Image.open(BytesIO(row["images"][0]["bytes"]))
        assert image.size == (config.image_size, config.image_size)
        colour = next(name for name in COLOURS if QUESTION.format(colour=name) in row["prompt"][0]["content"])
        answer = int(row["reward_model"]["ground_truth"])
        assert count_blobs(image, COLOURS[colour]) == answer
        answers.append(answer)
    # the text never gives the answer away: every answer occurs, for questions that all look alike
    assert set(answers) == set(range(1, config.max_target + 1))


def test_prompts_have_one_length_and_fit_the_cpu_budget(demo_rows, hf_model_config):
    lengths = {len(demo_prompt(hf_model_config.processor, row)[0]) for row in demo_rows}
    assert len(lengths) == 1 and lengths.pop() <= 128


def test_verl_dataset_and_image_path_read_the_parquet(demo_data, hf_model_config):
    """verl's RLHFDataset builds the image message; the real qwen_vl_utils loads it."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create({"max_prompt_length": 128, "filter_overlong_prompts": False, "return_raw_chat": True})
    dataset = RLHFDataset(str(demo_data[0]), hf_model_config.tokenizer, config, processor=hf_model_config.processor)
    assert len(dataset) == 8
    item = dataset[0]
    vision = RLHFDataset.process_vision_info(item["raw_prompt"], image_patch_size=14, config=config)
    images, videos = asyncio.run(vision)
    assert videos is None and len(images) == 1 and images[0].size == (56, 56)
    assert item["reward_model"]["ground_truth"] in {"1", "2", "3", "4"}


@pytest.mark.parametrize("image_size", [56, 84])
def test_image_size_is_configurable(image_size):
    (row,) = make_rows(1, "val", config=ShapeTaskConfig(image_size=image_size))
    assert Image.open(BytesIO(row["images"][0]["bytes"])).size == (image_size, image_size)
