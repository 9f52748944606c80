"""Processors shipped inside a tiny demo model directory (loaded with ``trust_remote_code``).

This file is copied verbatim into a saved tiny model as ``processing_papo_tiny.py``; the model's
``processor_config.json`` names the class to load through ``auto_map``. It imports only
``transformers`` so the saved directory is self-contained.

Why it exists: ``AutoProcessor`` for Qwen2.5-VL, Qwen3-VL and Qwen3.5 builds a video processor (and
by default an image processor) that needs torchvision; there is no CPU torchvision wheel. These
subclasses keep the stock processing (same tokens, grid, normalisation) with the PIL image
processor and no video processor. The class names must stay ``Qwen2_5_VLProcessor`` and
``Qwen3VLProcessor``: verl's ``hf_processor`` picks the rope-index function by class name.
"""

from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import (
    Qwen2_5_VLProcessor as _StockQwen2_5_VLProcessor,
)
from transformers.models.qwen3_vl.processing_qwen3_vl import (
    Qwen3VLProcessor as _StockQwen3VLProcessor,
)
from transformers.processing_utils import ProcessorMixin


class Qwen2_5_VLProcessor(_StockQwen2_5_VLProcessor):
    """Qwen2.5-VL processor with the PIL image processor and no video processor."""

    # No ``video_processor`` argument: transformers derives the sub-processors it loads from the
    # ``__init__`` signature, and loading the video processor would import torchvision.
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


class Qwen3VLProcessor(_StockQwen3VLProcessor):
    """Qwen3-VL / Qwen3.5 processor with the PIL image processor and no video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.vision_start_token = getattr(tokenizer, "vision_start_token", "<|vision_start|>")
        self.vision_end_token = getattr(tokenizer, "vision_end_token", "<|vision_end|>")
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)
