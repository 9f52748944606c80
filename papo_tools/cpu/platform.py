"""The "cpu" platform for verl 0.9.1's platform registry.

Plugs into ``verl.plugin.platform`` (verl 0.9.1): ``PlatformRegistry.register("cpu")`` adds a
``PlatformBase`` subclass that ``get_platform()`` instantiates when ``VERL_PLATFORM=cpu``. Every
``verl.utils.device`` helper (``get_device_name``, ``get_torch_device``, ``get_nccl_backend``,
``get_resource_name``, ...) delegates to it, so after registration verl sees device "cpu",
backend "gloo" and a device module that answers the CUDA-style calls verl makes.

Two deliberate choices:

- ``ray_resource_name()`` is "GPU": verl's resource pools and placement groups count Ray "GPU"
  bundles (``RayResourcePool.get_placement_groups``), so a CPU run starts Ray with one *logical*
  GPU (``ray_init.num_gpus=1``) and each training rank takes one such slot. No CUDA is touched.
- ``device_module`` is :class:`CPUDeviceModule`, ``torch.cpu`` plus the memory, RNG and property
  calls ``torch.cpu`` lacks (verl calls ``get_torch_device().memory_reserved()``,
  ``max_memory_allocated()``, ``mem_get_info()``, ``get_rng_state()``, ... unconditionally).
  Device-memory counters are 0 (there is no device memory); RNG calls act on the CPU generator,
  which *is* the device generator here.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import psutil
import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

from papo_tools.compat.verl_cpu import resolved_platform

PLATFORM_NAME = "cpu"


def _zero_bytes(*args: Any, **kwargs: Any) -> int:
    return 0


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


class CPUDeviceModule:
    """``torch.cpu`` with the CUDA-style calls verl makes on ``get_torch_device()``.

    Attributes not defined here (``synchronize``, ``current_stream``, ``Stream``, ``Event``,
    ``is_available``, ``device_count``, ``set_device``, ...) are forwarded to ``torch.cpu``.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    # Memory: no device memory exists, so allocator counters are zero and cache/stat calls no-ops.
    memory_allocated = memory_reserved = max_memory_allocated = max_memory_reserved = staticmethod(_zero_bytes)
    empty_cache = ipc_collect = reset_peak_memory_stats = reset_accumulated_memory_stats = staticmethod(_no_op)
    set_per_process_memory_fraction = staticmethod(_no_op)

    @staticmethod
    def memory_stats(device: Any = None) -> dict:
        return {}

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        """``(free, total)`` host memory in bytes: the memory tensors live in on this platform."""
        memory = psutil.virtual_memory()
        return memory.available, memory.total

    @staticmethod
    def get_device_properties(device: Any = None) -> SimpleNamespace:
        return SimpleNamespace(name="cpu", total_memory=psutil.virtual_memory().total)

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "cpu"

    # RNG: the CPU generator is the device generator.
    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        torch.manual_seed(seed)


CPU_DEVICE_MODULE = CPUDeviceModule()


class PlatformCPU(PlatformBase):
    """verl platform backed by the host CPU: device "cpu", collective backend "gloo"."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> CPUDeviceModule:  # verl only uses it as a namespace
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: selected only by VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> str:
        # verl passes this to ``tensor.to(...)`` / ``torch.device(...)``; an int would mean cuda:N.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets it for actors holding logical "GPU" slots; harmless without CUDA.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> None:
        return None


def register() -> None:
    """Register :class:`PlatformCPU` under the name "cpu" (idempotent).

    Raises:
        RuntimeError: verl already resolved another platform in this process. verl caches the
            platform on first use and some modules copy the device name at import
            (``verl/workers/engine/fsdp/transformer_impl.py``), so switching afterwards cannot work:
            set ``VERL_PLATFORM=cpu`` before this process first imports verl's workers.
    """
    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)
    resolved = resolved_platform()
    if resolved is not None and not isinstance(resolved, PlatformCPU):
        raise RuntimeError(
            f"verl already selected the {resolved.device_name!r} platform in this process; switch the CPU "
            "backend on (VERL_PLATFORM=cpu, then import papo_tools.cpu) before anything imports verl's workers"
        )
