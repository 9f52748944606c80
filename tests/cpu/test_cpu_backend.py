"""Pieces of the CPU backend: platform, device module, gloo backend, qwen_vl_utils stand-in."""

from __future__ import annotations

import base64
import subprocess
import sys
from io import BytesIO

import pytest
import torch
from PIL import Image

from papo_tools.cpu import qwen_vl_stub
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


def _png(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(56, 56), (100, 60), (20, 30), (4000, 3000)])
def test_smart_resize_keeps_patch_multiples_and_pixel_budget(size):
    height, width = size
    new_height, new_width = qwen_vl_stub.smart_resize(height, width, factor=28)
    assert new_height % 28 == 0 and new_width % 28 == 0
    assert 4 * 28 * 28 <= new_height * new_width <= 16384 * 28 * 28
    assert abs(new_height / new_width - height / width) < 0.5 * height / width


def test_fetch_image_reads_every_local_source(tmp_path):
    image = Image.new("RGBA", (60, 40), (255, 0, 0, 0))
    path = tmp_path / "a.png"
    image.save(path)
    data_uri = "data:image/png;base64," + base64.b64encode(_png(image)).decode()
    for source in (image, str(path), f"file://{path}", data_uri):
        fetched = qwen_vl_stub.fetch_image({"image": source})
        assert fetched.mode == "RGB" and fetched.size == (84, 56)  # 60x40 grown to the 4-token minimum
        assert fetched.getpixel((0, 0)) == (255, 255, 255)  # transparent pixels land on white
    with pytest.raises(ValueError):
        qwen_vl_stub.fetch_image({"image": "https://example.com/a.png"})


def test_process_vision_info_returns_images_only():
    image = Image.new("RGB", (56, 56), (0, 0, 255))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "hi"}]}]
    images, videos = qwen_vl_stub.process_vision_info(messages, image_patch_size=14, return_video_metadata=True)
    assert videos is None and [im.size for im in images] == [(56, 56)]
    assert qwen_vl_stub.process_vision_info([{"role": "user", "content": "text only"}]) == (None, None)
    with pytest.raises(NotImplementedError):
        qwen_vl_stub.process_vision_info([{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}])


def test_stand_in_is_used_only_when_the_real_package_fails(switch_off_env):
    code = """
import sys
try:
    import qwen_vl_utils
    real = True
except ImportError:
    real = False
from papo_tools.cpu import qwen_vl_stub
installed = qwen_vl_stub.install()
import qwen_vl_utils
print(real, installed, qwen_vl_utils is qwen_vl_stub)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], env=switch_off_env, capture_output=True, text=True, timeout=120, check=True
    )
    real, installed, is_stub = result.stdout.split()
    assert installed == is_stub == str(real == "False")


def test_smart_resize_matches_the_installed_qwen_vl_utils():
    """Same sizes as the real ``smart_resize``, read from the installed package without importing it."""
    import ast
    import math
    from importlib.machinery import PathFinder
    from pathlib import Path

    spec = PathFinder.find_spec("qwen_vl_utils")  # on sys.path, whatever sys.modules holds
    if spec is None or spec.origin is None:
        pytest.skip("qwen_vl_utils is not installed")
    source = (Path(spec.origin).parent / "vision_process.py").read_text()
    wanted = {"smart_resize", "round_by_factor", "ceil_by_factor", "floor_by_factor", "MAX_RATIO"}
    wanted |= {"IMAGE_MIN_TOKEN_NUM", "IMAGE_MAX_TOKEN_NUM"}
    nodes = [
        node
        for node in ast.parse(source).body
        if (isinstance(node, ast.FunctionDef) and node.name in wanted)
        or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) in wanted for t in node.targets))
    ]
    namespace: dict = {"math": math, "Optional": __import__("typing").Optional, "Tuple": tuple}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), "vision_process", "exec"), namespace)
    for height in range(10, 900, 37):
        for width in range(10, 900, 53):
            for bounds in ({}, {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}):
                assert qwen_vl_stub.smart_resize(height, width, 28, **bounds) == namespace["smart_resize"](
                    height, width, 28, **bounds
                ), (height, width, bounds)
