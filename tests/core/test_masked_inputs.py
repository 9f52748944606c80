"""Batch-level masked multi_modal_inputs: sources (images_aug, image space, pixel_values), sharing, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from eager_masks import mask_batch_now
from PIL import Image
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from vision_patches import patch_positions

from recipe.papo.config import PapoConfig
from recipe.papo.masked_inputs import MaskedInputBuilder, MaskedInputError
from recipe.papo.masking import PatchLayout


def image(seed: int, size=(84, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_dict(picture: Image.Image, fmt: str = "PNG") -> dict:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return {"bytes": buffer.getvalue(), "path": None}


def verl_image_item(cell: dict, **options) -> dict:
    """A prompt content item as verl's ``RLHFDataset._build_messages`` makes it from a ``{bytes, path}`` cell."""
    return {"type": "image", **cell, "image": Image.open(io.BytesIO(cell["bytes"])), **options}


def verl_inputs(processor, items: list[dict]) -> dict:
    """``multi_modal_inputs`` as verl 0.9.1's agent loop builds them: qwen_vl_utils, then the processor."""
    from qwen_vl_utils import process_vision_info
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    patch_size = processor.image_processor.patch_size
    images, _ = process_vision_info([{"role": "user", "content": items}], image_patch_size=patch_size)
    out = build_multimodal_processor_inputs(processor, text=[processor.image_token * len(images)], images=images)
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def make_batch(processor, uids, pictures, images_aug=None, fmt="PNG"):
    """A TensorDict laid out like verl 0.9.1's batch: NonTensorStack columns of per-row objects.

    Each picture is stored as an encoded ``{bytes, path}`` cell (as in the parquet) and goes through
    verl's own image chain for the original inputs.
    """
    rows, prompts = [], []
    for picture in pictures:
        if picture is None:
            rows.append({})
            prompts.append([{"role": "user", "content": "text only"}])
            continue
        item = verl_image_item(png_dict(picture, fmt))
        rows.append(verl_inputs(processor, [item]))
        prompts.append([{"role": "user", "content": [item, {"type": "text", "text": "?"}]}])
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
    masked, has_image = mask_batch_now(builder, data, step=4)
    assert has_image.tolist() == [True, True, True]
    assert torch.equal(pixel_values(masked, 0), pixel_values(masked, 1))
    assert not torch.equal(pixel_values(masked, 0), pixel_values(masked, 2))
    assert not torch.equal(pixel_values(masked, 0), pixel_values(data, 0))
    again, _ = mask_batch_now(builder, data, step=5)
    assert not torch.equal(pixel_values(again, 0), pixel_values(masked, 0))


def test_original_batch_is_not_modified_and_imageless_rows_pass_through(tiny_processor):
    builder = MaskedInputBuilder(PapoConfig(mask_ratio=1.0), tiny_processor)
    data = make_batch(tiny_processor, ["a", "b"], [image(1), None])
    before = pixel_values(data, 0).clone()
    masked, has_image = mask_batch_now(builder, data, step=1)
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
    data = make_batch(
        tiny_processor, ["a", "b"], [original, original], images_aug=[[png_dict(Image.fromarray(aug))], None]
    )
    masked, _ = mask_batch_now(builder, data, step=1)
    expected = tiny_processor.image_processor(images=[Image.fromarray(aug)], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values(masked, 0), expected, rtol=0, atol=0)
    assert black_rows(pixel_values(masked, 0), black).sum() == 12  # 4 rows x 3 cols of patches
    assert torch.equal(pixel_values(masked, 1), pixel_values(data, 1))  # ratio 0, no images_aug


def test_images_aug_with_wrong_count_names_the_row(tiny_processor):
    builder = MaskedInputBuilder(PapoConfig(), tiny_processor)
    data = make_batch(tiny_processor, ["uid-7"], [image(3)], images_aug=[[png_dict(image(3)), png_dict(image(4))]])
    with pytest.raises(MaskedInputError, match="uid=uid-7: images_aug has 2 image"):
        mask_batch_now(builder, data, step=1)


def test_image_space_masking_blackens_raw_images_on_the_original_grid(tiny_processor, black):
    data = make_batch(tiny_processor, ["a"], [image(5)])
    unmasked, _ = mask_batch_now(
        MaskedInputBuilder(PapoConfig(mask_space="image", mask_ratio=0.0), tiny_processor), data, 1
    )
    torch.testing.assert_close(pixel_values(unmasked, 0), pixel_values(data, 0), rtol=0, atol=1e-6)
    full, _ = mask_batch_now(
        MaskedInputBuilder(PapoConfig(mask_space="image", mask_ratio=1.0), tiny_processor), data, 1
    )
    assert black_rows(pixel_values(full, 0), black).all()
    half, _ = mask_batch_now(
        MaskedInputBuilder(PapoConfig(mask_space="image", mask_ratio=0.5), tiny_processor), data, 1
    )
    blackened = black_rows(pixel_values(half, 0), black)
    assert 0 < blackened.sum() < blackened.numel()


def test_rollouts_share_one_masked_tensor_equal_to_masking_each_row(tiny_processor):
    """The n rollouts of a prompt reuse one masked pixel_values, identical to masking each on its own."""
    builder = MaskedInputBuilder(PapoConfig(mask_ratio=0.5), tiny_processor)
    picture = image(8)
    data = make_batch(tiny_processor, ["p", "p", "p"], [picture, picture, picture])
    masked, _ = mask_batch_now(builder, data, step=2)
    assert pixel_values(masked, 0) is pixel_values(masked, 1) is pixel_values(masked, 2)
    alone = builder.mask_row(tu.get(data, "multi_modal_inputs")[2], "p", 2)
    assert torch.equal(alone["pixel_values"], pixel_values(masked, 2))


def test_same_uid_with_different_pixels_gets_its_own_mask(tiny_processor):
    builder = MaskedInputBuilder(PapoConfig(mask_ratio=0.5), tiny_processor)
    data = make_batch(tiny_processor, ["p", "p"], [image(8), image(9)])
    masked, _ = mask_batch_now(builder, data, step=2)
    second = tu.get(data, "multi_modal_inputs")[1]
    assert torch.equal(pixel_values(masked, 1), builder.mask_row(second, "p", 2)["pixel_values"])
    assert not torch.equal(pixel_values(masked, 1), pixel_values(masked, 0))


# --- fidelity to verl's own image chain (transparency, resize chain, image modes) ----------------

MODES = ("RGB", "L", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F")
# (width, height): inside the tiny processor's pixel bounds on the 28-px grid, off the grid, above the
# processor's max_pixels (qwen_vl_utils keeps it, the processor shrinks it), large, and below min_pixels.
SIZES = ((84, 56), (97, 61), (300, 200), (2000, 1500), (20, 30))


def picture_in_mode(mode: str, size=(97, 61), seed: int = 0) -> tuple[Image.Image, str]:
    """A random picture in ``mode`` (RGBA / LA with fully and partly transparent regions) and its file format."""
    rng = np.random.default_rng(seed)
    width, height = size
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode in ("RGBA", "LA"):
        picture = rgb.convert(mode)
        alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
        alpha[:, : width // 2] = 0  # a transparent background
        picture.putalpha(Image.fromarray(alpha))
        return picture, "PNG"
    if mode in ("I;16", "I"):
        values = rng.integers(0, 65536, (height, width)).astype(np.uint16 if mode == "I;16" else np.int32)
        picture = Image.fromarray(values)  # uint16 -> I;16, int32 -> I
        assert picture.mode == mode
        return picture, "PNG" if mode == "I;16" else "TIFF"
    if mode == "F":  # 32-bit float: fractional values, some outside 0..255 (verl's conversion clips them)
        picture = Image.fromarray(rng.uniform(-20.0, 300.0, (height, width)).astype(np.float32))
        assert picture.mode == "F"
        return picture, "TIFF"
    if mode == "P":
        return rgb.quantize(16), "PNG"
    return rgb.convert(mode), "TIFF" if mode == "CMYK" else "PNG"


@pytest.mark.parametrize("mode", MODES)
def test_rgb_conversion_equals_the_real_qwen_vl_utils(mode):
    """The conversion the masked pass uses is qwen_vl_utils' own (the installed package, imported)."""
    from qwen_vl_utils.vision_process import to_rgb as real_to_rgb

    from recipe.papo.image_rgb import to_rgb

    for size in ((40, 30), *SIZES):
        picture, _ = picture_in_mode(mode, size)
        assert np.array_equal(np.asarray(to_rgb(picture)), np.asarray(real_to_rgb(picture))), (mode, size)


@pytest.mark.parametrize("mode", MODES)
def test_image_paths_at_ratio_zero_equal_the_original_bit_for_bit(tiny_processor, mode):
    """mask_space=image and images_aug at ratio 0 rebuild the original pixel_values exactly, any size and mode."""
    image_space = MaskedInputBuilder(PapoConfig(mask_space="image", mask_ratio=0.0), tiny_processor)
    online = MaskedInputBuilder(PapoConfig(mask_ratio=0.0), tiny_processor)
    for size in SIZES:
        picture, fmt = picture_in_mode(mode, size, seed=size[0])
        data = make_batch(tiny_processor, ["a"], [picture], images_aug=[[png_dict(picture, fmt)]], fmt=fmt)
        original = pixel_values(data, 0)
        from_aug, _ = mask_batch_now(online, data, step=3)
        assert torch.equal(pixel_values(from_aug, 0), original), f"images_aug {mode} {size}"
        data = make_batch(tiny_processor, ["a"], [picture], fmt=fmt)
        from_image, _ = mask_batch_now(image_space, data, step=3)
        assert torch.equal(pixel_values(from_image, 0), original), f"mask_space=image {mode} {size}"


def drawn_cell_mask(seed: int, step: int, uid: str, ratio: float, cell: int, size) -> np.ndarray:
    """The cell mask the builder draws for a one-image row, recomputed from the seed."""
    from recipe.papo.masking import mask_seed

    width, height = size
    return np.random.default_rng(mask_seed(seed, step, uid)).random((-(-height // cell), -(-width // cell))) < ratio


def reach_of(cell_mask: np.ndarray, cell: int, size, sizes_after) -> np.ndarray:
    """Pixels of the final image that a blackened cell can reach through the chain's bicubic resizes."""
    width, height = size
    pixels = np.repeat(np.repeat(cell_mask, cell, 0), cell, 1)[:height, :width].astype(np.float32)
    reach = Image.fromarray(pixels, mode="F")
    for target in sizes_after:
        reach = reach.resize(target, Image.Resampling.BICUBIC)
    return np.abs(np.asarray(reach)) > 0


@pytest.mark.parametrize("size", SIZES[:4])
def test_image_space_masking_changes_only_rows_blackened_cells_reach(tiny_processor, size):
    from qwen_vl_utils import smart_resize

    papo = PapoConfig(mask_space="image", mask_ratio=0.3, mask_patch_size=14)
    picture, _ = picture_in_mode("RGBA", size)
    data = make_batch(tiny_processor, ["u"], [picture])
    masked, _ = mask_batch_now(MaskedInputBuilder(papo, tiny_processor), data, step=5)
    grid = tu.get(data, "multi_modal_inputs")[0]["image_grid_thw"]
    changed = (pixel_values(masked, 0) != pixel_values(data, 0)).any(-1)
    cells = drawn_cell_mask(papo.mask_seed, 5, "u", 0.3, 14, size)
    fetched = smart_resize(size[1], size[0], factor=28)[::-1]
    final = (int(grid[0, 2]) * 14, int(grid[0, 1]) * 14)
    reach = reach_of(cells, 14, size, [fetched, final])
    positions = patch_positions(grid, merge_size=2)
    reachable = torch.tensor(
        [reach[h * 14 : (h + 1) * 14, w * 14 : (w + 1) * 14].any() for _, _, h, w in positions.tolist()]
    )
    assert cells.any() and changed.any()
    assert not (changed & ~reachable).any(), f"{int((changed & ~reachable).sum())} rows changed beyond the cells' reach"


def test_image_paths_use_the_runs_processor_options_given_at_start_up(tiny_processor):
    """With data.mm_processor_kwargs that change the grid, the builder given them (as the worker's
    ``init_papo`` gives them, once) makes the re-processed images match the original at ratio 0;
    a builder without them names the setting."""
    from recipe.papo.masked_inputs import MaskedInputError

    kwargs = {"min_pixels": 112 * 112, "max_pixels": 224 * 224}  # upscales the 84x56 picture
    picture = image(5)
    item = verl_image_item(png_dict(picture))
    from qwen_vl_utils import process_vision_info
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    images, _ = process_vision_info([{"role": "user", "content": [item]}], image_patch_size=14)
    out = build_multimodal_processor_inputs(
        tiny_processor, text=[tiny_processor.image_token], images=images, mm_processor_kwargs=kwargs
    )
    data = make_batch(tiny_processor, ["a"], [picture])
    tu.assign_non_tensor_stack(
        data, "multi_modal_inputs", [{"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}]
    )
    assert not torch.equal(out["image_grid_thw"], verl_inputs(tiny_processor, [item])["image_grid_thw"])
    papo = PapoConfig(mask_space="image", mask_ratio=0.0)
    with pytest.raises(MaskedInputError, match="mm_processor_kwargs"):
        mask_batch_now(MaskedInputBuilder(papo, tiny_processor), data, step=1)
    masked, _ = mask_batch_now(MaskedInputBuilder(papo, tiny_processor, mm_processor_kwargs=kwargs), data, step=1)
    assert torch.equal(pixel_values(masked, 0), out["pixel_values"])


LAZY_CONFIGS = {
    "pixel_values": PapoConfig(mask_ratio=0.5),
    "image": PapoConfig(mask_space="image", mask_ratio=0.4),
}


@pytest.mark.parametrize("space", sorted(LAZY_CONFIGS))
def test_lazy_rows_equal_the_eager_rows_bit_for_bit_and_build_only_when_read(tiny_processor, space):
    """``mask_batch`` (the worker's, per micro-batch) gives every row the masks of masking it on its own
    (``mask_row``), bitwise, in both mask spaces and with an ``images_aug`` row; it builds nothing until a
    row's pixels are read."""
    from recipe.papo.masked_inputs import LazyMaskedInputs

    builder = MaskedInputBuilder(LAZY_CONFIGS[space], tiny_processor)
    aug = np.array(image(3))
    aug[:, :42] = 0
    pictures = [image(1), image(1), None, image(2), image(2), image(3)]
    data = make_batch(
        tiny_processor,
        ["a", "a", "t", "b", "b", "c"],
        pictures,
        images_aug=[None, None, None, None, None, [png_dict(Image.fromarray(aug))]],
    )
    built = []
    original_mask_row = builder.mask_row
    builder.mask_row = lambda *args, **kwargs: built.append(args[1]) or original_mask_row(*args, **kwargs)
    lazy, lazy_has_image = builder.mask_batch(data, step=6)
    rows = tu.get(lazy, "multi_modal_inputs")
    assert built == [], "lazy mask_batch built masked inputs up front"
    assert [type(row) is LazyMaskedInputs for row in rows] == [True, True, False, True, True, True]
    assert "pixel_values" in rows[0] and len(rows[0]) == 2 and "uid='a'" in repr(rows[0])
    assert built == [], "membership, len or repr built masked inputs"
    torch.testing.assert_close(rows[0]["image_grid_thw"], tu.get(data, "multi_modal_inputs")[0]["image_grid_thw"])
    assert built == []

    assert lazy_has_image.tolist() == [picture is not None for picture in pictures]
    originals, augs = tu.get(data, "multi_modal_inputs"), tu.get(data, "images_aug")
    prompts = tu.get(data, "raw_prompt")
    for row in range(len(pictures)):
        if pictures[row] is None:
            assert rows[row] == {}
            continue
        alone = original_mask_row(originals[row], tu.get(data, "uid")[row], 6, augs[row], prompts[row])
        assert torch.equal(pixel_values(lazy, row), alone["pixel_values"]), f"row {row}"
        assert not torch.equal(pixel_values(lazy, row), pixel_values(data, row)), f"row {row} not masked"
    # Read in order, as the engine reads a micro-batch: the second rollout of a prompt reuses the first's
    # mask in pixel_values space (one build per prompt); the image paths rebuild per row.
    built.clear()
    for row in rows:
        dict(row.items())
    assert built == (["a", "b", "c"] if space == "pixel_values" else ["a", "a", "b", "b", "c"])
    assert not isinstance(rows[0], dict) and isinstance(rows[0].build(), dict)


def test_lazy_rows_keep_no_masked_tensor_once_read(tiny_processor):
    """A lazy row holds no masked pixels after its reader drops them, except the one kept for sharing."""
    import gc
    import weakref

    builder = MaskedInputBuilder(PapoConfig(mask_ratio=0.5), tiny_processor)
    data = make_batch(tiny_processor, ["a", "b", "c"], [image(1), image(2), image(3)])
    lazy, _ = builder.mask_batch(data, step=1)
    rows = tu.get(lazy, "multi_modal_inputs")
    alive = [weakref.ref(row["pixel_values"]) for row in rows]
    gc.collect()
    assert [ref() is not None for ref in alive] == [False, False, True]  # only the last uid's mask is kept
