"""``papo.mask_patch_size`` defaults to the model's patch side, per family (14 px for Qwen2.5-VL, 16 px
for Qwen3-VL and Qwen3.5), so ``mask_space=image`` blackens whole vision patches without a setting.

Each test runs once per supported family with its real processor (tiny model saved and loaded back).
On images whose sides are multiples of a merged token every resize is the identity, so a cell that
is exactly one patch blackens exactly one ``pixel_values`` row: every row must then be either
unchanged or exactly the layout's black row. A 14-px cell on a 16-px patch (the old default on
Qwen3-VL / Qwen3.5) leaves partly black rows.
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

from recipe.papo.config import PapoConfig
from recipe.papo.masked_inputs import MaskedInputBuilder
from recipe.papo.masking import PatchLayout
from recipe.papo.model_families import FAMILIES


@pytest.fixture(scope="module")
def family(family_model_dir):
    return FAMILIES[json.loads((family_model_dir / "config.json").read_text())["model_type"]]


@pytest.fixture(scope="module")
def processor(family_bundle):
    return family_bundle[2]


def aligned_image(family, seed: int = 0) -> Image.Image:
    """Random noise without black pixels, 4 x 3 merged tokens (every resize step is the identity)."""
    token = family.patch_size * family.merge_size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 256, (3 * token, 4 * token, 3), dtype=np.uint8))


def masked_rows(processor, papo: PapoConfig, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """``(original, masked)`` pixel_values of a one-row batch in verl 0.9.1's layout."""
    out = processor.image_processor(images=[image], return_tensors="pt")
    data = TensorDict({"response_mask": torch.ones(1, 3)}, batch_size=[1])
    tu.assign_non_tensor_stack(
        data, "multi_modal_inputs", [{"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}]
    )
    tu.assign_non_tensor_stack(data, "uid", ["prompt-0"])
    content = [{"type": "image", "image": image}, {"type": "text", "text": "?"}]
    tu.assign_non_tensor_stack(data, "raw_prompt", [[{"role": "user", "content": content}]])
    masked, _ = mask_batch_now(MaskedInputBuilder(papo, processor), data, 2)
    return out["pixel_values"], tu.get(masked, "multi_modal_inputs")[0]["pixel_values"]


def row_kinds(original: torch.Tensor, masked: torch.Tensor, processor) -> tuple[int, int, int]:
    """Counts of rows that are unchanged, exactly black, and partly changed."""
    black = PatchLayout.from_processor(processor).black_row().to(masked.dtype)
    unchanged = torch.isclose(masked, original, rtol=0, atol=1e-6).all(-1)
    blackened = torch.isclose(masked, black.expand_as(masked), rtol=0, atol=1e-6).all(-1) & ~unchanged
    return int(unchanged.sum()), int(blackened.sum()), int((~unchanged & ~blackened).sum())


def test_default_is_unset_and_the_builder_reads_the_familys_patch_size(family, processor):
    assert PapoConfig().mask_patch_size is None
    builder = MaskedInputBuilder(PapoConfig(mask_space="image"), processor)
    assert builder.mask_patch_size == family.patch_size == processor.image_processor.patch_size
    assert MaskedInputBuilder(PapoConfig(mask_space="image", mask_patch_size=10), processor).mask_patch_size == 10


def test_default_cells_blacken_whole_patches_of_every_family(family, processor):
    image = aligned_image(family)
    original, by_default = masked_rows(processor, PapoConfig(mask_space="image", mask_ratio=0.5), image)
    unchanged, blackened, partial = row_kinds(original, by_default, processor)
    assert partial == 0 and unchanged > 0 and blackened > 0, (unchanged, blackened, partial)
    _, explicit = masked_rows(
        processor, PapoConfig(mask_space="image", mask_ratio=0.5, mask_patch_size=family.patch_size), image
    )
    assert torch.equal(by_default, explicit)


def test_the_old_fixed_default_of_14_px_was_right_only_for_14_px_families(family, processor):
    """14-px cells blacken whole patches of a 14-px family and leave rows of a 16-px family partly blackened."""
    image = aligned_image(family)
    original, masked = masked_rows(processor, PapoConfig(mask_space="image", mask_ratio=0.5, mask_patch_size=14), image)
    partial = row_kinds(original, masked, processor)[2]
    assert partial == 0 if family.patch_size == 14 else partial > 0, (family.patch_size, partial)
