"""Version guards and one-time logging shared by the compat patches.

Every patch in :mod:`recipe.papo.compat` (and the CPU-only ones in :mod:`papo_tools.compat`) first
asks :func:`require_version` whether the installed package is one the patch was written against, and
reports what it changed through :func:`log_patched` (once per process and patch).
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

logger = logging.getLogger("recipe.papo.compat")

_logged: set[str] = set()


class UnsupportedVersionError(RuntimeError):
    """The installed version of a patched package is not one the patch was written against."""


def installed_version(distribution: str) -> str:
    """The installed version string of ``distribution`` (e.g. ``"verl"``), or ``"not installed"``."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def require_version(distribution: str, supported: tuple[str, ...], patch: str) -> str:
    """Return the installed version of ``distribution``; raise unless it is one of ``supported``.

    Args:
        distribution: the package's distribution name (``"verl"``).
        supported: exact versions the patch was written against and tested on.
        patch: a short name of the patch, for the error message.

    Raises:
        UnsupportedVersionError: naming the patch, the installed and the supported versions and
            what to do (install a supported version, or update the patch in ``recipe/papo/compat/``).
    """
    installed = installed_version(distribution)
    if installed not in supported:
        raise UnsupportedVersionError(
            f"recipe.papo.compat: the patch '{patch}' was written for {distribution} {' / '.join(supported)} "
            f"but {distribution} {installed} is installed. Install a supported version "
            f"(pip install '{distribution}=={supported[-1]}') or update the patch in recipe/papo/compat/ "
            "after checking what it replaces (see docs/develop.md)."
        )
    return installed


def log_patched(patch: str, detail: str) -> None:
    """Log ``detail`` at INFO once per process for ``patch``."""
    if patch not in _logged:
        _logged.add(patch)
        logger.info("recipe.papo.compat: %s: %s", patch, detail)
