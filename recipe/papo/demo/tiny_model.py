"""Build a tiny random Qwen2.5-VL (model, tokenizer, processor) in code and save it to disk.

The result is the real ``Qwen2_5_VLForConditionalGeneration`` class with small sizes, a byte-level
tokenizer carrying the Qwen special tokens and a Qwen-style chat template, and the PIL Qwen2-VL
image processor. It is loaded back with the same ``from_pretrained`` calls a user's model goes
through (``AutoTokenizer``, ``AutoProcessor`` with ``trust_remote_code=True``, ``AutoConfig``,
``AutoModelForImageTextToText``). No network and no torchvision are needed.

Sizes (defaults): hidden 64, 2 text layers, vision depth 2, vocab 272 (256 bytes + 9 specials,
padded): a few hundred thousand parameters.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

# Qwen special tokens, in the order they get ids after the 256 byte tokens.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5-VL chat template without the default system turn (keeps CPU prompts short).
# Image content items become <|vision_start|><|image_pad|><|vision_end|>; the processor expands
# the single <|image_pad|> into one pad per merged visual token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PROCESSOR_MODULE = "processing_papo_tiny"


@dataclass(frozen=True)
class TinyQwenSizes:
    """Sizes of the tiny model. Pixel bounds are in pixels (height * width)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 16
    max_position_embeddings: int = 4096


def build_tiny_tokenizer():
    """Byte-level BPE tokenizer (no merges) with the Qwen special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    return tokenizer


def _token_ids(tokenizer) -> dict[str, int]:
    return {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}


def build_tiny_config(tokenizer, sizes: TinyQwenSizes = TinyQwenSizes()):
    """A ``Qwen2_5_VLConfig`` with small sizes whose special-token ids match ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    ids = _token_ids(tokenizer)
    vocab_size = ((len(tokenizer) + 15) // 16) * 16
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_key_value_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        # mrope_section sums to head_dim / 2 = (64 / 4) / 2 = 8.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(
        depth=sizes.vision_depth,
        hidden_size=sizes.vision_hidden_size,
        intermediate_size=sizes.vision_intermediate_size,
        num_heads=sizes.vision_num_heads,
        out_hidden_size=sizes.hidden_size,
        fullatt_block_indexes=[sizes.vision_depth - 1],
        window_size=112,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    return config


def build_tiny_image_processor(sizes: TinyQwenSizes = TinyQwenSizes()):
    """The PIL (torchvision-free) Qwen2-VL image processor with tiny pixel bounds."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=sizes.min_pixels, max_pixels=sizes.max_pixels)


def save_tiny_qwen2_5_vl(output_dir: str | Path, seed: int = 0, sizes: TinyQwenSizes = TinyQwenSizes()) -> Path:
    """Build the tiny model, tokenizer and processor and save them to ``output_dir``.

    Args:
        output_dir: directory to create (existing files are overwritten).
        seed: torch seed for the random weights.
        sizes: model and pixel sizes.

    Returns:
        The directory, loadable with ``from_pretrained(..., trust_remote_code=True)``.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = build_tiny_config(tokenizer, sizes)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)

    image_processor = build_tiny_image_processor(sizes)
    image_processor.save_pretrained(output_dir)

    shutil.copyfile(Path(__file__).with_name("remote_processor.py"), output_dir / f"{PROCESSOR_MODULE}.py")
    processor_config = {
        "processor_class": "Qwen2_5_VLProcessor",
        "auto_map": {"AutoProcessor": f"{PROCESSOR_MODULE}.Qwen2_5_VLProcessor"},
    }
    (output_dir / "processor_config.json").write_text(json.dumps(processor_config, indent=2))
    (output_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    _patch_json(output_dir / "preprocessor_config.json", {"processor_class": "Qwen2_5_VLProcessor"})
    _patch_json(output_dir / "tokenizer_config.json", {"processor_class": "Qwen2_5_VLProcessor"})
    return output_dir


def _patch_json(path: Path, updates: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(updates)
    path.write_text(json.dumps(data, indent=2))


def load_tiny_qwen2_5_vl(model_dir: str | Path):
    """Load (model, tokenizer, processor) through the same ``from_pretrained`` path as a user model."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    model_dir = str(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    return model, tokenizer, processor
