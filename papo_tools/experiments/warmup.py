"""Supervised warm-up of the tiny model on the answer FORMAT, never on the answers.

A random tiny model writes random bytes, so every rollout scores about the same and RL has little to
work with. Before RL the experiment teaches it, with plain torch next-token cross-entropy, to answer
a task prompt with one digit and the end-of-turn token. The target digit of each example is drawn
uniformly from the task's answer digits, independently of the image, so after the warm-up the
model answers in the right format at about chance accuracy (1 / number of digits) and its answers do
not depend on the image: whatever image dependence appears later is learned by RL.

Inputs go through the model directory's own tokenizer chat template and processor, i.e. the same
token layout as verl's rollout (``<|vision_start|>``, one ``<|image_pad|>`` per merged visual token,
``<|vision_end|>``, the question, ``<|im_start|>assistant\\n``).
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from papo_tools.demo.task import make_rows
from papo_tools.demo.tiny_model import load_tiny_model, save_tiny_qwen2_5_vl
from papo_tools.experiments.task import ANSWER_DIGITS, TASK_CONFIG


@dataclass(frozen=True)
class WarmupConfig:
    """Warm-up optimisation settings (AdamW on all weights, vision tower included)."""

    steps: int = 40
    batch_size: int = 16
    lr: float = 3e-3
    num_rows: int = 256  # distinct images the warm-up draws from (split "warmup", never trained on by RL)


def _messages(row: dict) -> list[dict]:
    text = row["prompt"][0]["content"].replace("<image>", "")
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _batch(rows: list[dict], digits: list[str], tokenizer, processor) -> dict[str, torch.Tensor]:
    """Model inputs and labels (-100 except on the answer digit and ``<|im_end|>``)."""
    prompts = [
        tokenizer.apply_chat_template(_messages(row), tokenize=False, add_generation_prompt=True) for row in rows
    ]
    images = [Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB") for row in rows]
    texts = [prompt + digit + tokenizer.eos_token for prompt, digit in zip(prompts, digits, strict=True)]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    labels = torch.full_like(inputs["input_ids"], -100)
    # Every prompt has the same length (byte tokenizer, equal-length colour names), no padding.
    answer_len = 2  # the digit byte and <|im_end|>
    labels[:, -answer_len:] = inputs["input_ids"][:, -answer_len:]
    inputs["labels"] = labels
    return dict(inputs)


RECORD = "warmup.json"  # written into the model directory: seed, config and losses


def warm_up_model(model_dir: Path, seed: int, config: WarmupConfig = WarmupConfig()) -> list[float]:
    """Build the tiny Qwen2.5-VL in ``model_dir`` (weights from ``seed``) and warm it up in place.

    A directory already holding a warm-up of the same seed and config is reused as it is.

    Returns:
        The cross-entropy (nats per answer token) of every warm-up step; it falls from about
        ln(vocab) = 5.6 towards ln(len(ANSWER_DIGITS)) / 2 (the digit is unpredictable by design,
        the end-of-turn token is not).
    """
    record_path = Path(model_dir) / RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record["seed"] == seed and record["config"] == asdict(config):
            return record["losses"]
    save_tiny_qwen2_5_vl(model_dir, seed=seed)
    model, tokenizer, processor = load_tiny_model(model_dir)
    rows = make_rows(config.num_rows, "warmup", seed, TASK_CONFIG)
    rng = random.Random(f"warmup:{seed}")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(config.steps):
        batch_rows = rng.sample(rows, config.batch_size)
        digits = [rng.choice(ANSWER_DIGITS) for _ in batch_rows]
        loss = model(**_batch(batch_rows, digits, tokenizer, processor)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    model.save_pretrained(model_dir)
    record_path.write_text(json.dumps({"seed": seed, "config": asdict(config), "losses": losses}))
    return losses
