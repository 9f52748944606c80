"""Images wider than 8 bits: 32-bit float (``F``) and 32-bit integer (``I``) images become 8-bit by the
rule of ``recipe.papo.image_rgb.to_eight_bit`` wherever data_prep takes an image in (encoded bytes, PIL
input, the ``images_aug`` drawn from it), and values the rule has no conversion for skip the row with
``image_values_out_of_range``. Real TIFF files (the format that holds float images) throughout."""

from __future__ import annotations

import io
import json
import logging

import data_prep_fixtures as fx
import numpy as np
import pytest
from PIL import Image

from data_prep import virl39k
from data_prep.images import MaskOptions
from data_prep.rows import RawRow, RowSpec, Skip, convert_row
from recipe.papo import image_rgb
from recipe.papo.image_rgb import to_rgb

SPEC = RowSpec(data_source="papo/virl39k", split="train", benchmark="virl39k", group=None, ability="math")
MASKED_SPEC = RowSpec(**{**SPEC.__dict__, "masks": MaskOptions(ratio=0.0, patch_size=4, seed=0)})


def tiff(values: np.ndarray) -> bytes:
    """``values`` (float32 or int32) as a real TIFF file, the way a float or 32-bit image is stored."""
    picture = Image.fromarray(values)
    assert picture.mode == ("F" if values.dtype == np.float32 else "I")
    buffer = io.BytesIO()
    picture.save(buffer, format="TIFF")
    return buffer.getvalue()


def raw(images, index=0, row_id="r0") -> RawRow:
    return RawRow(index=index, id=row_id, question="<image>Find x.", answer="3", images=images)


def written_image(record: dict, column: str = "images") -> Image.Image:
    return Image.open(io.BytesIO(record[column][0]["bytes"]))


def normalised_ramp() -> np.ndarray:
    """A float32 picture in [0, 1]: a ramp from 0 to exactly 1, with values between the 8-bit steps."""
    return (np.arange(30 * 40).reshape(30, 40) / (30 * 40 - 1)).astype(np.float32)


def test_normalised_float_image_is_scaled_by_255_as_training_reads_it():
    ramp = normalised_ramp()
    record = convert_row(raw([tiff(ramp)]), SPEC)
    written = written_image(record)
    expected = np.rint(ramp.astype(np.float64) * 255).astype(np.uint8)
    assert written.format == "PNG" and written.mode == "L"
    seen_by_training = np.asarray(to_rgb(written))  # verl's qwen_vl_utils conversion of the stored image
    for channel in range(3):
        assert np.array_equal(seen_by_training[..., channel], expected)
    assert expected.min() == 0 and expected.max() == 255  # the whole range, not a black sheet
    # What verl would have made of the float file itself: almost black (values clip to 0 or 1).
    assert np.asarray(Image.open(io.BytesIO(tiff(ramp))).convert("RGB")).max() <= 1


def test_float_image_on_the_eight_bit_scale_is_rounded():
    values = (np.arange(12 * 20).reshape(12, 20) * 1.0625 + 0.25).astype(np.float32)  # 0.25 .. 254.19
    record = convert_row(raw([tiff(values)]), SPEC)
    assert np.array_equal(np.asarray(written_image(record)), np.rint(values.astype(np.float64)).astype(np.uint8))


def test_float_pil_input_is_converted_by_the_same_rule_before_encoding():
    ramp = normalised_ramp()
    from_pil = convert_row(raw([Image.fromarray(ramp)]), SPEC)
    from_file = convert_row(raw([tiff(ramp)]), SPEC)
    assert written_image(from_pil).mode == "L"
    assert np.array_equal(np.asarray(written_image(from_pil)), np.asarray(written_image(from_file)))


def test_masks_of_a_float_image_are_drawn_on_the_converted_image():
    ramp = normalised_ramp()
    record = convert_row(raw([tiff(ramp)]), MASKED_SPEC)  # ratio 0: the masked copy is the converted image
    aug = np.asarray(written_image(record, "images_aug"))
    assert aug.shape == (30, 40, 3)
    for channel in range(3):
        assert np.array_equal(aug[..., channel], np.asarray(written_image(record)))


@pytest.mark.parametrize(
    ("values", "detail"),
    [
        (np.array([[0.5, np.nan], [0.1, 0.2]], dtype=np.float32), "mode F with 1 NaN or infinite value(s)"),
        (np.array([[0.5, np.inf], [-np.inf, 0.2]], dtype=np.float32), "mode F with 2 NaN or infinite value(s)"),
        (np.array([[0.0, 300.5], [1.0, 2.0]], dtype=np.float32), "mode F with values in [0, 300.5], outside [0, 255]"),
        (np.array([[-0.5, 0.5], [1.0, 0.0]], dtype=np.float32), "mode F with values in [-0.5, 1], outside [0, 255]"),
        (np.array([[0, 70000], [1, 2]], dtype=np.int32), "mode I with values in [0, 70000], outside the 16-bit"),
        (np.array([[-1, 7], [1, 2]], dtype=np.int32), "mode I with values in [-1, 7], outside the 16-bit"),
    ],
)
def test_values_without_a_rule_skip_the_row_with_their_own_reason(values, detail):
    for entry in (tiff(values), Image.fromarray(values), {"bytes": tiff(values), "path": "maps/depth.tif"}):
        result = convert_row(raw([entry]), SPEC)
        assert isinstance(result, Skip) and result.reason == "image_values_out_of_range", result
        assert result.detail.startswith("image 0") and detail in result.detail
    assert "(maps/depth.tif)" in result.detail  # the image's path, when the source has one


def test_the_command_writes_or_skips_every_float_row_and_says_why(tmp_path):
    ramp = normalised_ramp()
    rows = [
        {"id": "f0", "problem": "<image>A", "answer": "1", "images": [{"bytes": tiff(ramp), "path": "f0.tif"}]},
        {"id": "f1", "problem": "<image>B", "answer": "2", "images": [{"bytes": tiff(ramp * 300), "path": None}]},
        {"id": "f2", "problem": "<image>C", "answer": "3", "images": [fx.image(20, 12, 1)]},
        {"id": "i3", "problem": "<image>D", "answer": "4", "images": [{"bytes": tiff(np.full((4, 4), -3, np.int32))}]},
    ]
    source = fx.write_parquet(tmp_path / "wide.parquet", rows)
    out = tmp_path / "out"
    assert virl39k.main(["--source", str(source), "--out", str(out), "--precompute-masks"]) == 0
    summary = json.loads((out / "virl39k_train.summary.json").read_text())
    assert summary["rows_in"] == 4 and summary["rows_written"] == 2
    assert summary["skipped_by_reason"] == {"image_values_out_of_range": 2}
    skipped = [json.loads(line) for line in (out / "virl39k_train.skipped.jsonl").read_text().splitlines()]
    assert [(s["index"], s["id"], s["reason"]) for s in skipped] == [
        (1, "f1", "image_values_out_of_range"),
        (3, "i3", "image_values_out_of_range"),
    ]
    records = fx.read_parquet(out / "virl39k_train.parquet")
    assert [r["extra_info"]["id"] for r in records] == ["f0", "f2"]
    first = Image.open(io.BytesIO(records[0]["images"][0]["bytes"]))
    assert first.mode == "L" and records[0]["images"][0]["path"] == "f0.tif"
    assert np.array_equal(np.asarray(first), np.rint(ramp.astype(np.float64) * 255).astype(np.uint8))


def test_training_conversion_mirrors_verl_and_warns_once_about_clipped_images(monkeypatch, caplog):
    """The masked pass converts as verl does (a clipped float image stays clipped), and says so once."""
    monkeypatch.setattr(image_rgb, "_warned_clipped", False)
    ramp = Image.open(io.BytesIO(tiff(normalised_ramp())))
    with caplog.at_level(logging.WARNING, logger=image_rgb.__name__):
        first = to_rgb(ramp)
        to_rgb(ramp)
        to_rgb(Image.fromarray(np.full((4, 4), 7.0, np.float32)))  # whole values in 0..255: nothing lost
    assert np.array_equal(np.asarray(first), np.asarray(ramp.convert("RGB")))
    warnings = [record.getMessage() for record in caplog.records if record.name == image_rgb.__name__]
    assert len(warnings) == 1 and "mode F" in warnings[0] and "docs/data.md" in warnings[0]


def test_clipping_is_detected_only_where_verl_loses_values():
    def clipped(values):
        return image_rgb.clipped_by_rgb_conversion(Image.fromarray(values))

    assert not clipped(np.full((2, 2), 200, np.int32)) and clipped(np.full((2, 2), 256, np.int32))
    assert not clipped(np.full((2, 2), 255.0, np.float32)) and clipped(np.full((2, 2), 0.5, np.float32))
    assert not clipped(np.full((2, 2), 9, np.uint8))
