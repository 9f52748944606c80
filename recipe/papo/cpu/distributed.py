"""Give verl's worker process group a backend string torch accepts on CPU.

Plugs into ``verl.utils.distributed.initialize_global_process_group_ray`` (verl 0.9.1). Its default
backend is ``f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"``; on the "cpu" platform that is
``"cpu:gloo,cpu:gloo"``, which ``torch.distributed`` rejects ("Duplicate device type cpu").
``TrainingWorker.__init__`` (``verl/workers/engine_workers.py``) calls it with no backend, so the
wrapper below only fills in ``"cpu:gloo"`` when the caller passed none; explicit backends (the
checkpoint engine passes ``"cpu:gloo"``) go through unchanged.

Monkeypatch, verl 0.9.1: ``engine_workers`` binds the function by name at import
(``from verl.utils.distributed import initialize_global_process_group_ray``), so the wrapper is set
on ``verl.utils.distributed`` (for modules imported later) and on ``verl.workers.engine_workers``
when that module is already loaded.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, Optional

CPU_BACKEND = "cpu:gloo"
_FUNCTION = "initialize_global_process_group_ray"
# Modules of verl 0.9.1 that import the function by name.
_IMPORTERS = ("verl.workers.engine_workers",)


def _with_cpu_backend(original: Callable) -> Callable:
    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second: Optional[int] = None, backend: Optional[str] = None):
        return original(timeout_second=timeout_second, backend=backend or CPU_BACKEND)

    initialize_global_process_group_ray.__papo_cpu_backend__ = True
    return initialize_global_process_group_ray


def install() -> None:
    """Wrap ``initialize_global_process_group_ray`` so its default backend is ``"cpu:gloo"`` (idempotent)."""
    import verl.utils.distributed as distributed

    current = getattr(distributed, _FUNCTION)
    if getattr(current, "__papo_cpu_backend__", False):
        return
    wrapped = _with_cpu_backend(current)
    setattr(distributed, _FUNCTION, wrapped)
    for name in _IMPORTERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, _FUNCTION, None) is current:
            setattr(module, _FUNCTION, wrapped)
