"""The hand-offs into verl's FSDP engine and transformers' attention that the shared masked pass needs.

The shared masked pass (:mod:`recipe.papo.shared_pass`) runs each prompt group's prompt once and its
responses against the prompt's cached keys/values (:class:`recipe.papo.prefix_attention.PrefixAttention`).
For that it needs three things no public interface offers, all here, all checked when the worker starts
(:func:`unsupported_reason`) and active only inside one masked pass:

* **Attention routing** (:func:`route_text_attention`): every *text* self-attention layer of the model
  calls the shared pass's attention instead of its own kernel. transformers' attention layers pick
  their kernel by ``config._attn_implementation`` from ``ALL_ATTENTION_FUNCTIONS``: the pass registers
  one more kernel there (``AttentionInterface.register``, transformers' public API) and sets the text
  config's implementation to it for the duration of the pass (the vision tower keeps its own config
  and kernel). verl 0.9.1's remove-padding attention for Qwen2/2.5-VL (``qwen2_vl_attn_forward``,
  installed on the attention class by ``apply_monkey_patch``) does not read that setting: it calls
  the module function ``_custom_flash_attention_forward`` of ``verl.models.transformers.qwen2_vl``,
  which the pass rebinds for its duration (and casts float32 inputs to bf16 first, as verl's does).
* **The prompt call** (:func:`forward_prompt_call`): the engine's input preparation (packing, mRoPE
  position ids, multimodal inputs) and module call under its autocast, as
  ``FSDPEngineWithLMHead.forward_step`` does, without the output processing: only the attention
  layers' keys/values are wanted, so the LM head sees one token.
* **The response call** (:func:`forward_response_log_probs`): ``forward_step`` itself (verl 0.9.1's
  FSDP engines; checked by :func:`recipe.papo.compat.verl_engine.check_engine_forward_step`), whose
  output processing applies the temperature and takes the log-probs exactly as every log-prob pass.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from tensordict import TensorDict

from ..prefix_attention import PrefixAttention
from .guard import installed_version, log_patched
from .verl_engine import FORWARD_STEP_PARAMETERS, forward_step_parameters

SUPPORTED_VERL = ("0.9.1",)
ATTENTION_NAME = "papo_shared_prompt"
QWEN2_VL_MODULE = "verl.models.transformers.qwen2_vl"
QWEN2_VL_KERNEL = "_custom_flash_attention_forward"
# Families whose text attention layers are all softmax attention with a KV cache to share.
SHARED_FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")

_active: PrefixAttention | None = None


def text_attention_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The text self-attention layers of a Qwen-VL model (``q_proj``, ``layer_idx``; vision blocks have ``qkv``)."""
    return [m for m in module.modules() if hasattr(m, "q_proj") and hasattr(m, "layer_idx") and hasattr(m, "config")]


def unsupported_reason(worker: Any) -> str | None:
    """Why the shared masked pass cannot run on this actor worker, or None if it can.

    Reads the worker's PAPO options, engine and model; checked once when the worker starts.
    """
    papo = worker.papo
    if not papo.share_masked_prompt:
        return "papo.share_masked_prompt=false"
    if papo.masked_logprob_mode != "precompute":
        return "papo.masked_logprob_mode=recompute runs the masked forward inside each update micro-batch"
    engine_config = worker.actor.engine_config
    if getattr(engine_config, "ulysses_sequence_parallel_size", 1) > 1:
        return "Ulysses sequence parallelism splits each sequence over ranks (ulysses_sequence_parallel_size > 1)"
    if getattr(engine_config, "use_fused_kernels", False):
        return "use_fused_kernels=True: the fused forward returns log-probs, not the logits the pass needs"
    installed = installed_version("verl")
    if installed not in SUPPORTED_VERL:
        return f"written for verl {' / '.join(SUPPORTED_VERL)}, verl {installed} is installed"
    engine = worker.actor.engine
    prepare = getattr(engine, "prepare_model_inputs", None)
    if forward_step_parameters(engine) != FORWARD_STEP_PARAMETERS or not callable(prepare):
        return f"{type(engine).__name__} is not verl 0.9.1's FSDP engine (forward_step / prepare_model_inputs)"
    model = engine.module
    text_config = model.config.get_text_config()
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SHARED_FAMILIES:
        layer_types = set(getattr(text_config, "layer_types", None) or ())
        if layer_types - {"full_attention"}:
            return (
                f"{model_type}'s {', '.join(sorted(layer_types - {'full_attention'}))} layers carry a recurrent and a "
                "convolution state, not keys/values; the shared pass shares keys/values only"
            )
        return f"model_type {model_type!r} is not one of {', '.join(SHARED_FAMILIES)}"
    if getattr(text_config, "use_sliding_window", False) and getattr(text_config, "sliding_window", None):
        return "the text model uses sliding-window attention"
    layers = text_attention_layers(model)
    if len(layers) != text_config.num_hidden_layers:
        return f"found {len(layers)} text attention layers for {text_config.num_hidden_layers} decoder layers"
    return None


def uses_flash_attention(module: torch.nn.Module, use_remove_padding: bool) -> bool:
    """True iff the model's text attention runs flash-attn kernels today (the pass then uses them too)."""
    implementation = module.config.get_text_config()._attn_implementation or ""
    if implementation.startswith("flash_attention"):
        return True
    qwen2_vl = importlib.import_module(QWEN2_VL_MODULE)
    patched = any(
        type(layer).forward is getattr(qwen2_vl, "qwen2_vl_attn_forward", None)
        for layer in text_attention_layers(module)
    )
    kernel = getattr(qwen2_vl, "flash_attn_varlen_func", None)
    return patched and use_remove_padding and getattr(kernel, "__module__", "").startswith("flash_attn")


def _interface_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function contract: ``query`` ``(1, H, T, D)``, ``key``/``value`` ``(1, H_kv, T, D)``."""
    if _active is None:
        raise RuntimeError(f"attention implementation {ATTENTION_NAME!r} used outside the shared masked pass")
    if query.shape[0] != 1:
        raise RuntimeError(f"the shared masked pass packs its inputs into one row, got a batch of {query.shape[0]}")
    out = _active.attend(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), scaling)
    return out.unsqueeze(0), None  # (1, T, H, D), as transformers' kernels return it


def _qwen2_vl_attention(query_states, key_states, value_states, attention_mask, query_length, **kwargs):
    """verl 0.9.1's ``_custom_flash_attention_forward`` contract: ``(1, T, H, D)`` inputs with repeated kv heads."""
    if _active is None:
        raise RuntimeError(f"{QWEN2_VL_MODULE}.{QWEN2_VL_KERNEL} rebound outside the shared masked pass")
    if query_states.dtype == torch.float32:  # what verl's kernel does (fa_peft_integration_check) before flash-attn
        query_states, key_states, value_states = (
            t.to(torch.bfloat16) for t in (query_states, key_states, value_states)
        )
    scale = kwargs.get("softmax_scale")
    return _active.attend(query_states[0], key_states[0], value_states[0], scale).unsqueeze(0)


@contextmanager
def route_text_attention(module: torch.nn.Module, attention: PrefixAttention) -> Iterator[None]:
    """Within the block, every text self-attention layer of ``module`` runs ``attention.attend``."""
    global _active
    from transformers import AttentionInterface

    if _active is not None:
        raise RuntimeError("shared masked passes cannot nest")
    AttentionInterface.register(ATTENTION_NAME, _interface_attention)  # idempotent
    log_patched(
        "shared_prompt.route_text_attention",
        f"text attention -> {ATTENTION_NAME!r} (transformers' AttentionInterface) and "
        f"{QWEN2_VL_MODULE}.{QWEN2_VL_KERNEL} rebound, for the duration of each shared masked pass",
    )
    configs = {id(layer.config): layer.config for layer in text_attention_layers(module)}
    saved = {key: config._attn_implementation for key, config in configs.items()}
    qwen2_vl = importlib.import_module(QWEN2_VL_MODULE)
    kernel = getattr(qwen2_vl, QWEN2_VL_KERNEL)
    _active = attention
    try:
        for config in configs.values():
            config._attn_implementation = ATTENTION_NAME
        setattr(qwen2_vl, QWEN2_VL_KERNEL, _qwen2_vl_attention)
        yield
    finally:
        setattr(qwen2_vl, QWEN2_VL_KERNEL, kernel)
        for key, config in configs.items():
            config._attn_implementation = saved[key]
        _active = None


def _autocast(engine: Any):
    """The engine's autocast context (``FSDPEngineWithLMHead.forward_step``'s)."""
    from verl.utils.device import get_device_name

    dtype = getattr(engine, "_autocast_dtype", torch.bfloat16)
    return nullcontext() if dtype == torch.float32 else torch.autocast(device_type=get_device_name(), dtype=dtype)


@contextmanager
def _tensor_output_of_text_only_vision(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, the vision tower returns a tensor (its ``pooler_output``), not an output object.

    verl 0.9.1 runs the vision tower on 16 dummy patches in a forward without images (so that every
    FSDP rank runs it) and adds ``0.0 * image_embeds.mean()``; for Qwen2/2.5-VL it does not unpack
    transformers 5's ``BaseModelOutputWithPooling`` there (``verl/models/transformers/qwen2_vl.py``,
    ``_get_input_embeds``) and fails with "'BaseModelOutputWithPooling' object has no attribute 'mean'".
    The response call never has images, so it always takes that branch. Only for calls without images:
    the image branch reads the deepstack features of Qwen3-VL's output object.
    """
    # where verl's forward finds it: ``model.visual`` of the inner model (under a PEFT wrapper too)
    visual = next((m.visual for m in module.modules() if isinstance(getattr(m, "visual", None), torch.nn.Module)), None)
    if visual is None:
        yield
        return

    def to_tensor(_module, _args, output):
        return getattr(output, "pooler_output", output)

    handle = visual.register_forward_hook(to_tensor)
    try:
        yield
    finally:
        handle.remove()


def forward_prompt_call(engine: Any, micro_batch: TensorDict) -> None:
    """Run the engine's module on ``micro_batch`` for its attention layers' side effects; no outputs.

    The engine's own input preparation and autocast (``FSDPEngineWithLMHead.forward_step``'s first
    half); the LM head is handed the last position only (a forward pre-hook), since nothing reads the
    logits.
    """
    from verl.utils.device import get_device_id

    micro_batch = micro_batch.to(get_device_id())
    model_inputs, _ = engine.prepare_model_inputs(micro_batch=micro_batch)
    head = engine.module.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][..., -1:, :], *args[1:]))
    without_images = "pixel_values" not in model_inputs and "pixel_values_videos" not in model_inputs
    try:
        with _autocast(engine), _tensor_output_of_text_only_vision(engine.module) if without_images else nullcontext():
            engine.module(**model_inputs, use_cache=False)
    finally:
        handle.remove()


def forward_response_log_probs(engine: Any, micro_batch: TensorDict) -> torch.Tensor:
    """The engine's ``forward_step`` (no loss, forward only) on ``micro_batch`` (no images): nested ``(batch, len_i)``
    log-probs."""
    with _tensor_output_of_text_only_vision(engine.module):
        _, output = engine.forward_step(micro_batch, loss_function=None, forward_only=True)
    return output["model_output"]["log_probs"]
