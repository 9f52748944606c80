"""Prompts of the demo counting task as verl's agent loop sends them to a rollout server.

Test support: importable as ``demo_prompts`` once ``tests/support`` is on ``sys.path``
(``tests/conftest.py`` puts it there).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from PIL import Image


def demo_prompt(processor: Any, row: dict) -> tuple[list[int], list[Image.Image]]:
    """A row of the demo parquet -> ``(prompt ids with the image pads expanded, images)``.

    Args:
        processor: the model's multimodal processor (chat template, image processor).
        row: one record of ``papo_tools.demo.task.write_demo_dataset``'s parquet (one image).
    """
    image = Image.open(BytesIO(row["images"][0]["bytes"])).convert("RGB")
    text = row["prompt"][0]["content"].replace("<image>", "")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[chat], images=[image], return_tensors="pt")
    return inputs["input_ids"][0].tolist(), [image]
