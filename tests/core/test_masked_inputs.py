"""Batch-level masked multi_modal_inputs: sources (images_aug, image space, pixel_values), sharing, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tensordict import TensorDict

from recipe.papo.config import PapoConfig
from recipe.papo.masked_inputs import MaskedInputBuilder, MaskedInputError
from recipe.papo.masking import PatchLayout
from verl.utils import tensordict_utils as tu


def image(seed: int, size=(84, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_dict(picture: Image.Image) -> dict:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def make_batch(processor, uids, pictures, images_aug=None):
    """A TensorDict laid out like verl 0.9.1's batch: NonTensorStack columns of per-row objects."""
    rows, prompts = [], []
    for picture in pictures:
        if picture is None:
            rows.append({})
            prompts.append([{"role": "user", "content": "text only"}])
            continue
        out = processor.image_processor(images=[picture], return_tensors="pt")
        rows.append({"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]})
        prompts.append([{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "?"}]}])
    data = TensorDict({"response_mask": torch.ones(len(uids), 3)}, batch_size=[len(uids)])
    tu.assign_non_tensor_stack(data, "multi_modal_inputs", rows)
    tu.assign_non_tensor_stack(data, "uid", list(uids))
    tu.assign_non_tensor_stack(data, "raw_prompt", prompts)
    if images_aug is not None:
        tu.assign_non_tensor_stack(data, "images_aug", images_aug)
    return data


def pixel_values(data, row):
    return tu.get(data, "multi_modal_inputs")[row]["pixel_values"]


def black_rows(values: torch.Tensor, black: torch.Tensor) -> torch.Tensor:
    """Rows equal to the normalised black value (the processor rounds (x/255 - mean)/std in float32)."""
    return ((values - black).abs() < 1e-6).all(-1)


@pytest.fixture(scope="module")
def black(tiny_processor):
    return PatchLayout.from_processor(tiny_processor).black_row()


def test_rollouts_of_one_prompt_share_the_mask_and_prompts_differ(tiny_processor):
    builder = MaskedInputBuilder(PapoConfig(mask_ratio=0.5), tiny_processor)
    picture = image(0)
    data = make_batch(tiny_processor, ["a", "a", "b"], [picture, picture, picture])
    masked, has_image = builder.mask_batch(data, step=4)
    assert has_image.tolist() == [True, True, True]
    assert torch.equal(pixel_values(masked, 0), pixel_values(masked, 1))
    assert not torch.equal(pixel_values(masked, 0), pixel_values(masked, 2))
    assert not torch.equal(pixel_values(masked, 0), pixel_values(data, 0))
    again, _ = builder.mask_batch(data, step=5)
    assert not torch.equal(pixel_values(again, 0), pixel_values(masked, 0))


def test_original_batch_is_not_modified_and_imageless_rows_pass_through(tiny_processor):
    builder = MaskedInputBuilder(PapoConfig(mask_ratio=1.0), tiny_processor)
    data = make_batch(tiny_processor, ["a", "b"], [image(1), None])
    before = pixel_values(data, 0).clone()
    masked, has_image = builder.mask_batch(data, step=1)
    assert has_image.tolist() == [True, False]
    assert torch.equal(pixel_values(data, 0), before)
    assert tu.get(masked, "multi_modal_inputs")[1] == {}
    grid_before = tu.get(data, "multi_modal_inputs")[0]["image_grid_thw"]
    assert torch.equal(tu.get(masked, "multi_modal_inputs")[0]["image_grid_thw"], grid_before)


def test_images_aug_replaces_online_masking_for_its_rows(tiny_processor, black):
    builder = MaskedInputBuilder(PapoConfig(mask_ratio=0.0), tiny_processor)
    original = image(2)
    aug = np.array(original)
    aug[:, :42] = 0  # left half black: 3 of 6 patch columns
    data = make_batch(tiny_processor, ["a", "b"], [original, original], images_aug=[[png_dict(Image.fromarray(aug))], None])
    masked, _ = builder.mask_batch(data, step=1)
    expected = tiny_processor.image_processor(images=[Image.fromarray(aug)], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values(masked, 0), expected, rtol=0, atol=0)
    assert black_rows(pixel_values(masked, 0), black).sum() == 12  # 4 rows x 3 cols of patches
    assert torch.equal(pixel_values(masked, 1), pixel_values(data, 1))  # ratio 0, no images_aug


def test_images_aug_with_wrong_count_names_the_row(tiny_processor):
    builder = MaskedInputBuilder(PapoConfig(), tiny_processor)
    data = make_batch(tiny_processor, ["uid-7"], [image(3)], images_aug=[[png_dict(image(3)), png_dict(image(4))]])
    with pytest.raises(MaskedInputError, match="uid=uid-7: images_aug has 2 image"):
        builder.mask_batch(data, step=1)


def test_image_space_masking_blackens_raw_images_on_the_original_grid(tiny_processor, black):
    data = make_batch(tiny_processor, ["a"], [image(5)])
    unmasked, _ = MaskedInputBuilder(PapoConfig(mask_space="image", mask_ratio=0.0), tiny_processor).mask_batch(data, 1)
    torch.testing.assert_close(pixel_values(unmasked, 0), pixel_values(data, 0), rtol=0, atol=1e-6)
    full, _ = MaskedInputBuilder(PapoConfig(mask_space="image", mask_ratio=1.0), tiny_processor).mask_batch(data, 1)
    assert black_rows(pixel_values(full, 0), black).all()
    half, _ = MaskedInputBuilder(PapoConfig(mask_space="image", mask_ratio=0.5), tiny_processor).mask_batch(data, 1)
    blackened = black_rows(pixel_values(half, 0), black)
    assert 0 < blackened.sum() < blackened.numel()


def test_rollouts_share_one_masked_tensor_equal_to_masking_each_row(tiny_processor):
    """The n rollouts of a prompt reuse one masked pixel_values, identical to masking each on its own."""
    builder = MaskedInputBuilder(PapoConfig(mask_ratio=0.5), tiny_processor)
    picture = image(8)
    data = make_batch(tiny_processor, ["p", "p", "p"], [picture, picture, picture])
    masked, _ = builder.mask_batch(data, step=2)
    assert pixel_values(masked, 0) is pixel_values(masked, 1) is pixel_values(masked, 2)
    alone = builder.mask_row(tu.get(data, "multi_modal_inputs")[2], "p", 2)
    assert torch.equal(alone["pixel_values"], pixel_values(masked, 2))


def test_same_uid_with_different_pixels_gets_its_own_mask(tiny_processor):
    builder = MaskedInputBuilder(PapoConfig(mask_ratio=0.5), tiny_processor)
    data = make_batch(tiny_processor, ["p", "p"], [image(8), image(9)])
    masked, _ = builder.mask_batch(data, step=2)
    second = tu.get(data, "multi_modal_inputs")[1]
    assert torch.equal(pixel_values(masked, 1), builder.mask_row(second, "p", 2)["pixel_values"])
    assert not torch.equal(pixel_values(masked, 1), pixel_values(masked, 0))
