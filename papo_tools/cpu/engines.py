"""Register verl's FSDP training engines for device "cpu".

Plugs into ``verl.workers.engine.base.EngineRegistry`` (verl 0.9.1). verl registers
``FSDPEngineWithLMHead`` (actor/ref, ``model_type="language_model"``) and ``FSDPEngineWithValueHead``
(critic, ``model_type="value_model"``) for backends "fsdp"/"fsdp2" on devices "cuda" and "npu" only
(``verl/workers/engine/fsdp/transformer_impl.py``); ``EngineRegistry.get_engine_cls`` looks the
class up by ``get_device_name()``, which is "cpu" under the CPU platform. This registers the very
same classes for "cpu": no engine code is replaced.

Must run after the "cpu" platform is registered: ``transformer_impl`` calls ``get_device_name()``
at import time.
"""

from __future__ import annotations

import warnings

from papo_tools.compat.verl_cpu import registered_engine_devices

DEVICE = "cpu"
BACKENDS = ["fsdp", "fsdp2"]


def register() -> None:
    """Register the FSDP LM-head and value-head engines for device "cpu" (idempotent)."""
    with warnings.catch_warnings():
        # verl's engine package warns once per missing optional engine (megatron, veomni, ...);
        # this import now happens in every process, where those warnings are only noise.
        warnings.filterwarnings("ignore", message=".* engine is not available", category=UserWarning)
        from verl.workers.engine.base import EngineRegistry
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine_cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        missing = [backend for backend in BACKENDS if DEVICE not in registered_engine_devices(model_type, backend)]
        if missing:
            EngineRegistry.register(model_type=model_type, backend=missing, device=DEVICE)(engine_cls)
