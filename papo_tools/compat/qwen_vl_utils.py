"""Registers a stand-in module as ``qwen_vl_utils`` when the real package cannot be imported.

The real ``qwen_vl_utils`` imports torchvision at import time (for video); CPU-only machines have
no torchvision wheel here. verl 0.9.1 imports ``process_vision_info`` / ``fetch_image`` from it
for every image prompt. Used by the CPU backend only; GPU machines keep the real package.
"""

from __future__ import annotations

import sys
from types import ModuleType

from recipe.papo.compat.guard import log_patched

MODULE = "qwen_vl_utils"
# What ``import qwen_vl_utils`` raises when torchvision is absent or cannot load (see install_stand_in).
IMPORT_ERRORS = (ImportError, RuntimeError, OSError)


def install_stand_in(stand_in: ModuleType) -> bool:
    """Register ``stand_in`` as ``qwen_vl_utils`` if the real one fails to import; True if it did.

    Steps aside (returns False, registers nothing) when ``import qwen_vl_utils`` works. Any of the
    errors a missing or unusable torchvision raises at import counts as "does not import":
    ``ImportError`` (not installed), ``RuntimeError`` (a CUDA torchvision wheel beside the CPU torch:
    ``operator torchvision::nms does not exist``) and ``OSError`` (its native library fails to load).
    """
    if sys.modules.get(MODULE) is stand_in:
        return True
    try:
        import qwen_vl_utils  # noqa: F401
    except IMPORT_ERRORS as error:
        sys.modules[MODULE] = stand_in
        log_patched("qwen_vl_utils", f"stand-in {stand_in.__name__} registered ({type(error).__name__}: {error})")
        return True
    return False
