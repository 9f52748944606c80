"""A tiny model that answers in the paper's format and gets part of the journey's questions right.

A random tiny model never writes ``<think> ... </think> ... \\boxed{...}``, so the PAPO reward would be 0
on every response: every advantage 0, every accuracy 0, and a table of zeros proves nothing about how
accuracies are computed. This module teaches the tiny Qwen2.5-VL (the real
``Qwen2_5_VLForConditionalGeneration`` with the smoke runs' sizes) one answer, with plain torch
next-token cross-entropy: to any question it replies :data:`RESPONSE` with the boxed digit 2 or 3,
each with probability one half, whatever the question and the image. The questions of the journey's
data (:mod:`papo_tools.journey.hub_copies`) have gold answers 1 to 4, so

* in training, a group of rollouts of a question whose answer is 2 or 3 mixes right (score 1.0) and wrong
  (0.1, format only) responses: non-zero advantages;
* in evaluation, a question whose answer is 2 or 3 scores about 0.5 avg@8 and one whose answer is 1 or 4
  scores 0: every benchmark of the copy lands strictly between 0 and 1.

Inputs go through the model folder's own chat template and processor, i.e. the token layout of verl's
rollout. The warm-up first runs ``short_steps`` steps on bare questions (about 40 tokens: cheap, and
enough to learn the answer), then continues on questions in the paper's prompt format
(:func:`recipe.papo.prompt.format_question`, about 250 tokens with this byte-level tokenizer): trained on
bare questions only, the model does not keep the answer after the long instruction (measured: the
answer's probability stays below 1e-15). It stops once held-out prompts in the paper's format give the
fixed part of the answer a probability of at least :data:`TARGET_FORMAT_PROBABILITY` (so most
temperature-1 samples keep the format) and each digit one in :data:`DIGIT_PROBABILITY_RANGE`: about 100
steps, one to three minutes on 2 CPU cores.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from papo_tools.demo.task import COLOURS
from papo_tools.demo.tiny_model import VLLM_SIZES, load_tiny_model, save_tiny_qwen2_5_vl
from papo_tools.journey.hub_copies import shapes_image
from recipe.papo.prompt import format_question

ANSWERS = ("2", "3")
RESPONSE = "<think>I count the shapes.</think> \\boxed{{{answer}}}"
TARGET_FORMAT_PROBABILITY = 0.8
DIGIT_PROBABILITY_RANGE = (0.3, 0.7)
RECORD = "scorer.json"  # written into the model folder: seed, settings, the probes on the way


@dataclass(frozen=True)
class ScorerSettings:
    """Warm-up settings (AdamW on every weight, vision tower included)."""

    short_steps: int = 50  # steps on bare questions before the paper's prompt format
    max_steps: int = 300
    batch_size: int = 4
    lr: float = 3e-3
    probe_every: int = 10
    probe_rows: int = 8


@dataclass(frozen=True)
class Probe:
    """The model's answer distribution on held-out prompts after ``step`` warm-up steps.

    Attributes:
        step: warm-up steps done.
        format_probability: mean over prompts of the probability of the response's fixed tokens
            (everything but the digit, end-of-turn token included), in [0, 1].
        digit_probability: mean probability of each digit of :data:`ANSWERS` at the digit's position.
    """

    step: int
    format_probability: float
    digit_probability: dict[str, float]

    @property
    def done(self) -> bool:
        low, high = DIGIT_PROBABILITY_RANGE
        return self.format_probability >= TARGET_FORMAT_PROBABILITY and all(
            low <= p <= high for p in self.digit_probability.values()
        )


# Words of the warm-up's random questions: the answer must not depend on the question's wording, and a
# model warmed up on one question template loses the answer format on another (seen: a suffix present in
# every warm-up question and absent from the data's took the format probability from 0.83 to near 0).
WORDS = (
    "how many shapes are there in the picture image figure count blue pink gold lime circles squares "
    "question item total together two of what is number answer give find a the this these"
).split()


def question_prompt(rng: random.Random, paper_format: bool = True) -> tuple[str, list[Image.Image]]:
    """A random question of 2 to 14 words with one or two rendered images, in the paper's prompt format or bare."""
    count = rng.choice((1, 2))
    colour = rng.choice(sorted(COLOURS))
    images = [Image.open(io.BytesIO(shapes_image(rng.randint(1, 4), colour, rng))) for _ in range(count)]
    placeholders = " ".join("<image>" for _ in images)
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14)))
    question = f"{placeholders}{words[0].upper()}{words[1:]}{rng.choice(('?', '.', ':', ''))}"
    return (format_question(question) if paper_format else question), images


def _messages(content: str) -> list[dict]:
    """The user turn as verl's dataset builds it: ``<image>`` placeholders become image items."""
    parts = content.split("<image>")
    items = []
    for index, segment in enumerate(parts):
        if index:
            items.append({"type": "image"})
        if segment:
            items.append({"type": "text", "text": segment})
    return [{"role": "user", "content": items}]


def _inputs(prompts: list[tuple[str, list[Image.Image]]], answers: list[str], processor) -> dict[str, torch.Tensor]:
    """Model inputs (right-padded) and labels: -100 everywhere but on each response and its end-of-turn token."""
    tokenizer = processor.tokenizer
    texts, images, response_lengths = [], [], []
    for (content, row_images), answer in zip(prompts, answers, strict=True):
        prompt = processor.apply_chat_template(_messages(content), tokenize=False, add_generation_prompt=True)
        response = RESPONSE.format(answer=answer) + tokenizer.eos_token
        texts.append(prompt + response)
        images += row_images
        response_lengths.append(len(tokenizer(response, add_special_tokens=False)["input_ids"]))
    inputs = dict(processor(text=texts, images=images, return_tensors="pt", padding=True))
    labels = torch.full_like(inputs["input_ids"], -100)
    lengths = inputs["attention_mask"].sum(-1)
    for row, (length, response_length) in enumerate(zip(lengths.tolist(), response_lengths, strict=True)):
        labels[row, length - response_length : length] = inputs["input_ids"][row, length - response_length : length]
    inputs["labels"] = labels
    return inputs


@torch.no_grad()
def probe(model, processor, prompts: list[tuple[str, list[Image.Image]]], step: int) -> Probe:
    """:class:`Probe` of ``model`` on ``prompts`` (teacher-forced on the answer :data:`ANSWERS[0]`)."""
    tokenizer = processor.tokenizer
    inputs = _inputs(prompts, [ANSWERS[0]] * len(prompts), processor)
    labels = inputs.pop("labels")
    log_probs = model(**inputs).logits.float().log_softmax(-1)[:, :-1]  # (rows, seq - 1, vocab)
    targets = labels[:, 1:]
    token_log_probs = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (rows, seq - 1)
    digit_ids = {digit: tokenizer.convert_tokens_to_ids(digit) for digit in ANSWERS}
    is_digit = targets == digit_ids[ANSWERS[0]]
    fixed = (targets != -100) & ~is_digit
    format_probability = (token_log_probs * fixed).sum(-1).exp().mean().item()
    digit_positions = log_probs[is_digit]  # (rows, vocab): the distributions at each row's digit
    digit_probability = {digit: digit_positions[:, token].exp().mean().item() for digit, token in digit_ids.items()}
    return Probe(step, format_probability, digit_probability)


def write_scorer(model_dir: Path, seed: int = 0, settings: ScorerSettings = ScorerSettings()) -> list[Probe]:
    """Build the tiny Qwen2.5-VL in ``model_dir`` (weights from ``seed``), warm it up in place and save it.

    Returns:
        The probes on the way; the last one is the saved model's (``done`` unless ``max_steps`` ran out).

    Raises:
        RuntimeError: the warm-up ran ``settings.max_steps`` steps without reaching the targets.
    """
    model_dir = Path(model_dir)
    save_tiny_qwen2_5_vl(model_dir, seed=seed, sizes=VLLM_SIZES)
    model, _, processor = load_tiny_model(model_dir)
    rng = random.Random(f"scorer:{seed}")
    held_out = [question_prompt(random.Random(f"scorer-probe:{seed}:{k}")) for k in range(settings.probe_rows)]
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    probes: list[Probe] = []
    for step in range(1, settings.max_steps + 1):
        model.train()
        paper_format = step > settings.short_steps
        prompts = [question_prompt(rng, paper_format) for _ in range(settings.batch_size)]
        loss = model(**_inputs(prompts, [rng.choice(ANSWERS) for _ in prompts], processor)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if paper_format and step % settings.probe_every == 0:
            model.eval()
            probes.append(probe(model, processor, held_out, step))
            if probes[-1].done:
                break
    if not probes or not probes[-1].done:
        raise RuntimeError(f"the scorer warm-up did not reach its targets in {settings.max_steps} steps: {probes[-1:]}")
    model.save_pretrained(model_dir)
    record = {"seed": seed, "settings": asdict(settings), "probes": [asdict(p) for p in probes]}
    (model_dir / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return probes
