"""Pieces of the CPU backend: platform, device module, gloo backend."""

from __future__ import annotations

import subprocess
import sys

import torch

from papo_tools.cpu.platform import CPU_DEVICE_MODULE, PlatformCPU


def test_device_module_answers_the_calls_verl_makes():
    device = CPU_DEVICE_MODULE
    assert device.memory_allocated() == device.max_memory_reserved() == 0
    free, total = device.mem_get_info()
    assert 0 < free <= total == device.get_device_properties(0).total_memory
    device.empty_cache(), device.synchronize(), device.reset_peak_memory_stats()
    assert device.is_available() and device.device_count() >= 1  # forwarded to torch.cpu
    state = device.get_rng_state()
    first = torch.rand(3)
    device.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_platform_is_cpu_with_gloo_and_one_logical_gpu_slot():
    platform = PlatformCPU()
    assert (platform.device_name, platform.communication_backend_name(), platform.ray_resource_name()) == (
        "cpu",
        "gloo",
        "GPU",
    )
    assert platform.ray_resource_options(1) == {"num_gpus": 1}
    assert torch.ones(2).to(platform.current_device()).device.type == "cpu"
    assert not platform.is_platform_available(use_smi_check=True)  # never auto-detected
    assert platform.device_module is CPU_DEVICE_MODULE and not platform.is_ipc_supported()


GLOO_PROBE = """
import os, socket
import torch
import verl.utils.distributed as distributed
from papo_tools.compat import verl_cpu

verl_cpu.install_process_group_backend()
verl_cpu.install_process_group_backend()  # idempotent: wrapped once
assert not getattr(distributed.initialize_global_process_group_ray.__wrapped__, "__papo_cpu_backend__", False)
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
distributed.initialize_global_process_group_ray()  # verl's own initializer, as TrainingWorker calls it
total = torch.ones(2)
torch.distributed.all_reduce(total)
print(torch.distributed.get_backend(), total.tolist())
torch.distributed.destroy_process_group()
"""


def test_worker_process_group_initialises_on_gloo():
    """verl's initializer, wrapped, brings up a real gloo group (world size 1, fresh process)."""
    result = subprocess.run([sys.executable, "-c", GLOO_PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == "cpu:gloo [1.0, 1.0]"
