"""Make torchvision's pure-Python parts import beside the CPU torch when its compiled ops cannot load.

PyPI's torchvision 0.28.0 (the release matching torch 2.13) is a CUDA build. Beside torch
2.13.0+cpu its compiled library ``torchvision/_C.so`` does not load, and ``import torchvision``
then fails in ``torchvision/_meta_registrations.py``: two unguarded
``torch.library.register_fake("torchvision::nms")`` / ``("torchvision::qnms")`` calls need the op
schemas that library would have defined (``RuntimeError: operator torchvision::nms does not exist``).
Everything the CPU path uses is pure Python: ``torchvision.transforms``, the real ``qwen_vl_utils``,
transformers' stock Qwen2-VL image and video processors.

:func:`define_missing_ops` runs before torchvision's first import in every process
(:mod:`papo_tools.cpu_boot`). Where ``_C.so`` loads it does nothing. Where it does not, it defines
the two op schemas (the signatures torchvision's C++ registers) with a kernel that raises a clear
error, so a call of ``torchvision.ops.nms`` fails loudly instead of computing anything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from recipe.papo.compat.guard import log_patched, require_version

SUPPORTED_TORCHVISION = ("0.28.0",)
# The schemas torchvision 0.28.0 registers in C++ (torchvision/csrc/ops/nms.cpp) for the two ops
# whose fake kernels _meta_registrations.py registers unconditionally.
OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
NAMESPACE = "torchvision"
_library = None  # the torch.library.Library holding the definitions (kept alive for the process)


def _compiled_ops_path() -> Path | None:
    spec = importlib.util.find_spec(NAMESPACE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).with_name("_C.so")


def compiled_ops_load() -> bool:
    """Whether torchvision's compiled ops library loads beside the installed torch (loads it if so)."""
    import torch

    path = _compiled_ops_path()
    if path is None or not path.exists():
        return False
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError):
        return False
    return True


def _unavailable(op: str):
    def kernel(*args, **kwargs):
        raise RuntimeError(
            f"torchvision::{op} has no kernel here: torchvision's compiled ops do not load beside this torch "
            "(a CUDA torchvision wheel beside torch's CPU build). papo-verl defines only the op schema so that "
            "torchvision's pure-Python parts import (papo_tools/compat/torchvision_cpu.py, docs/develop.md)."
        )

    return kernel


def define_missing_ops() -> bool:
    """Define ``torchvision::nms`` / ``torchvision::qnms`` when torchvision's compiled ops cannot load.

    Idempotent; call before the first ``import torchvision``. Returns True when it defined them (now
    or earlier in this process), False when torchvision is absent or its compiled ops load.

    Raises:
        recipe.papo.compat.guard.UnsupportedVersionError: the ops are missing and the installed
            torchvision is not the one this was written for.
    """
    global _library
    if _library is not None:
        return True
    if importlib.util.find_spec(NAMESPACE) is None or compiled_ops_load():
        return False
    patch = "torchvision.op_schemas"
    require_version("torchvision", SUPPORTED_TORCHVISION, patch)
    import torch

    library = torch.library.Library(NAMESPACE, "FRAGMENT")
    for op, schema in OP_SCHEMAS.items():
        library.define(schema)
        library.impl(op, _unavailable(op), "CompositeExplicitAutograd")
    _library = library
    log_patched(patch, f"compiled ops do not load beside torch {torch.__version__}; defined {', '.join(OP_SCHEMAS)}")
    return True
