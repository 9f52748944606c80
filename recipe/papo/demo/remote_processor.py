"""Processor shipped inside the tiny demo model directory (loaded with ``trust_remote_code``).

This file is copied verbatim into a saved tiny model as ``processing_papo_tiny.py``. It imports
only ``transformers`` so the saved directory is self-contained.

Why it exists: ``AutoProcessor`` for Qwen2.5-VL builds a video processor and the default image
processor, both of which need torchvision; there is no CPU torchvision wheel. This subclass keeps
the stock Qwen2.5-VL processing (same tokens, grid, normalisation) with the PIL image processor and
no video processor. The class name must stay ``Qwen2_5_VLProcessor``: verl's ``hf_processor`` picks
the rope-index function by class name.
"""

from transformers.processing_utils import ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor as _StockQwen2_5_VLProcessor


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
