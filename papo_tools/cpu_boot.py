"""Start-up hook of a CPU install: fixes that must be in place before torchvision or vLLM is imported.

``make install`` on a machine without CUDA writes ``papo_cpu_boot.pth`` into the venv's
site-packages (:func:`write_pth`); Python runs its one line at every interpreter start, in every
process that uses the venv: the driver, every Ray worker and vLLM's spawned engine processes (which
import neither verl nor this project, so verl's ``VERL_USE_EXTERNAL_MODULES`` cannot reach them).

At start-up this module only puts one finder on ``sys.meta_path`` (no import of torch). The finder acts
when a hooked module is first imported, and each fix steps aside where it is not needed:

- before ``torchvision``: :func:`papo_tools.compat.torchvision_cpu.define_missing_ops` (only when
  torchvision's compiled ops do not load beside the installed torch);
- before ``vllm``, with the CPU build ``vllm-cpu`` installed: ``VLLM_TARGET_DEVICE=cpu`` (unless set),
  inherited by vLLM's child processes;
- after ``vllm.model_executor.layers.utils``: :func:`papo_tools.compat.vllm_cpu.keep_linear_weights`;
- ``importlib.metadata`` lookups of the distribution ``vllm`` answered with ``vllm-cpu``'s metadata when
  only the CPU build is installed (:class:`papo_tools.compat.vllm_cpu.VllmDistributionAlias`).

Nothing here runs on a GPU machine: ``make install`` writes the ``.pth`` file only where there is no
``nvidia-smi``. See docs/develop.md.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

PTH_NAME = "papo_cpu_boot.pth"
# One line: Python's site module executes .pth lines that start with "import".
PTH_LINE = "import papo_tools.cpu_boot; papo_tools.cpu_boot.install()\n"


def _fixes(name: str) -> ModuleType | None:
    """``papo_tools.compat.<name>``, or None in an interpreter where the project is not importable."""
    import importlib

    try:
        return importlib.import_module(f"papo_tools.compat.{name}")
    except ImportError:
        return None


def _before_torchvision(_module: ModuleType) -> None:
    if (fixes := _fixes("torchvision_cpu")) is not None:
        fixes.define_missing_ops()


def _before_vllm(_module: ModuleType) -> None:
    if (fixes := _fixes("vllm_cpu")) is not None:
        fixes.set_target_device()


def _after_vllm_layer_utils(module: ModuleType) -> None:
    if (fixes := _fixes("vllm_cpu")) is not None:
        fixes.keep_linear_weights(module)


# module name -> (run before its code, run after its code)
HOOKS: dict[str, tuple[Callable[[ModuleType], None] | None, Callable[[ModuleType], None] | None]] = {
    "torchvision": (_before_torchvision, None),
    "vllm": (_before_vllm, None),
    "vllm.model_executor.layers.utils": (None, _after_vllm_layer_utils),
}


class _HookedLoader(importlib.abc.Loader):
    """Wraps a module's real loader: runs the before-hook, the module's code, then the after-hook."""

    def __init__(self, loader: importlib.abc.Loader, before, after) -> None:
        self.loader, self.before, self.after = loader, before, after

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if self.before is not None:
            self.before(module)
        self.loader.exec_module(module)
        if self.after is not None:
            self.after(module)


class ImportHooks(importlib.abc.MetaPathFinder):
    """Finds the hooked modules through the other finders and wraps their loaders (:data:`HOOKS`)."""

    def find_spec(self, fullname: str, path=None, target=None):
        hooks = HOOKS.get(fullname)
        if hooks is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader, *hooks)
        return spec

    def find_distributions(self, context=None):
        name = getattr(context, "name", None)
        if name is None or name.lower().replace("_", "-") != "vllm":
            return []  # every other lookup (pip, setuptools, entry points) never reaches the project's code
        fixes = _fixes("vllm_cpu")
        return [] if fixes is None else fixes.VllmDistributionAlias.find(context)


def install() -> None:
    """Put :class:`ImportHooks` on ``sys.meta_path`` (idempotent; the ``.pth`` line calls this)."""
    if any(type(finder).__name__ == ImportHooks.__name__ for finder in sys.meta_path):
        return
    # First for imports; importlib.metadata asks every finder, so the real "vllm" distribution
    # (a CUDA install) still wins where it exists (VllmDistributionAlias steps aside then).
    sys.meta_path.insert(0, ImportHooks())


def write_pth(site_packages: str | Path | None = None) -> Path:
    """Write ``papo_cpu_boot.pth`` into ``site_packages`` (default: this interpreter's purelib)."""
    if site_packages is None:
        import sysconfig

        site_packages = sysconfig.get_paths()["purelib"]
    path = Path(site_packages) / PTH_NAME
    path.write_text(PTH_LINE)
    return path


if __name__ == "__main__":
    print(f"wrote {write_pth()}")
