"""The output loads in verl's RLHFDataset with the tiny Qwen2.5-VL processor.

It yields the expected messages and images, and passes ``images_aug`` through.
"""

from __future__ import annotations

import data_prep_fixtures as fx
import numpy as np
import pytest
from omegaconf import OmegaConf

from data_prep import papo_eval, virl39k
from recipe.papo.prompt import FORMAT_INSTRUCTION


@pytest.fixture
def rlhf_dataset(tiny_model_bundle, tmp_path, monkeypatch):
    import datasets
    from verl.utils.dataset.rl_dataset import RLHFDataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    _, tokenizer, processor = tiny_model_bundle

    def load(files):
        config = OmegaConf.create(
            {
                "cache_dir": str(tmp_path / "verl_cache"),
                "prompt_key": "prompt",
                "image_key": "images",
                "max_prompt_length": 4096,
                # The length filter calls qwen_vl_utils, which needs torchvision (GPU machines only).
                "filter_overlong_prompts": False,
            }
        )
        return RLHFDataset(data_files=[str(f) for f in files], tokenizer=tokenizer, config=config, processor=processor)

    return load


def test_training_rows_load_with_images_and_masks(tmp_path, rlhf_dataset, tiny_processor):
    rows, _, written = fx.problem_rows()
    source = fx.write_parquet(tmp_path / "v.parquet", rows)
    out = tmp_path / "out"
    assert virl39k.main(["--source", str(source), "--out", str(out), "--precompute-masks"]) == 0
    dataset = rlhf_dataset([out / "virl39k_train.parquet"])
    assert len(dataset) == len(written)

    item = dataset[1]  # source row 1: "Compare <image> and <image>." with a 30x16 and an 8x40 image
    assert item["data_source"] == "papo/virl39k"
    assert item["reward_model"]["ground_truth"] == "A"
    assert item["extra_info"]["id"] == "a1" and item["index"] == 1
    message = item["raw_prompt"]
    assert [turn["role"] for turn in message] == ["user"]
    content = message[0]["content"]
    assert [part["type"] for part in content] == ["text", "image", "text", "image", "text"]
    assert content[0]["text"] == "Compare "
    assert content[4]["text"] == f".\n\n{FORMAT_INSTRUCTION}"
    images = [content[1]["image"], content[3]["image"]]
    assert [image.size for image in images] == [(30, 16), (8, 40)]
    for image, expected in zip(images, rows[1]["images"], strict=True):
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(fx.decode(expected).convert("RGB")))

    # images_aug passes through the dataset untouched, one masked copy per image.
    assert [fx.decode(aug).size for aug in item["images_aug"]] == [(30, 16), (8, 40)]

    # The processor turns the messages into one image-pad run per image.
    text = tiny_processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    inputs = tiny_processor(text=[text], images=[image.convert("RGB") for image in images], return_tensors="pt")
    assert inputs["image_grid_thw"].shape == (2, 3)
    pad_id = tiny_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = tiny_processor.image_processor.merge_size**2
    assert int((inputs["input_ids"] == pad_id).sum()) == int(inputs["image_grid_thw"].prod(dim=-1).sum()) // merge


def test_eval_files_load_together(tmp_path, rlhf_dataset):
    root = tmp_path / "eval"
    fx.write_sharegpt(root, "We_Math", zipped=True)
    fx.write_sharegpt(root, "BUAADreamer_clevr_count_70k", zipped=False)
    out = tmp_path / "out"
    argv = ["--source", str(root), "--out", str(out), "--splits", "We_Math", "BUAADreamer_clevr_count_70k"]
    assert papo_eval.main(argv) == 0
    dataset = rlhf_dataset([out / "We_Math.parquet", out / "BUAADreamer_clevr_count_70k.parquet"])
    assert len(dataset) == 4
    items = [dataset[i] for i in range(4)]
    assert [item["data_source"] for item in items] == ["papo/We_Math"] * 2 + ["papo/BUAADreamer_clevr_count_70k"] * 2
    assert [item["extra_info"]["group"] for item in items] == ["general"] * 2 + ["vision-dependent"] * 2
    first = items[0]["raw_prompt"][0]["content"]
    assert first[0]["type"] == "image" and first[0]["image"].size == (12, 10)
    assert first[1]["text"] == f"How many objects?\n\n{FORMAT_INSTRUCTION}"
