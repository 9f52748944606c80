"""Every patch this project applies to another package, in one guarded place.

One module per patched package (and device scope); each install function checks the installed
version it was written against, or detects the defect it fixes, before patching; logs once what it
patched (logger ``recipe.papo.compat``, INFO); and fails with a clear message on a version it
does not know. Nothing outside this package sets attributes on another package's modules or writes
``sys.modules``. The list of patches, what each fixes and where it applies is in ``docs/develop.md``.

- :mod:`.verl`: every device: the equal-length mRoPE ``position_ids`` repair (defect-detected).
- :mod:`.verl_engine`: the per-micro-batch forward with gradient of recompute mode (interface-checked).
- :mod:`.verl_train_batch`: VPPO's weights before each update mini-batch (version- and interface-checked).
- :mod:`.verl_registries`: read-only listing of verl's rollout registry (version-checked).
- :mod:`.verl_trainer`: the trainer methods the PAPO trainer overrides or calls (signature-checked).
- :mod:`.guard`: the version guard and the log line every patch uses.

The CPU install's patches (process-group backend, private registries, torch variable-length
attention, unpinned reference offload, torchvision's op schemas, vLLM's CPU build) are not part of a
GPU run: they live with the backend in :mod:`papo_tools.compat` and use the same guard.
"""

from .guard import UnsupportedVersionError

__all__ = ["UnsupportedVersionError"]
