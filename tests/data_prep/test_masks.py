"""--precompute-masks: images_aug has the images' count and sizes, is 0 in masked cells and unchanged elsewhere."""

from __future__ import annotations

import json

import data_prep_fixtures as fx
import numpy as np

from data_prep import geometry3k, virl39k
from recipe.papo.masking import mask_seed
from recipe.papo.prompt import DEFAULT_PROMPT_TEMPLATE

PATCH = 4


def cell_states(original: np.ndarray, masked: np.ndarray, patch: int) -> np.ndarray:
    """Per cell: True if every pixel is 0, False if every pixel equals the original; fails otherwise."""
    rows, cols = -(-original.shape[0] // patch), -(-original.shape[1] // patch)
    states = np.zeros((rows, cols), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            cell = (slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch))
            if np.all(masked[cell] == 0):
                states[r, c] = True
            else:
                assert np.array_equal(masked[cell], original[cell]), f"cell {(r, c)} is neither black nor unchanged"
    return states


def convert(tmp_path, *flags):
    rows, _, _ = fx.problem_rows()
    source = fx.write_parquet(tmp_path / "v.parquet", rows)
    out = tmp_path / "out"
    assert virl39k.main(["--source", str(source), "--out", str(out), "--precompute-masks", *map(str, flags)]) == 0
    return fx.read_parquet(out / "virl39k_train.parquet"), json.loads((out / "virl39k_train.summary.json").read_text())


def test_masks_are_black_cells_over_unchanged_pixels(tmp_path):
    records, result = convert(tmp_path, "--mask-ratio", 0.6, "--patch-size", PATCH, "--seed", 3)
    assert result["options"] == {
        "max_rows": None,
        "strict": False,
        "precompute_masks": True,
        "mask_ratio": 0.6,
        "patch_size": PATCH,
        "seed": 3,
        "prompt_template": DEFAULT_PROMPT_TEMPLATE,
    }
    masked_cells = total_cells = 0
    for record in records:
        assert len(record["images_aug"]) == len(record["images"]) > 0
        key = f"{record['extra_info']['id']}@{record['extra_info']['index']}"
        rng = np.random.default_rng(mask_seed(3, 0, key))
        for image, aug in zip(record["images"], record["images_aug"], strict=True):
            original_image, aug_image = fx.decode(image), fx.decode(aug)
            assert aug_image.format == "PNG" and aug_image.mode == "RGB"
            assert aug_image.size == original_image.size
            original = np.asarray(original_image.convert("RGB"))
            states = cell_states(original, np.asarray(aug_image), PATCH)
            expected = rng.random(states.shape) < 0.6
            assert np.array_equal(states, expected), "mask must come from mask_seed(seed, 0, '<id>@<index>')"
            masked_cells += int(states.sum())
            total_cells += states.size
    assert 0 < masked_cells < total_cells


def test_ratio_extremes_and_seed(tmp_path):
    none, _ = convert(tmp_path / "r0", "--mask-ratio", 0, "--patch-size", PATCH)
    full, _ = convert(tmp_path / "r1", "--mask-ratio", 1, "--patch-size", PATCH)
    for kept, blacked in zip(none, full, strict=True):
        for image, aug0, aug1 in zip(kept["images"], kept["images_aug"], blacked["images_aug"], strict=True):
            original = np.asarray(fx.decode(image).convert("RGB"))
            assert np.array_equal(np.asarray(fx.decode(aug0)), original)
            assert not np.asarray(fx.decode(aug1)).any()
    seed0, _ = convert(tmp_path / "s0", "--seed", 0)
    seed1, _ = convert(tmp_path / "s1", "--seed", 1)
    assert [r["images"] for r in seed0] == [r["images"] for r in seed1]
    assert [r["images_aug"] for r in seed0] != [r["images_aug"] for r in seed1]


def test_geometry3k_masks_use_the_row_index_without_ids(tmp_path):
    rows, _, _ = fx.problem_rows()
    good = [{k: v for k, v in rows[i].items() if k != "id"} for i in (0, 1)]
    source = fx.write_parquet(tmp_path / "g.parquet", good, columns=("images", "problem", "answer"))
    out = tmp_path / "out"
    argv = ["--source", source, "--out", out, "--splits", "train", "--precompute-masks", "--patch-size", PATCH]
    assert geometry3k.main([str(a) for a in argv]) == 0
    record = fx.read_parquet(out / "geometry3k_train.parquet")[1]
    assert record["extra_info"]["id"] is None
    rng = np.random.default_rng(mask_seed(0, 0, "1"))
    for image, aug in zip(record["images"], record["images_aug"], strict=True):
        original = np.asarray(fx.decode(image).convert("RGB"))
        states = cell_states(original, np.asarray(fx.decode(aug)), PATCH)
        assert np.array_equal(states, rng.random(states.shape) < 0.6)
