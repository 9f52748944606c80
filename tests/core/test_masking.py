"""Patch masking in pixel_values space and image space, with the real (tiny) Qwen2.5-VL processor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from vision_patches import patch_positions

from recipe.papo.masking import (
    PatchLayout,
    blacken_image_patches,
    mask_image_patches,
    mask_pixel_values,
    mask_seed,
    torch_generator,
)


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def processed(tiny_processor):
    """Two images of one sample: grids (1, 4, 6) and (1, 6, 4) -> 48 patch rows."""
    images = [random_image(56, 84, 0), random_image(84, 56, 1)]
    out = tiny_processor.image_processor(images=images, return_tensors="pt")
    return images, out["pixel_values"], out["image_grid_thw"]


@pytest.fixture(scope="module")
def layout(tiny_processor) -> PatchLayout:
    return PatchLayout.from_processor(tiny_processor)


def black_row_from_definition(layout: PatchLayout) -> torch.Tensor:
    """(0 - mean_c) / std_c repeated over temporal x patch x patch values of channel c."""
    values = []
    for mean, std in zip(layout.image_mean, layout.image_std, strict=True):
        values += [(0.0 - mean) / std] * (layout.temporal_patch_size * layout.patch_size**2)
    return torch.tensor(values)


def test_layout_read_from_processor(layout, processed):
    _, pixel_values, grid = processed
    assert (layout.patch_size, layout.temporal_patch_size, layout.merge_size) == (14, 2, 2)
    assert pixel_values.shape == (int(grid.prod(-1).sum()), layout.row_width) == (48, 1176)


def test_blackened_rows_are_the_chosen_units_and_exactly_black(processed, layout):
    _, pixel_values, grid = processed
    masked, row_mask = mask_pixel_values(pixel_values, grid, layout, 0.5, torch_generator(3))
    assert masked.shape == pixel_values.shape and masked.dtype == pixel_values.dtype
    assert 0 < row_mask.sum() < row_mask.numel()
    black = black_row_from_definition(layout).to(pixel_values.dtype)
    assert torch.equal(masked[row_mask], black.expand(int(row_mask.sum()), -1))
    assert torch.equal(masked[~row_mask], pixel_values[~row_mask])  # bit-identical
    assert not torch.equal(pixel_values[row_mask], masked[row_mask])


def test_token_unit_blackens_whole_merged_tokens(processed, layout):
    _, pixel_values, grid = processed
    _, row_mask = mask_pixel_values(pixel_values, grid, layout, 0.5, torch_generator(5), unit="token")
    per_token = row_mask.view(-1, layout.merge_size**2)
    assert torch.all(per_token.all(-1) | ~per_token.any(-1))
    assert 0 < per_token.all(-1).sum() < per_token.shape[0]
    # a merged token's 4 rows are one 2x2 block of patches
    positions = patch_positions(grid, layout.merge_size).view(-1, 4, 4)
    rows, cols = positions[..., 2], positions[..., 3]
    assert torch.all(rows.max(-1).values - rows.min(-1).values == 1)
    assert torch.all(cols.max(-1).values - cols.min(-1).values == 1)


@pytest.mark.parametrize("ratio", [0.1, 0.6, 0.9])
def test_observed_ratio_within_binomial_tolerance(layout, ratio):
    rows = 20000
    pixel_values = torch.randn(rows, layout.row_width)
    grid = torch.tensor([[1, 100, 200]])
    _, row_mask = mask_pixel_values(pixel_values, grid, layout, ratio, torch_generator(11))
    sigma = math.sqrt(ratio * (1 - ratio) / rows)
    assert abs(row_mask.float().mean().item() - ratio) < 5 * sigma


def test_ratio_zero_and_one(processed, layout):
    _, pixel_values, grid = processed
    same, none = mask_pixel_values(pixel_values, grid, layout, 0.0, torch_generator(0))
    assert not none.any() and torch.equal(same, pixel_values)
    black, every = mask_pixel_values(pixel_values, grid, layout, 1.0, torch_generator(0))
    assert every.all()
    assert torch.equal(black, black_row_from_definition(layout).expand_as(pixel_values))


def test_bfloat16_pixel_values_keep_their_dtype(processed, layout):
    _, pixel_values, grid = processed
    masked, row_mask = mask_pixel_values(pixel_values.bfloat16(), grid, layout, 0.5, torch_generator(2))
    assert masked.dtype == torch.bfloat16
    assert torch.equal(masked[row_mask][0], black_row_from_definition(layout).bfloat16())


def test_mask_is_a_function_of_seed_step_and_uid(processed, layout):
    _, pixel_values, grid = processed

    def rows(seed, step, uid):
        return mask_pixel_values(pixel_values, grid, layout, 0.5, torch_generator(mask_seed(seed, step, uid)))[1]

    assert torch.equal(rows(0, 3, "prompt-a"), rows(0, 3, "prompt-a"))
    assert not torch.equal(rows(0, 3, "prompt-a"), rows(0, 4, "prompt-a"))
    assert not torch.equal(rows(0, 3, "prompt-a"), rows(0, 3, "prompt-b"))
    assert not torch.equal(rows(0, 3, "prompt-a"), rows(1, 3, "prompt-a"))
    assert mask_seed(0, 3, "prompt-a") == mask_seed(0, 3, "prompt-a")


def test_inconsistent_grid_is_rejected(processed, layout):
    _, pixel_values, _ = processed
    with pytest.raises(ValueError, match="describes 40 patch rows"):
        mask_pixel_values(pixel_values, torch.tensor([[1, 4, 10]]), layout, 0.5, torch_generator(0))


def test_image_space_blackening_matches_pixel_values_masking_when_grids_align(processed, layout, tiny_processor):
    """Blacken the image in 14-px cells, process it: same rows as masking pixel_values directly."""
    images, pixel_values, grid = processed
    masked, row_mask = mask_pixel_values(pixel_values, grid, layout, 0.5, torch_generator(9))
    positions = patch_positions(grid, layout.merge_size)
    blackened = []
    for index, image in enumerate(images):
        cells = np.zeros((int(grid[index, 1]), int(grid[index, 2])), dtype=bool)
        chosen = positions[row_mask & (positions[:, 0] == index)]
        cells[chosen[:, 2].numpy(), chosen[:, 3].numpy()] = True
        blackened.append(blacken_image_patches(image, cells, layout.patch_size))
    reprocessed = tiny_processor.image_processor(images=blackened, return_tensors="pt")
    assert torch.equal(reprocessed["image_grid_thw"], grid)
    torch.testing.assert_close(reprocessed["pixel_values"], masked, rtol=0, atol=1e-6)


def test_image_space_masking_is_vectorised_cells_with_partial_edges():
    image = random_image(30, 45, 4)  # 14-px cells: 3 x 4 grid, last row/col partial
    masked, cells = mask_image_patches(image, 0.5, 14, np.random.default_rng(0))
    assert cells.shape == (3, 4) and masked.size == image.size and masked.mode == "RGB"
    original, result = np.array(image), np.array(masked)
    pixel_cells = np.repeat(np.repeat(cells, 14, 0), 14, 1)[:30, :45]
    assert (result[pixel_cells] == 0).all()
    assert np.array_equal(result[~pixel_cells], original[~pixel_cells])
    array_masked, _ = mask_image_patches(original, 1.0, 14, np.random.default_rng(0))
    assert array_masked.dtype == np.uint8 and (array_masked == 0).all()
    assert not (original == 0).all()
