"""``PAPO_MASK_LOG_DIR``: off by default; on, one line per masked row with digests any rank reproduces.

The rows are masked by the real :class:`MaskedInputBuilder` on the tiny Qwen2.5-VL processor's
``pixel_values``; the digests are checked against SHA-256 computed here from the tensors' bytes.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from recipe.papo.config import PapoConfig
from recipe.papo.mask_log import MASK_LOG_ENV, digest
from recipe.papo.masked_inputs import MaskedInputBuilder


def row_inputs(processor, seed: int) -> dict:
    """One row's ``multi_modal_inputs`` of a random 56x56 picture, through the model's processor."""
    picture = Image.fromarray(np.random.default_rng(seed).integers(1, 256, (56, 56, 3), dtype=np.uint8))
    out = processor.image_processor(images=[picture], return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def sha256_16(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def log_lines(folder) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_digest_is_the_sha256_of_the_tensor_bytes():
    values = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert digest(values) == sha256_16(values.numpy())
    assert digest(values.t()) == sha256_16(values.t().numpy())  # non-contiguous: its logical order
    assert digest(torch.tensor([1.0], dtype=torch.bfloat16)) == hashlib.sha256(b"\x80\x3f").hexdigest()[:16]


def test_off_without_the_variable(tiny_processor, tmp_path, monkeypatch):
    monkeypatch.delenv(MASK_LOG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    MaskedInputBuilder(PapoConfig(mask_ratio=0.5), tiny_processor).mask_row(row_inputs(tiny_processor, 0), "a", 1)
    assert list(tmp_path.rglob("*")) == []


def test_every_rank_logs_the_same_digests_for_a_prompt(tiny_processor, tmp_path, monkeypatch):
    folder = tmp_path / "masks"
    monkeypatch.setenv(MASK_LOG_ENV, str(folder))
    inputs = {"a": row_inputs(tiny_processor, 1), "b": row_inputs(tiny_processor, 2)}
    masked = {}
    for rank in (0, 1):  # two builders, as on two ranks, masking the same prompts
        monkeypatch.setenv("RANK", str(rank))
        builder = MaskedInputBuilder(PapoConfig(mask_ratio=0.5), tiny_processor)
        for uid, row in inputs.items():
            masked[rank, uid] = builder.mask_row(row, uid, 3)["pixel_values"]
    lines = log_lines(folder)
    assert sorted(path.name.split("_pid")[0] for path in folder.glob("*.jsonl")) == ["masks_rank0", "masks_rank1"]
    assert [(line["rank"], line["uid"], line["step"]) for line in lines] == [
        (0, "a", 3),
        (0, "b", 3),
        (1, "a", 3),
        (1, "b", 3),
    ]
    for line in lines:
        original, result = inputs[line["uid"]]["pixel_values"], masked[line["rank"], line["uid"]]
        assert line["pixels"] == sha256_16(original.numpy())
        assert line["masked"] == sha256_16(result.numpy())
        assert line["rows"] == original.shape[0]
        changed = sum(not torch.equal(a, b) for a, b in zip(original, result, strict=True))
        assert line["rows_blackened"] == changed > 0
        assert line["node_id"] is None  # outside Ray
    digests = {(line["rank"], line["uid"]): (line["pixels"], line["masked"]) for line in lines}
    assert digests[0, "a"] == digests[1, "a"] and digests[0, "b"] == digests[1, "b"]
    assert digests[0, "a"][1] != digests[0, "b"][1]  # another prompt, another mask


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_rows_blackened_counts_the_rows_masking_changed(tiny_processor, tmp_path, monkeypatch, ratio):
    monkeypatch.setenv(MASK_LOG_ENV, str(tmp_path))
    row = row_inputs(tiny_processor, 4)
    MaskedInputBuilder(PapoConfig(mask_ratio=ratio), tiny_processor).mask_row(row, "a", 1)
    (line,) = log_lines(tmp_path)
    assert line["rows_blackened"] == (row["pixel_values"].shape[0] if ratio else 0)
    assert (line["pixels"] == line["masked"]) == (ratio == 0.0)
