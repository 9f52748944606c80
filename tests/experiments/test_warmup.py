"""The format warm-up: trains on the answer format with image-independent target digits."""

from __future__ import annotations

import json
import subprocess
import sys

from papo_tools.demo.task import make_rows
from papo_tools.demo.tiny_model import load_tiny_model
from papo_tools.experiments.task import ANSWER_DIGITS, TASK_CONFIG
from papo_tools.experiments.warmup import _batch


def test_labels_cover_only_the_answer_digit_and_end_of_turn(tiny_model_bundle):
    _, tokenizer, processor = tiny_model_bundle
    rows = make_rows(3, "warmup", 0, TASK_CONFIG)
    batch = _batch(rows, ["1", "3", "2"], tokenizer, processor)
    for labels, digit in zip(batch["labels"], ["1", "3", "2"], strict=True):
        kept = labels[labels != -100].tolist()
        assert tokenizer.decode(kept) == digit + "<|im_end|>"


def _warm_up_in_fresh_process(model_dir, steps: int) -> list[float]:
    """``warm_up_model`` in a fresh process, as the experiment runs it: the plain HF model, which
    verl's engine patches class-wide once any test in this process has built a worker."""
    code = (
        "import json, sys\n"
        "from papo_tools.experiments.warmup import WarmupConfig, warm_up_model\n"
        f"losses = warm_up_model(sys.argv[1], seed=0, config=WarmupConfig(steps={steps}, batch_size=8))\n"
        "print(json.dumps(losses))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_warm_up_lowers_the_answer_loss_and_saves_a_loadable_model(tmp_path):
    losses = _warm_up_in_fresh_process(tmp_path / "model", steps=8)
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 1.0  # from about ln(272) = 5.6 nats
    model, _, _ = load_tiny_model(tmp_path / "model")
    assert model is not None
    # The same seed and config reuse the warmed-up directory; another config warms up afresh.
    weights = tmp_path / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert _warm_up_in_fresh_process(tmp_path / "model", steps=8) == losses
    assert weights.stat().st_mtime_ns == stamp
    assert len(_warm_up_in_fresh_process(tmp_path / "model", steps=2)) == 2
    assert weights.stat().st_mtime_ns != stamp


def test_answer_digits_are_the_task_answers():
    answers = {row["reward_model"]["ground_truth"] for row in make_rows(64, "train", 0, TASK_CONFIG)}
    assert answers == set(ANSWER_DIGITS)
