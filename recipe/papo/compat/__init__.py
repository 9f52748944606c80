"""Every patch this project applies to another package, in one guarded place.

One module per patched package (and device scope); each install function checks the installed
version it was written against, or detects the defect it fixes, before patching; logs once what it
patched (logger ``recipe.papo.compat``, INFO); and fails with a clear message on a version it
does not know. Nothing outside this package sets attributes on another package's modules or writes
``sys.modules``. The list of patches, what each fixes and where it applies is in ``docs/compat.md``.

- :mod:`.verl`: every device: the equal-length mRoPE ``position_ids`` repair (defect-detected).
- :mod:`.verl_cpu`: CPU backend only (verl 0.9.1): process-group backend, private registries,
  torch variable-length attention for remove-padding, unpinned reference-model offload.
- :mod:`.qwen_vl_utils`: CPU backend only: the torchvision-free ``qwen_vl_utils`` stand-in.
"""

from ._guard import UnsupportedVersionError

__all__ = ["UnsupportedVersionError"]
