"""Build a tiny random Qwen-VL (model, tokenizer, processor) in code and save it to disk.

One builder with a per-family table (:data:`TINY_FAMILIES`): Qwen2.5-VL, Qwen3-VL (dense) and
Qwen3.5 (dense). The result is the family's real ``*ForConditionalGeneration`` class with small
sizes, a byte-level tokenizer carrying the Qwen special tokens and a Qwen-style chat template, and
the family's stock processor classes (the ones its released checkpoints name: ``Qwen2VLImageProcessor``,
torchvision backend, with the family's patch layout and normalisation from
``recipe.papo.model_families``, and the family's video processor). It is loaded back with the same
``from_pretrained`` calls a user's model goes through (``AutoTokenizer``, ``AutoProcessor``,
``AutoConfig``, ``AutoModelForImageTextToText``), with no remote code. No network is needed.

Sizes (defaults): hidden 64, 2 text layers, vision depth 2, vocab 272 (256 bytes + 9 specials,
padded): a few hundred thousand parameters. :data:`VLLM_SIZES` doubles the text width for runs whose
rollout is vLLM (its CPU attention needs a head size of at least 32).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from recipe.papo.model_families import FAMILIES, ModelFamily

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


@dataclass(frozen=True)
class TinyQwenSizes:
    """Sizes of the tiny model. Pixel bounds are in pixels (height * width).

    ``min_pixels`` / ``max_pixels`` left ``None`` become ``min_tokens`` / ``max_tokens`` merged visual
    tokens of the family (a token covers 28x28 px for Qwen2.5-VL, 32x32 px for Qwen3-VL and Qwen3.5).
    ``linear_head_dim`` is the key and value head size of Qwen3.5's Gated DeltaNet layers.
    """

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    min_tokens: int = 4
    max_tokens: int = 16
    min_pixels: int | None = None
    max_pixels: int | None = None
    max_position_embeddings: int = 4096
    linear_head_dim: int = 16

    @property
    def mrope_section(self) -> list[int]:
        """mRoPE (temporal, height, width) split of the rotary half of a text head (sums to head_dim / 2)."""
        half = self.hidden_size // self.num_attention_heads // 2
        quarter = half // 4
        return [quarter, (half - quarter + 1) // 2, (half - quarter) // 2]

    def pixel_bounds(self, family: ModelFamily) -> tuple[int, int]:
        """``(min_pixels, max_pixels)`` for ``family``'s patch layout."""
        low = self.min_pixels if self.min_pixels is not None else self.min_tokens * family.token_pixels
        high = self.max_pixels if self.max_pixels is not None else self.max_tokens * family.token_pixels
        return low, high


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


# Text head size 32 (hidden 128 over 4 heads): the smallest vLLM's CPU attention takes. Gated DeltaNet head
# size 64: vLLM's CPU kernel (chunk_gated_delta_rule_cpu) takes 64 or 128 only. SMOKE=1, make demo and the
# vLLM tests build their tiny model with these; the numeric tests keep the defaults.
VLLM_SIZES = TinyQwenSizes(hidden_size=128, intermediate_size=256, linear_head_dim=64)


def _qwen2_5_vl_parts(sizes: TinyQwenSizes, family: ModelFamily) -> tuple[dict, dict]:
    text = {
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sizes.mrope_section},
    }
    vision = {
        "hidden_size": sizes.vision_hidden_size,
        "num_heads": sizes.vision_num_heads,
        "fullatt_block_indexes": [sizes.vision_depth - 1],
        "window_size": family.patch_size * family.merge_size * 4,
    }
    return text, vision


def _qwen3_vl_parts(sizes: TinyQwenSizes, family: ModelFamily) -> tuple[dict, dict]:
    head_dim = sizes.hidden_size // sizes.num_attention_heads
    text = {
        "head_dim": head_dim,
        # Interleaved mRoPE as in the released Qwen3-VL.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": sizes.mrope_section,
            "mrope_interleaved": True,
        },
    }
    vision = {
        "hidden_size": sizes.vision_hidden_size,
        "num_heads": sizes.vision_num_heads,
        # 8 x 8 learned position grid, interpolated to each image's grid.
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
    }
    return text, vision


def _qwen3_5_parts(sizes: TinyQwenSizes, family: ModelFamily) -> tuple[dict, dict]:
    text = {
        # One Gated DeltaNet (linear attention) layer and one full-attention layer, as in the released
        # models' 3:1 pattern cut down to two layers.
        "layer_types": ["linear_attention", "full_attention"],
        "head_dim": 32,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": sizes.linear_head_dim,
        "linear_value_head_dim": sizes.linear_head_dim,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        # Partial rotary (1/4 of head_dim = 8 dims): the mRoPE sections sum to 8 / 2 = 4.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
    }
    vision = {
        "hidden_size": sizes.vision_hidden_size,
        "num_heads": sizes.vision_num_heads,
        "num_position_embeddings": 64,
    }
    return text, vision


@dataclass(frozen=True)
class TinyFamily:
    """How to build one family's tiny model.

    Attributes:
        config_class: ``transformers`` config class name.
        model_class: ``transformers`` model class name, the one the family's released checkpoints load as.
        processor_class: ``transformers`` processor class name of the released checkpoints (verl's
            ``hf_processor`` keys ``get_rope_index`` on it).
        parts: ``(sizes, family) -> (text_config, vision_config)`` family-specific keys.
    """

    config_class: str
    model_class: str
    processor_class: str
    parts: Callable[[TinyQwenSizes, ModelFamily], tuple[dict, dict]]


TINY_FAMILIES: dict[str, TinyFamily] = {
    "qwen2_5_vl": TinyFamily(
        "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", _qwen2_5_vl_parts
    ),
    "qwen3_vl": TinyFamily("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", _qwen3_vl_parts),
    "qwen3_5": TinyFamily("Qwen3_5Config", "Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor", _qwen3_5_parts),
}


def _tiny_family(model_type: str) -> tuple[TinyFamily, ModelFamily]:
    if model_type not in TINY_FAMILIES:
        raise ValueError(f"no tiny model for model_type {model_type!r}; available: {', '.join(TINY_FAMILIES)}")
    return TINY_FAMILIES[model_type], FAMILIES[model_type]


def build_tiny_config(tokenizer, model_type: str = "qwen2_5_vl", sizes: TinyQwenSizes = TinyQwenSizes()):
    """The family's config class with small sizes whose special-token ids match ``tokenizer``."""
    import transformers

    tiny, family = _tiny_family(model_type)
    ids = _token_ids(tokenizer)
    text_extra, vision_extra = tiny.parts(sizes, family)
    text_config = dict(
        vocab_size=((len(tokenizer) + 15) // 16) * 16,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_key_value_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        **text_extra,
    )
    vision_config = dict(
        depth=sizes.vision_depth,
        intermediate_size=sizes.vision_intermediate_size,
        out_hidden_size=sizes.hidden_size,
        patch_size=family.patch_size,
        spatial_merge_size=family.merge_size,
        temporal_patch_size=family.temporal_patch_size,
        **vision_extra,
    )
    return getattr(transformers, tiny.config_class)(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


# The video processor each family's released checkpoints ship (transformers class names).
VIDEO_PROCESSORS = {"Qwen2_5_VLProcessor": "Qwen2VLVideoProcessor", "Qwen3VLProcessor": "Qwen3VLVideoProcessor"}


def build_tiny_processor(tokenizer, model_type: str = "qwen2_5_vl", sizes: TinyQwenSizes = TinyQwenSizes()):
    """The family's stock processor (the classes its released checkpoints use), tiny pixel bounds.

    ``Qwen2_5_VLProcessor`` or ``Qwen3VLProcessor`` around the stock ``Qwen2VLImageProcessor`` (torchvision
    backend) with the family's patch layout and normalisation, the family's video processor and the
    tokenizer with :data:`CHAT_TEMPLATE`.
    """
    import transformers

    tiny, family = _tiny_family(model_type)
    min_pixels, max_pixels = sizes.pixel_bounds(family)
    layout = {
        "patch_size": family.patch_size,
        "temporal_patch_size": family.temporal_patch_size,
        "merge_size": family.merge_size,
        "image_mean": list(family.image_mean),
        "image_std": list(family.image_std),
    }
    image_processor = transformers.Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, **layout
    )
    video_processor = getattr(transformers, VIDEO_PROCESSORS[tiny.processor_class])(**layout)
    return getattr(transformers, tiny.processor_class)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def save_tiny_model(
    output_dir: str | Path, model_type: str, seed: int = 0, sizes: TinyQwenSizes = TinyQwenSizes()
) -> Path:
    """Build a family's tiny model, tokenizer and processor and save them to ``output_dir``.

    Args:
        output_dir: directory to create (existing files are overwritten).
        model_type: a key of :data:`TINY_FAMILIES` (``qwen2_5_vl``, ``qwen3_vl``, ``qwen3_5``).
        seed: torch seed for the random weights.
        sizes: model and pixel sizes.

    Returns:
        The directory, loadable with ``from_pretrained`` (no remote code); its
        ``config.json`` says ``model_type``.
    """
    import transformers

    tiny, family = _tiny_family(model_type)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = build_tiny_config(tokenizer, model_type, sizes)
    torch.manual_seed(seed)
    model = getattr(transformers, tiny.model_class)(config).to(torch.float32)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    build_tiny_processor(tokenizer, model_type, sizes).save_pretrained(output_dir)
    return output_dir


def save_tiny_qwen2_5_vl(output_dir: str | Path, seed: int = 0, sizes: TinyQwenSizes = TinyQwenSizes()) -> Path:
    """:func:`save_tiny_model` for Qwen2.5-VL (the demo's family)."""
    return save_tiny_model(output_dir, "qwen2_5_vl", seed=seed, sizes=sizes)


def load_tiny_model(model_dir: str | Path):
    """Load (model, tokenizer, processor) through the same ``from_pretrained`` path as a user model."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    model_dir = str(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    return model, tokenizer, processor


load_tiny_qwen2_5_vl = load_tiny_model
