"""Masking per model family, with each family's real processor (tiny model saved and loaded back).

Every test runs once per supported family (``family_model_dir`` is parametrized): Qwen2.5-VL
(14-px patches, CLIP normalisation), Qwen3-VL and Qwen3.5 (16-px patches, mean = std = 0.5).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from eager_masks import mask_batch_now
from PIL import Image
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from vision_patches import patch_positions

from recipe.papo.config import PapoConfig
from recipe.papo.masked_inputs import MaskedInputBuilder
from recipe.papo.masking import (
    PatchLayout,
    blacken_image_patches,
    mask_pixel_values,
    mask_seed,
    torch_generator,
)
from recipe.papo.model_families import FAMILIES


def random_image(width: int, height: int, seed: int) -> Image.Image:
    """Random RGB noise with no pure-black pixel, so only blackened cells are black."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def family(family_model_dir):
    return FAMILIES[json.loads((family_model_dir / "config.json").read_text())["model_type"]]


@pytest.fixture(scope="module")
def processor(family_bundle):
    return family_bundle[2]


@pytest.fixture(scope="module")
def layout(processor) -> PatchLayout:
    return PatchLayout.from_processor(processor)


@pytest.fixture(scope="module")
def aligned_images(family):
    """Two images whose sizes are exact multiples of a merged token and inside the tiny pixel bounds,
    so every resize step is the identity: grids (1, 6, 8) and (1, 8, 4) in patches."""
    token = family.patch_size * family.merge_size
    return [random_image(4 * token, 3 * token, 0), random_image(2 * token, 4 * token, 1)]


@pytest.fixture(scope="module")
def processed(processor, aligned_images):
    out = processor.image_processor(images=aligned_images, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def black_row_from_definition(family) -> torch.Tensor:
    """(0 - mean_c) / std_c of the family table, repeated over the temporal x patch x patch values of c."""
    per_channel = family.temporal_patch_size * family.patch_size**2
    values = []
    for mean, std in zip(family.image_mean, family.image_std, strict=True):
        values += [(0.0 - mean) / std] * per_channel
    return torch.tensor(values)


def test_layout_read_from_the_familys_processor(family, processor, layout, processed):
    pixel_values, grid = processed
    assert (layout.patch_size, layout.temporal_patch_size, layout.merge_size) == (
        family.patch_size,
        family.temporal_patch_size,
        family.merge_size,
    )
    assert layout.image_mean == pytest.approx(family.image_mean) and layout.image_std == pytest.approx(family.image_std)
    assert grid.tolist() == [[1, 6, 8], [1, 8, 4]]
    assert pixel_values.shape == (80, 3 * family.temporal_patch_size * family.patch_size**2)


def test_blackened_rows_are_the_chosen_units_and_exactly_black(family, layout, processed):
    pixel_values, grid = processed
    masked, row_mask = mask_pixel_values(pixel_values, grid, layout, 0.5, torch_generator(3))
    assert masked.shape == pixel_values.shape and masked.dtype == pixel_values.dtype
    assert 0 < row_mask.sum() < row_mask.numel()
    black = black_row_from_definition(family).to(pixel_values.dtype)
    assert torch.equal(masked[row_mask], black.expand(int(row_mask.sum()), -1))
    assert torch.equal(masked[~row_mask], pixel_values[~row_mask])  # bit-identical


def test_the_processors_black_pixels_are_the_layouts_black_row(family, processor, layout):
    side = family.patch_size * family.merge_size * 2
    out = processor.image_processor(images=[Image.new("RGB", (side, side))], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out, layout.black_row().expand_as(out), rtol=0, atol=1e-6)


def test_token_unit_blackens_whole_merged_tokens(layout, processed):
    pixel_values, grid = processed
    _, row_mask = mask_pixel_values(pixel_values, grid, layout, 0.5, torch_generator(5), unit="token")
    group = layout.merge_size**2
    per_token = row_mask.view(-1, group)
    assert torch.all(per_token.all(-1) | ~per_token.any(-1))
    assert 0 < per_token.all(-1).sum() < per_token.shape[0]
    # a merged token's rows are one merge_size x merge_size block of patches of one image
    positions = patch_positions(grid, layout.merge_size).view(-1, group, 4)
    assert torch.all(positions[..., 0].max(-1).values == positions[..., 0].min(-1).values)
    for axis in (2, 3):
        assert torch.all(
            positions[..., axis].max(-1).values - positions[..., axis].min(-1).values == layout.merge_size - 1
        )


def cells_of(row_mask, grid, positions, image_index: int) -> np.ndarray:
    """The ``(h, w)`` bool patch-cell mask of one image from a pixel_values row mask."""
    cells = np.zeros((int(grid[image_index, 1]), int(grid[image_index, 2])), dtype=bool)
    chosen = positions[row_mask & (positions[:, 0] == image_index)]
    cells[chosen[:, 2].numpy(), chosen[:, 3].numpy()] = True
    return cells


def test_blackening_image_cells_gives_the_rows_of_pixel_values_masking(
    family, processor, layout, aligned_images, processed
):
    """Cells of patch_size px blackened in the image, then processed: the rows pixel_values masking gives."""
    pixel_values, grid = processed
    masked, row_mask = mask_pixel_values(pixel_values, grid, layout, 0.5, torch_generator(9))
    positions = patch_positions(grid, layout.merge_size)
    blackened = [
        blacken_image_patches(image, cells_of(row_mask, grid, positions, index), family.patch_size)
        for index, image in enumerate(aligned_images)
    ]
    reprocessed = processor.image_processor(images=blackened, return_tensors="pt")
    assert torch.equal(reprocessed["image_grid_thw"], grid)
    torch.testing.assert_close(reprocessed["pixel_values"], masked, rtol=0, atol=1e-6)


def one_row_batch(pixel_values, grid, images, images_aug=None) -> TensorDict:
    """One row in verl 0.9.1's batch layout (NonTensorStack columns)."""
    data = TensorDict({"response_mask": torch.ones(1, 3)}, batch_size=[1])
    tu.assign_non_tensor_stack(data, "multi_modal_inputs", [{"pixel_values": pixel_values, "image_grid_thw": grid}])
    tu.assign_non_tensor_stack(data, "uid", ["prompt-0"])
    content = [*({"type": "image", "image": image} for image in images), {"type": "text", "text": "?"}]
    tu.assign_non_tensor_stack(data, "raw_prompt", [[{"role": "user", "content": content}]])
    if images_aug is not None:
        tu.assign_non_tensor_stack(data, "images_aug", [images_aug])
    return data


def expected_rows(pixel_values, layout, row_mask) -> torch.Tensor:
    """Original rows with the chosen rows replaced by the layout's black row."""
    return torch.where(row_mask.unsqueeze(-1), layout.black_row().unsqueeze(0), pixel_values)


def test_mask_space_image_gives_the_rows_of_pixel_values_masking(family, processor, layout, aligned_images, processed):
    """papo.mask_space=image with patch_size cells: black exactly on the drawn cells' rows, others unchanged."""
    pixel_values, grid = processed
    papo = PapoConfig(mask_space="image", mask_ratio=0.5, mask_patch_size=family.patch_size)
    masked, _ = mask_batch_now(
        MaskedInputBuilder(papo, processor), one_row_batch(pixel_values, grid, aligned_images), 3
    )
    result = tu.get(masked, "multi_modal_inputs")[0]["pixel_values"]
    # the cells the builder drew: the same generator, seeded by (mask_seed, step, uid)
    rng = np.random.default_rng(mask_seed(papo.mask_seed, 3, "prompt-0"))
    positions = patch_positions(grid, layout.merge_size)
    row_mask = torch.zeros(len(positions), dtype=torch.bool)
    for index, image in enumerate(aligned_images):
        rows, cols = -(-image.height // family.patch_size), -(-image.width // family.patch_size)
        cells = rng.random((rows, cols)) < papo.mask_ratio
        mine = positions[:, 0] == index
        row_mask[mine] = torch.from_numpy(cells[positions[mine, 2].numpy(), positions[mine, 3].numpy()])
    assert 0 < row_mask.sum() < row_mask.numel()
    torch.testing.assert_close(result, expected_rows(pixel_values, layout, row_mask), rtol=0, atol=1e-6)


def test_images_aug_gives_the_rows_of_pixel_values_masking(family, processor, layout, aligned_images, processed):
    """Pre-computed masked images (data_prep --precompute-masks) give the rows pixel_values masking gives."""
    pixel_values, grid = processed
    _, row_mask = mask_pixel_values(pixel_values, grid, layout, 0.5, torch_generator(4))
    positions = patch_positions(grid, layout.merge_size)
    images_aug = [
        blacken_image_patches(image, cells_of(row_mask, grid, positions, index), family.patch_size)
        for index, image in enumerate(aligned_images)
    ]
    papo = PapoConfig(mask_ratio=0.0)  # online masking would leave the row untouched
    masked, _ = mask_batch_now(
        MaskedInputBuilder(papo, processor), one_row_batch(pixel_values, grid, aligned_images, images_aug), 1
    )
    result = tu.get(masked, "multi_modal_inputs")[0]["pixel_values"]
    torch.testing.assert_close(result, expected_rows(pixel_values, layout, row_mask), rtol=0, atol=1e-6)


def test_masked_pixel_values_change_the_tiny_models_logits(family_bundle, layout, aligned_images):
    """Each family's tiny model sees the mask: same inputs give the same logits, masked ones others."""
    model, _, processor = family_bundle
    image = aligned_images[0]
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Count."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    # Explicit (text, t, h, w) mRoPE positions, the layout verl passes: valid whether or not verl's
    # model patches (applied when another test built a verl engine in this process) are active.
    vision_positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs.pop("mm_token_type_ids"),
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    text_positions = torch.arange(inputs["input_ids"].shape[1]).view(1, 1, -1)
    inputs["position_ids"] = torch.cat([text_positions, vision_positions], dim=0)
    masked_values, row_mask = mask_pixel_values(
        inputs["pixel_values"], inputs["image_grid_thw"], layout, 0.6, torch_generator(1)
    )
    assert row_mask.any()
    with torch.no_grad():
        original = model(**inputs).logits
        again = model(**inputs).logits
        masked = model(**{**inputs, "pixel_values": masked_values}).logits
    assert torch.equal(original, again)
    assert original.shape == masked.shape
    assert (original - masked).abs().max() > 1e-4
