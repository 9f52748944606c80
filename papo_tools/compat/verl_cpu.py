"""Patches of verl 0.9.1 used only by the CPU backend (``VERL_PLATFORM=cpu``, :mod:`papo_tools.cpu`).

Each function checks that verl 0.9.1 is installed (:func:`recipe.papo.compat.guard.require_version`) before it
touches verl's private names, logs once what it patched, and is idempotent. Nothing here runs on a
GPU machine: the CPU backend is the only caller, and it is off unless ``VERL_PLATFORM=cpu``.

- :func:`install_process_group_backend`: ``"cpu:gloo"`` as the worker process-group backend.
- :func:`register_rollout_adapter` / :func:`registered_engine_devices` / :func:`resolved_platform`:
  access to verl's private rollout registry, engine registry and platform singleton.
- :func:`install_varlen_attention`: pure-torch stand-ins for the flash-attn names verl's
  Qwen2/2.5-VL remove-padding attention uses.
- :func:`install_unpinned_reference_offload`: the reference model's FSDP2 CPU offload without
  pinned memory.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from recipe.papo.compat.guard import log_patched, require_version

SUPPORTED_VERL = ("0.9.1",)
CPU_BACKEND = "cpu:gloo"


def _require_verl(patch: str) -> None:
    require_version("verl", SUPPORTED_VERL, patch)


# --- process group -------------------------------------------------------------------------------
_PG_FUNCTION = "initialize_global_process_group_ray"
_PG_IMPORTERS = ("verl.workers.engine_workers",)  # modules of verl 0.9.1 that import it by name


def _with_cpu_backend(original: Callable) -> Callable:
    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second: int | None = None, backend: str | None = None):
        return original(timeout_second=timeout_second, backend=backend or CPU_BACKEND)

    initialize_global_process_group_ray.__papo_cpu_backend__ = True
    return initialize_global_process_group_ray


def install_process_group_backend() -> None:
    """Default ``verl.utils.distributed.initialize_global_process_group_ray``'s backend to ``"cpu:gloo"``.

    verl 0.9.1 builds ``f"cpu:gloo,{device}:{backend}"``, i.e. ``"cpu:gloo,cpu:gloo"`` on the "cpu"
    platform, which ``torch.distributed`` rejects ("Duplicate device type cpu"). ``TrainingWorker``
    calls the function with no backend; explicit backends (the checkpoint engine's ``"cpu:gloo"``)
    pass through unchanged. Set on ``verl.utils.distributed`` and on modules that already imported it.
    """
    patch = "verl.initialize_global_process_group_ray"
    _require_verl(patch)
    import verl.utils.distributed as distributed

    current = getattr(distributed, _PG_FUNCTION)
    if getattr(current, "__papo_cpu_backend__", False):
        return
    wrapped = _with_cpu_backend(current)
    setattr(distributed, _PG_FUNCTION, wrapped)
    for name in _PG_IMPORTERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, _PG_FUNCTION, None) is current:
            setattr(module, _PG_FUNCTION, wrapped)
    log_patched(patch, f"default backend {CPU_BACKEND!r}")


# --- private registries --------------------------------------------------------------------------
def register_rollout_adapter(name: str, mode: str, adapter_fqn: str) -> None:
    """Map rollout ``(name, mode)`` to an actor-side ``BaseRollout`` class in verl's ``_ROLLOUT_REGISTRY``.

    verl 0.9.1 keeps that registry as a private module-level dict with no register function;
    ``ActorRolloutRefWorker.init_model`` looks the adapter up there. Adds one key, replaces nothing.

    Raises:
        ValueError: the key is already taken by another adapter.
    """
    patch = "verl._ROLLOUT_REGISTRY"
    _require_verl(patch)
    from verl.workers.rollout import base

    registry: dict = base._ROLLOUT_REGISTRY
    existing = registry.get((name, mode))
    if existing not in (None, adapter_fqn):
        raise ValueError(f"rollout ({name!r}, {mode!r}) is already registered to {existing}")
    registry[(name, mode)] = adapter_fqn
    log_patched(patch, f"rollout ({name!r}, {mode!r}) -> {adapter_fqn}")


def registered_engine_devices(model_type: str, backend: str) -> set[str]:
    """Devices for which verl's ``EngineRegistry`` holds an engine of ``model_type`` and ``backend``.

    verl 0.9.1 offers registration but no lookup short of ``get_engine_cls`` (which raises), so
    this reads its private ``EngineRegistry._engines`` (``{model_type: {backend: {device: cls}}}``).
    """
    _require_verl("verl.EngineRegistry._engines")
    from verl.workers.engine.base import EngineRegistry

    return set(EngineRegistry._engines.get(model_type, {}).get(backend, {}))


def resolved_platform() -> Any:
    """The platform verl already selected in this process, or None if none yet (verl 0.9.1 private)."""
    _require_verl("verl.platform_manager._current_platform")
    from verl.plugin.platform import platform_manager

    return platform_manager._current_platform


# --- remove-padding attention --------------------------------------------------------------------
QWEN2_VL_MODULE = "verl.models.transformers.qwen2_vl"


def install_varlen_attention(varlen_fn: Callable[..., Any], dense_fn: Callable[..., Any]) -> None:
    """Give verl's Qwen2/2.5-VL packed attention the flash-attn names it expects, backed by torch.

    verl 0.9.1's ``verl/models/transformers/qwen2_vl.py`` binds ``flash_attn_varlen_func``,
    ``_flash_use_top_left_mask``, ``_flash_supports_window_size`` and
    ``_flash_supports_deterministic`` only when flash-attn (or an NPU) is present; without them
    ``qwen2_vl_attn_forward`` (installed by verl's ``apply_monkey_patch`` for
    ``use_remove_padding=True`` or Ulysses) raises ``NameError``. This defines those names, and
    replaces the module's ``_flash_attention_forward`` (the single-sequence branch, which
    transformers implements with flash-attn only), so that verl's own ``_custom_flash_attention_forward``
    (bf16 cast, Ulysses all-to-all, cu_seqlens from position ids) runs unchanged around torch kernels.

    Args:
        varlen_fn: ``flash_attn_varlen_func``-compatible function.
        dense_fn: ``transformers.modeling_flash_attention_utils._flash_attention_forward``-compatible
            function for unpadded input.

    Raises:
        RuntimeError: flash-attn's names are already bound (flash-attn installed): nothing to replace.
    """
    patch = "verl.qwen2_vl.flash_attn"
    _require_verl(patch)
    import importlib

    module = importlib.import_module(QWEN2_VL_MODULE)
    if getattr(module, "flash_attn_varlen_func", None) is varlen_fn:
        return
    if hasattr(module, "flash_attn_varlen_func"):
        raise RuntimeError(
            f"{QWEN2_VL_MODULE} already has flash-attn kernels bound; the CPU backend's torch attention "
            "is meant for machines without flash-attn (unset VERL_PLATFORM=cpu on a GPU machine)"
        )
    values = {
        "flash_attn_varlen_func": varlen_fn,
        "_flash_attention_forward": dense_fn,
        "_flash_use_top_left_mask": False,  # bottom-right causal alignment (flash-attn >= 2.1)
        "_flash_supports_window_size": False,
        "_flash_supports_deterministic": False,
    }
    for name, value in values.items():
        setattr(module, name, value)
    log_patched(patch, f"torch variable-length attention bound in {QWEN2_VL_MODULE} ({', '.join(values)})")


# --- reference model offload ---------------------------------------------------------------------
TRANSFORMER_IMPL_MODULE = "verl.workers.engine.fsdp.transformer_impl"


def install_unpinned_reference_offload() -> None:
    """Build the FSDP2 ``CPUOffloadPolicy`` without pinned memory in verl's FSDP engine.

    verl 0.9.1's ``FSDPEngine._build_fsdp_module`` forces ``CPUOffloadPolicy(pin_memory=True)`` for
    forward-only engines (the reference model); pinning page-locks memory for an accelerator and
    fails with "Cannot access accelerator device" when there is none. On CPU the offload target
    *is* the device, so pinning buys nothing: this rebinds the engine module's ``CPUOffloadPolicy``
    to a factory returning the real policy class with ``pin_memory=False``.
    """
    patch = "verl.fsdp_engine.CPUOffloadPolicy"
    _require_verl(patch)
    import importlib

    module = importlib.import_module(TRANSFORMER_IMPL_MODULE)
    current = module.CPUOffloadPolicy
    if getattr(current, "__papo_unpinned__", False):
        return
    policy_cls = current

    def cpu_offload_policy(pin_memory: bool = True, **kwargs: Any):
        return policy_cls(pin_memory=False, **kwargs)

    cpu_offload_policy.__papo_unpinned__ = True
    module.CPUOffloadPolicy = cpu_offload_policy
    log_patched(patch, f"{TRANSFORMER_IMPL_MODULE}.CPUOffloadPolicy builds pin_memory=False policies")
