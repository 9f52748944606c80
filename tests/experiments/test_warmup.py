"""The warm-up: trains on the answer format, with the true count as target for a chosen share of examples."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys

import pytest
import torch
from PIL import Image

from papo_tools.demo.task import make_rows
from papo_tools.demo.tiny_model import load_tiny_model
from papo_tools.experiments.task import ANSWER_DIGITS, BACKGROUND, TASK_CONFIG
from papo_tools.experiments.warmup import _batch, answer_accuracy, target_digits


def test_labels_cover_only_the_answer_digit_and_end_of_turn(tiny_model_bundle):
    _, tokenizer, processor = tiny_model_bundle
    rows = make_rows(3, "warmup", 0, TASK_CONFIG)
    batch = _batch(rows, ["1", "3", "2"], tokenizer, processor)
    for labels, digit in zip(batch["labels"], ["1", "3", "2"], strict=True):
        kept = labels[labels != -100].tolist()
        assert tokenizer.decode(kept) == digit + "<|im_end|>"


def _warm_up_in_fresh_process(model_dir, steps: int) -> tuple[list[float], float]:
    """``warm_up_model`` in a fresh process, as the experiment runs it: the plain HF model, which
    verl's engine patches class-wide once any test in this process has built a worker."""
    code = (
        "import json, sys\n"
        "from papo_tools.experiments.warmup import WarmupConfig, warm_up_model\n"
        f"result = warm_up_model(sys.argv[1], seed=0, config=WarmupConfig(steps={steps}, batch_size=8))\n"
        "print(json.dumps([result.losses, result.start_accuracy]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses, start_accuracy = json.loads(result.stdout.strip().splitlines()[-1])
    return losses, start_accuracy


def test_warm_up_lowers_the_answer_loss_and_saves_a_loadable_model(tmp_path):
    losses, start_accuracy = _warm_up_in_fresh_process(tmp_path / "model", steps=8)
    assert len(losses) == 8
    assert 0.0 < start_accuracy < 1.0
    assert losses[-1] < losses[0] - 1.0  # from about ln(272) = 5.6 nats
    model, _, _ = load_tiny_model(tmp_path / "model")
    assert model is not None
    # The same seed and config reuse the warmed-up directory; another config warms up afresh.
    weights = tmp_path / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert _warm_up_in_fresh_process(tmp_path / "model", steps=8) == (losses, start_accuracy)
    assert weights.stat().st_mtime_ns == stamp
    assert len(_warm_up_in_fresh_process(tmp_path / "model", steps=2)[0]) == 2
    assert weights.stat().st_mtime_ns != stamp


def test_answer_digits_are_the_task_answers():
    answers = {row["reward_model"]["ground_truth"] for row in make_rows(64, "train", 0, TASK_CONFIG)}
    assert answers == set(ANSWER_DIGITS)


def test_target_digits_are_the_truth_at_fraction_one_and_image_blind_at_zero():
    rows = make_rows(300, "warmup", 0, TASK_CONFIG)
    truths = [row["reward_model"]["ground_truth"] for row in rows]
    assert target_digits(rows, 1.0, random.Random(0)) == truths
    blind = target_digits(rows, 0.0, random.Random(0))
    agreement = sum(t == d for t, d in zip(truths, blind, strict=True)) / len(rows)
    assert abs(agreement - 1 / len(ANSWER_DIGITS)) < 0.08  # chance: the targets ignore the image
    assert set(blind) == set(ANSWER_DIGITS)


def test_answer_accuracy_is_the_probability_of_the_true_digit_after_the_prompt(tiny_model_bundle):
    model, tokenizer, processor = tiny_model_bundle
    rows = make_rows(4, "warmup_probe", 0, TASK_CONFIG)
    expected = []
    for row in rows:  # independently: the prompt alone, the next-token distribution at its end
        inputs = _batch([row], ["1"], tokenizer, processor)
        del inputs["labels"]
        prompt_len = inputs["input_ids"].shape[1] - 2  # less the digit and <|im_end|>
        inputs = {
            k: (v[:, :prompt_len] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
            for k, v in inputs.items()
        }
        with torch.no_grad():
            probs = model(**inputs).logits[0, -1].float().softmax(-1)
        digit_id = tokenizer.convert_tokens_to_ids(row["reward_model"]["ground_truth"])
        expected.append(float(probs[digit_id]))
    assert answer_accuracy(model, tokenizer, processor, rows) == pytest.approx(sum(expected) / len(expected), rel=1e-4)


def test_task_images_sit_on_the_processors_mean_colour(tiny_model_bundle):
    _, _, processor = tiny_model_bundle
    row = make_rows(1, "train", 0, TASK_CONFIG)[0]
    image = Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB")
    assert image.getpixel((0, 0)) == BACKGROUND  # the corner: no shape reaches it
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    normalised = [(value / 255 - m) / s for value, m, s in zip(BACKGROUND, mean, std, strict=True)]
    assert max(abs(v) for v in normalised) < 0.01  # an empty image is about 0 to the vision tower


def test_a_target_accuracy_stops_the_warm_up_at_the_first_probe_that_reaches_it(tmp_path):
    code = (
        "import json, sys\n"
        "from papo_tools.experiments.warmup import WarmupConfig, warm_up_model\n"
        "config = WarmupConfig(steps=20, batch_size=4, target_accuracy=0.0, probe_every=3)\n"
        "result = warm_up_model(sys.argv[1], seed=0, config=config)\n"
        "print(json.dumps([len(result.losses), result.probes, result.start_accuracy]))\n"
    )
    command = [sys.executable, "-c", code, str(tmp_path / "m")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps, probes, start_accuracy = json.loads(done.stdout.strip().splitlines()[-1])
    assert steps == 3  # any accuracy reaches 0: the first probe, after step 3, stops it
    assert [step for step, _ in probes] == [3]
    assert probes[0][1] == pytest.approx(start_accuracy)  # the probe saw the weights that were saved
