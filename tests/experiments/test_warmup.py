"""The format warm-up: trains on the answer format with image-independent target digits."""

from __future__ import annotations

from recipe.papo.demo.task import make_rows
from recipe.papo.demo.tiny_model import load_tiny_model
from recipe.papo.experiments.task import ANSWER_DIGITS, TASK_CONFIG
from recipe.papo.experiments.warmup import WarmupConfig, _batch, warm_up_model


def test_labels_cover_only_the_answer_digit_and_end_of_turn(tiny_model_bundle):
    _, tokenizer, processor = tiny_model_bundle
    rows = make_rows(3, "warmup", 0, TASK_CONFIG)
    batch = _batch(rows, ["1", "3", "2"], tokenizer, processor)
    for labels, digit in zip(batch["labels"], ["1", "3", "2"], strict=True):
        kept = labels[labels != -100].tolist()
        assert tokenizer.decode(kept) == digit + "<|im_end|>"


def test_warm_up_lowers_the_answer_loss_and_saves_a_loadable_model(tmp_path):
    losses = warm_up_model(tmp_path / "model", seed=0, config=WarmupConfig(steps=8, batch_size=8))
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 1.0  # from about ln(272) = 5.6 nats
    model, _, _ = load_tiny_model(tmp_path / "model")
    assert model is not None
    # The same seed and config reuse the warmed-up directory; another config warms up afresh.
    weights = tmp_path / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert warm_up_model(tmp_path / "model", seed=0, config=WarmupConfig(steps=8, batch_size=8)) == losses
    assert weights.stat().st_mtime_ns == stamp
    assert len(warm_up_model(tmp_path / "model", seed=0, config=WarmupConfig(steps=2, batch_size=8))) == 2
    assert weights.stat().st_mtime_ns != stamp


def test_answer_digits_are_the_task_answers():
    answers = {row["reward_model"]["ground_truth"] for row in make_rows(64, "train", 0, TASK_CONFIG)}
    assert answers == set(ANSWER_DIGITS)
