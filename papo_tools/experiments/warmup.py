"""Supervised warm-up of the tiny model: the answer format, plus a weak hint of the answers.

A random tiny model writes random bytes, so every rollout scores about the same and RL has little to
work with. Before RL the experiment teaches it, with plain torch next-token cross-entropy, to answer
a task prompt with one digit and the end-of-turn token. The target digit of a warm-up example is the
true count with probability ``answer_fraction`` and otherwise drawn uniformly from the task's answer
digits, independently of the image. At ``answer_fraction`` 0 the model learns the format only and
answers at chance (1 / number of digits) whatever the image. By default every target is true and the
warm-up stops as soon as a held-out probe's accuracy reaches a target a little above chance: a model
that already uses the image a little, from which GRPO's accuracy rises within a few dozen steps at
toy scale (docs/dynamics.md, "Set-up").

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
from papo_tools.demo.tiny_model import VLLM_SIZES, load_tiny_model, save_tiny_qwen2_5_vl
from papo_tools.experiments.task import ANSWER_DIGITS, TASK_CONFIG

# The tiny model's larger sizes (text hidden 128, the same as vLLM's smoke model): at the default
# hidden 64 not even 300 supervised steps on the true answers lift accuracy above chance (0.34 on
# held-out rows), at hidden 128 150 steps reach 0.58 (docs/dynamics.md, "warm-up").
MODEL_SIZES = VLLM_SIZES


@dataclass(frozen=True)
class WarmupConfig:
    """Warm-up settings (AdamW on all weights, vision tower included).

    With ``target_accuracy`` set, the warm-up probes :func:`answer_accuracy` on held-out rows every
    ``probe_every`` steps and stops at the first probe that reaches it (else after ``steps`` steps):
    the step at which this model's accuracy leaves chance differs between seeds (docs/dynamics.md).
    """

    steps: int = 300  # at most, with ``target_accuracy`` set
    batch_size: int = 16
    lr: float = 1e-3
    num_rows: int = 256  # distinct images the warm-up draws from (split "warmup", never trained on by RL)
    answer_fraction: float = 1.0  # share of examples whose target is the true count (else a uniform digit)
    target_accuracy: float | None = 0.4  # stop once the held-out probe reaches it; None: run all steps
    probe_every: int = 5


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


def target_digits(rows: list[dict], answer_fraction: float, rng: random.Random) -> list[str]:
    """Each row's warm-up target: its true count with probability ``answer_fraction``, else a uniform digit."""
    return [
        row["reward_model"]["ground_truth"] if rng.random() < answer_fraction else rng.choice(ANSWER_DIGITS)
        for row in rows
    ]


@torch.no_grad()
def answer_accuracy(model, tokenizer, processor, rows: list[dict]) -> float:
    """Mean probability of the true digit as the first answer token (softmax at temperature 1, in [0, 1]).

    The expected accuracy of a temperature-1 rollout over ``rows`` when every answer starts with its
    digit: the accuracy RL starts from. 1 / len(ANSWER_DIGITS) for a model that ignores the image.
    """
    truths = [row["reward_model"]["ground_truth"] for row in rows]
    inputs = _batch(rows, truths, tokenizer, processor)
    inputs.pop("labels")
    logits = model(**inputs).logits[:, -3].float()  # (rows, vocab): the position that predicts the digit
    truth_ids = inputs["input_ids"][:, -2]  # (rows,): the digit tokens
    return float(logits.softmax(-1).gather(1, truth_ids.unsqueeze(1)).mean())


RECORD = "warmup.json"  # written into the model directory: seed, config, losses and start accuracy
NUM_PROBE_ROWS = 96  # held-out rows (split "warmup_probe") of the start-accuracy probe


@dataclass(frozen=True)
class WarmupResult:
    """What a warm-up left behind.

    Attributes:
        losses: cross-entropy (nats per answer token) of every warm-up step; it falls from about
            ln(vocab) = 5.6 towards its floor (ln(len(ANSWER_DIGITS)) / 2 at ``answer_fraction`` 0).
        start_accuracy: :func:`answer_accuracy` of the warmed-up model on held-out rows.
        probes: ``[step, accuracy]`` of every probe on the way (empty without ``target_accuracy``).
    """

    losses: list[float]
    start_accuracy: float
    probes: list[list[float]]


def warm_up_model(model_dir: Path, seed: int, config: WarmupConfig = WarmupConfig()) -> WarmupResult:
    """Build the tiny Qwen2.5-VL in ``model_dir`` (weights from ``seed``) and warm it up in place.

    A directory already holding a warm-up of the same seed and config is reused as it is.
    """
    record_path = Path(model_dir) / RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record["seed"] == seed and record["config"] == asdict(config):
            return WarmupResult(record["losses"], record["start_accuracy"], record.get("probes", []))
    save_tiny_qwen2_5_vl(model_dir, seed=seed, sizes=MODEL_SIZES)
    model, tokenizer, processor = load_tiny_model(model_dir)
    rows = make_rows(config.num_rows, "warmup", seed, TASK_CONFIG)
    rng = random.Random(f"warmup:{seed}")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    probe = make_rows(NUM_PROBE_ROWS, "warmup_probe", seed, TASK_CONFIG)
    losses: list[float] = []
    probes: list[list[float]] = []
    for step in range(1, config.steps + 1):
        model.train()
        batch_rows = rng.sample(rows, config.batch_size)
        digits = target_digits(batch_rows, config.answer_fraction, rng)
        loss = model(**_batch(batch_rows, digits, tokenizer, processor)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if config.target_accuracy is not None and step % config.probe_every == 0:
            model.eval()
            probes.append([step, answer_accuracy(model, tokenizer, processor, probe)])
            if probes[-1][1] >= config.target_accuracy:
                break
    model.eval()
    # The last probe already scored the final weights when it stopped the warm-up.
    stopped_by_probe = bool(probes) and probes[-1][0] == len(losses)
    start_accuracy = probes[-1][1] if stopped_by_probe else answer_accuracy(model, tokenizer, processor, probe)
    result = WarmupResult(losses, start_accuracy, probes)
    model.save_pretrained(model_dir)
    record = {
        "seed": seed,
        "config": asdict(config),
        "losses": losses,
        "start_accuracy": result.start_accuracy,
        "probes": probes,
    }
    record_path.write_text(json.dumps(record))
    return result
