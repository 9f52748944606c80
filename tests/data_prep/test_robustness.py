"""Bad inputs of issue 11: 16-bit images, NaN / inf answers, duplicate ids, transparent images under
--precompute-masks, --prompt-template, and reruns interrupted by SIGTERM / SIGINT."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import data_prep_fixtures as fx
import numpy as np
import pytest
from PIL import Image
from user_env import user_env

from data_prep import virl39k
from data_prep.rows import RawRow, RowSpec, Skip, convert_row
from recipe.papo.image_rgb import to_rgb
from recipe.papo.prompt import DEFAULT_PROMPT_TEMPLATE

REPO = Path(__file__).resolve().parents[2]
SPEC = RowSpec(data_source="papo/virl39k", split="train", benchmark="virl39k", group=None, ability="math")


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def raw(answer="3", images=None, index=0, row_id="r0", question="<image>Find x."):
    return RawRow(index=index, id=row_id, question=question, answer=answer, images=images)


def run_virl39k(tmp_path, rows, *flags) -> tuple[list[dict], dict]:
    source = fx.write_parquet(tmp_path / "v.parquet", rows)
    out = tmp_path / "out"
    assert virl39k.main(["--source", str(source), "--out", str(out), *map(str, flags)]) == 0
    summary = json.loads((out / "virl39k_train.summary.json").read_text())
    return fx.read_parquet(out / "virl39k_train.parquet"), summary


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_images_are_scaled_to_eight_bits_as_training_reads_them(mode):
    ramp = np.arange(40 * 30).reshape(30, 40) * 54 + 1  # 1 .. 64747
    picture = Image.fromarray(ramp.astype(np.uint16 if mode == "I;16" else np.int32))
    assert picture.mode == mode
    record = convert_row(raw(images=[encoded(picture, "PNG" if mode == "I;16" else "TIFF")]), SPEC)
    written = Image.open(io.BytesIO(record["images"][0]["bytes"]))
    seen_by_training = np.asarray(to_rgb(written))  # what verl's qwen_vl_utils conversion makes of it
    expected = np.rint(ramp * 255 / 65535).astype(np.uint8)
    assert written.mode == "L"
    for channel in range(3):
        assert np.array_equal(seen_by_training[..., channel], expected)
    assert (seen_by_training == 255).mean() < 0.01  # not saturated to white


def test_sixteen_bit_masks_come_from_the_scaled_image():
    from data_prep.images import MaskOptions

    ramp = (np.arange(24 * 16).reshape(16, 24) * 170).astype(np.uint16)
    spec = RowSpec(**{**SPEC.__dict__, "masks": MaskOptions(ratio=0.0, patch_size=4, seed=0)})
    record = convert_row(raw(images=[encoded(Image.fromarray(ramp))]), spec)
    aug = np.asarray(Image.open(io.BytesIO(record["images_aug"][0]["bytes"])))
    assert np.array_equal(aug[..., 0], np.rint(ramp.astype(np.int64) * 255 / 65535).astype(np.uint8))


def test_out_of_range_integer_image_is_skipped_with_a_reason():
    values = np.full((8, 8), 70000, dtype=np.int32)
    result = convert_row(raw(images=[encoded(Image.fromarray(values), "TIFF")]), SPEC)
    assert isinstance(result, Skip) and result.reason == "image_values_out_of_range"
    assert "image 0" in result.detail and "values in [70000, 70000], outside the 16-bit range" in result.detail


@pytest.mark.parametrize(
    ("answer", "reason", "detail"),
    [
        (math.nan, "missing_answer", "NaN"),
        (np.float64("nan"), "missing_answer", "NaN"),
        (math.inf, "invalid_answer", "inf"),
        (-math.inf, "invalid_answer", "-inf"),
        (" \t\n", "missing_answer", "answer is"),
    ],
)
def test_nan_inf_and_blank_answers_are_skipped(answer, reason, detail):
    result = convert_row(raw(answer=answer, images=[fx.png_bytes()]), SPEC)
    assert isinstance(result, Skip) and result.reason == reason and detail in result.detail


def test_duplicate_ids_are_reported_and_get_distinct_masks(tmp_path, capsys):
    picture = fx.image(24, 24, 5)
    rows = [
        {"id": "dup", "problem": "<image>A", "answer": "1", "images": [picture]},
        {"id": "other", "problem": "<image>B", "answer": "2", "images": [picture]},
        {"id": "dup", "problem": "<image>A", "answer": "1", "images": [picture]},
        {"id": "dup", "problem": "<image>C", "answer": "3", "images": [picture]},
    ]
    records, summary = run_virl39k(tmp_path, rows, "--precompute-masks", "--patch-size", 4)
    assert summary["duplicate_id_rows"] == 2
    assert summary["duplicate_id_examples"] == [
        {"id": "dup", "first_index": 0, "index": 2},
        {"id": "dup", "first_index": 0, "index": 3},
    ]
    printed = capsys.readouterr().out
    assert "duplicate ids" in printed and "'dup' at rows 0 and 2" in printed
    masks = [record["images_aug"][0]["bytes"] for record in records]
    assert len(records) == 4 and len(set(masks)) == 4, "rows sharing an id and an image must get distinct masks"


def test_precomputed_masks_composite_transparent_pixels_on_white(tmp_path):
    from data_prep.images import MaskOptions

    rgba = np.zeros((12, 16, 4), dtype=np.uint8)
    rgba[:, :8] = (200, 10, 10, 255)  # opaque red left half, fully transparent (black) right half
    spec = RowSpec(**{**SPEC.__dict__, "masks": MaskOptions(ratio=0.0, patch_size=4, seed=0)})
    record = convert_row(raw(images=[encoded(Image.fromarray(rgba))]), spec)
    aug = np.asarray(Image.open(io.BytesIO(record["images_aug"][0]["bytes"])))
    assert (aug[:, 8:] == 255).all(), "transparent pixels must be white, as qwen_vl_utils converts the original"
    assert (aug[:, :8] == (200, 10, 10)).all()


def test_prompt_template_file_replaces_the_default(tmp_path):
    template = tmp_path / "prompt.txt"
    template.write_text("Question: {question}\nPut the answer in \\boxed{}.\n")
    rows = [{"id": "q", "problem": "  <image>What is 2+2?  ", "answer": "4", "images": [fx.image()]}]
    records, summary = run_virl39k(tmp_path, rows, "--prompt-template", template)
    content = records[0]["prompt"][0]["content"]
    assert content == "Question: <image>What is 2+2?\nPut the answer in \\boxed{}."
    assert summary["options"]["prompt_template"] == "Question: {question}\nPut the answer in \\boxed{}."
    default, _ = run_virl39k(tmp_path / "default", rows)
    assert default[0]["prompt"][0]["content"] == DEFAULT_PROMPT_TEMPLATE.replace("{question}", "<image>What is 2+2?")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Answer in \\boxed{}.", "no {question} placeholder"),
        ("{question} {answer} {image}", "unknown placeholder(s) {answer}, {image}"),
    ],
)
def test_bad_prompt_template_fails_at_start_naming_the_file(tmp_path, capsys, text, message):
    template = tmp_path / "bad.txt"
    template.write_text(text)
    source = fx.write_parquet(tmp_path / "v.parquet", [])
    code = virl39k.main(["--source", str(source), "--out", str(tmp_path / "out"), "--prompt-template", str(template)])
    error = capsys.readouterr().err
    assert code == 2 and message in error and str(template) in error
    assert not (tmp_path / "out").exists()


def test_missing_prompt_template_file_is_a_clear_error(tmp_path, capsys):
    source = fx.write_parquet(tmp_path / "v.parquet", [])
    code = virl39k.main(["--source", str(source), "--out", str(tmp_path / "o"), "--prompt-template", "nope.txt"])
    assert code == 2 and "--prompt-template nope.txt: cannot read it" in capsys.readouterr().err


# --- interrupted reruns -------------------------------------------------------------------------


def outputs(out: Path) -> dict[str, bytes]:
    """The visible outputs (through their links) and the version folders behind them, by name."""
    visible = {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.name != ".data_prep"}
    versions = sorted(path.name for path in (out / ".data_prep" / "virl39k_train").iterdir())
    return {**visible, "versions": " ".join(versions).encode()}


def signal_state(pid: int) -> str:
    """The signal lines of ``/proc/<pid>/status`` (pending, blocked, ignored, caught masks), or why not."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as error:
        return f"no /proc status: {error}"
    return " ".join(line for line in status.splitlines() if line.startswith(("Sig", "ShdPnd", "Threads")))


@pytest.mark.parametrize(("sig", "num_proc", "exit_code"), [(signal.SIGTERM, 1, 143), (signal.SIGINT, 2, 130)])
def test_interrupted_rerun_leaves_the_previous_outputs_untouched(tmp_path, sig, num_proc, exit_code):
    rows, _, _ = fx.problem_rows()
    out = tmp_path / "out"
    small = fx.write_parquet(tmp_path / "small.parquet", rows)
    assert virl39k.main(["--source", str(small), "--out", str(out)]) == 0
    before = outputs(out)
    visible = {"virl39k_train.parquet", "virl39k_train.skipped.jsonl", "virl39k_train.summary.json"}
    assert set(before) == visible | {"versions"} and before["versions"] == b"1 current"

    # A long rerun: many rows, one row per batch and row group, so it is mid-way for seconds.
    many = [{**rows[i % 9], "id": f"m{i}"} for i in range(20000)]
    big = fx.write_parquet(tmp_path / "big.parquet", many)
    command = [sys.executable, "-m", "data_prep.virl39k", "--source", str(big), "--out", str(out)]
    command += ["--row-group-size", "1", "--num-proc", str(num_proc)]
    # As from a terminal: a runner started in the background (nohup, `cmd &`) passes SIGINT on as
    # ignored, and Python then never raises KeyboardInterrupt; restore the default in the child.
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    partial = out / ".data_prep" / "virl39k_train" / "2" / "virl39k_train.parquet"  # the rerun's version folder
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 0) and process.poll() is None:
        assert time.monotonic() < deadline, "the rerun never started writing"
        time.sleep(0.02)
    assert process.poll() is None, f"the rerun ended before it could be interrupted: {process.communicate()}"
    time.sleep(0.3)  # mid-way: rows written to the staging files
    masks_at_kill = signal_state(process.pid)
    os.kill(process.pid, sig)
    time.sleep(0.2)
    masks_after_kill = signal_state(process.pid)
    _, stderr = process.communicate(timeout=120)
    # Once seen in a loaded clean-clone run (SIGINT, 2 workers): the rerun finished with 0 as if the
    # signal never came; the child's signal masks at and after the kill say where it went.
    assert process.returncode == exit_code, (masks_at_kill, masks_after_kill, stderr[-2000:])
    assert "interrupted" in stderr and "keeps its previous outputs" in stderr
    assert outputs(out) == before, "the previous parquet, skip log and summary must be untouched, nothing else left"
