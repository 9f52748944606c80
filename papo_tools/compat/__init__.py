"""The CPU backend's patches of other packages (nothing here runs unless ``VERL_PLATFORM=cpu``).

Same rules as :mod:`recipe.papo.compat` (each patch checks the version it was written for through
:mod:`recipe.papo.compat.guard` and logs once what it changed); listed in ``docs/compat.md``.

- :mod:`.verl_cpu`: verl 0.9.1: process-group backend, private registries, torch variable-length
  attention for remove-padding, unpinned reference-model offload.
- :mod:`.qwen_vl_utils`: the torchvision-free ``qwen_vl_utils`` stand-in, only where the real one
  cannot be imported.
"""
