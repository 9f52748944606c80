"""The supported-families table: name -> model_type, the start-up check, the docs table, and each
family's tiny model as verl loads it (processor class, mRoPE position ids)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipe.papo.model_families import (
    FAMILIES,
    UnsupportedModelError,
    check_model_supported,
    family_of_model_name,
    model_type_of,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "develop.md"
# The transformers classes the families' released checkpoints load as (their config.json "architectures"
# and preprocessor's "processor_class"); the tiny models must be built from the same ones.
RELEASED_CLASSES = {
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    "qwen3_5": ("Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor"),
}


@pytest.mark.parametrize(
    ("name", "model_type"),
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"),
        ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl"),
        ("Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl"),
        ("Qwen/Qwen3-VL-8B-Thinking", "qwen3_vl"),
        ("Qwen/Qwen3.5-9B", "qwen3_5"),
        ("/nonexistent/checkpoints/Qwen3.5-27B", "qwen3_5"),
    ],
)
def test_hub_names_map_to_their_family(name, model_type):
    assert family_of_model_name(name) == model_type


@pytest.mark.parametrize(
    ("name", "model_type"),
    [("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3_vl_moe"), ("Qwen/Qwen3.5-35B-A3B", "qwen3_5_moe")],
)
def test_moe_names_are_their_own_unsupported_type(name, model_type):
    assert model_type_of(name) == model_type
    with pytest.raises(UnsupportedModelError, match=f"model_type '{model_type}'.*Qwen3-VL \\(dense\\) \\(qwen3_vl\\)"):
        family_of_model_name(name)


def test_a_local_directory_is_decided_by_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    assert family_of_model_name(str(tmp_path)) == "qwen3_vl"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(UnsupportedModelError, match="model_type 'llava'.*Supported families: Qwen2.5-VL"):
        family_of_model_name(str(tmp_path))
    (tmp_path / "config.json").unlink()
    with pytest.raises(UnsupportedModelError, match="cannot read model_type from .*config.json"):
        model_type_of(str(tmp_path))


def test_unknown_names_fail_naming_the_families_and_the_override():
    with pytest.raises(UnsupportedModelError) as error:
        family_of_model_name("llava-hf/llava-1.5-7b-hf")
    message = str(error.value)
    assert all(model_type in message for model_type in FAMILIES)
    assert "papo.allow_unsupported_model=true" in message


def test_the_override_turns_the_error_into_a_warning():
    with pytest.warns(UserWarning, match="allow_unsupported_model=true: running anyway"):
        assert check_model_supported("llava-hf/llava-1.5-7b-hf", allow_unsupported=True) is None
    assert check_model_supported("Qwen/Qwen3-VL-8B-Instruct", allow_unsupported=True) == "qwen3_vl"
    with pytest.raises(UnsupportedModelError):
        check_model_supported("llava-hf/llava-1.5-7b-hf", allow_unsupported=False)


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(DOCS.parents[1] / "configs"), version_base=None):
        return hydra_compose(config_name="papo_trainer", overrides=["actor_rollout_ref.rollout.name=vllm", *overrides])


def test_the_run_start_up_check_rejects_an_unsupported_model_unless_overridden():
    from recipe.papo.run_checks import check_papo_run_config

    check_papo_run_config(compose("actor_rollout_ref.model.path=Qwen/Qwen3.5-9B"))
    with pytest.raises(UnsupportedModelError, match="llava-1.5-7b-hf"):
        check_papo_run_config(compose("actor_rollout_ref.model.path=llava-hf/llava-1.5-7b-hf"))
    with pytest.warns(UserWarning):
        check_papo_run_config(
            compose("actor_rollout_ref.model.path=llava-hf/llava-1.5-7b-hf", "papo.allow_unsupported_model=true")
        )


def docs_rows() -> dict[str, list[str]]:
    """``model_type`` -> cells of the first table in docs/develop.md."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] != "Family" and re.fullmatch(r"`[a-z0-9_]+`", cells[1]):
            rows[cells[1].strip("`")] = cells
    return rows


# The "Tested how" column of docs/develop.md, the same for every supported family.
TESTED_ON_CPU = "CPU: tiny random model (masking, worker, `SMOKE=1` end to end)"


def test_the_docs_table_is_the_families_table():
    rows = docs_rows()
    assert sorted(rows) == sorted(FAMILIES)
    for model_type, (display, _, layout, token, tested) in rows.items():
        family = FAMILIES[model_type]
        assert display == family.display_name
        assert layout.startswith(
            f"{family.patch_size} px / {family.temporal_patch_size} / {family.merge_size}x{family.merge_size}"
        )
        side = family.patch_size * family.merge_size
        assert token == f"{side} x {side} px"
        assert tested == TESTED_ON_CPU


def test_pixel_bounds_are_the_papers_token_budget():
    assert (FAMILIES["qwen2_5_vl"].min_pixels, FAMILIES["qwen2_5_vl"].max_pixels) == (200704, 1003520)
    for model_type in ("qwen3_vl", "qwen3_5"):
        assert (FAMILIES[model_type].min_pixels, FAMILIES[model_type].max_pixels) == (256 * 32 * 32, 1280 * 32 * 32)


# --- each family's tiny model as verl loads it -------------------------------------------------------


def test_tiny_model_is_the_familys_real_class_loaded_back(family_model_dir, family_bundle):
    model, tokenizer, processor = family_bundle
    model_type = json.loads((family_model_dir / "config.json").read_text())["model_type"]
    family = FAMILIES[model_type]
    assert family_of_model_name(str(family_model_dir)) == model_type
    assert (type(model).__name__, type(processor).__name__) == RELEASED_CLASSES[model_type]
    vision = model.config.vision_config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (
        family.patch_size,
        family.merge_size,
        family.temporal_patch_size,
    )
    for token in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_verls_processor_binds_the_rope_index_of_the_model(family_model_dir, family_bundle):
    """verl's ``hf_processor`` picks ``get_rope_index`` by processor class name (Qwen3.5 shares
    ``Qwen3VLProcessor``): its mRoPE position ids equal the model's own, with two images."""
    from verl.utils.tokenizer import hf_processor

    model, _, _ = family_bundle
    processor = hf_processor(str(family_model_dir))
    assert processor is not None and hasattr(processor, "get_rope_index")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(1, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((70, 100), (120, 64))]
    content = [{"type": "image"}, {"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "text", "text": "?"}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    inputs = processor(text=[text], images=images, return_tensors="pt")
    kwargs = {"image_grid_thw": inputs["image_grid_thw"], "attention_mask": inputs["attention_mask"]}
    verl_positions, _ = processor.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], **kwargs)
    model_positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], **kwargs)
    assert torch.equal(verl_positions, model_positions)
    # the image tokens get 2-D positions: not all three mRoPE axes equal on image tokens
    image_tokens = inputs["input_ids"][0] == model.config.image_token_id
    assert image_tokens.sum() == inputs["image_grid_thw"].prod(-1).sum() // 4
    assert not torch.equal(verl_positions[1, 0, image_tokens], verl_positions[2, 0, image_tokens])
