"""Start-up checks that an optional device backend adds to the PAPO run checks.

A backend that is switched on in this process (the CPU backend of ``papo_tools.cpu`` registers one
when ``VERL_PLATFORM=cpu``) adds a check here; :func:`recipe.papo.run_checks.check_papo_run_config`
runs every registered check before Ray starts. The recipe itself never imports a backend.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

# A check gets the composed run config and the model's ``model_type`` (``config.json``; None if
# unknown) and raises ``ValueError`` naming the key and what to set.
BackendCheck = Callable[[DictConfig, "str | None"], None]

_registered: list[BackendCheck] = []


def register_backend_check(check: BackendCheck) -> None:
    """Add ``check`` to the start-up checks of this process (idempotent)."""
    if check not in _registered:
        _registered.append(check)


def run_backend_checks(config: DictConfig, model_type: str | None) -> None:
    """Run every registered backend check in registration order."""
    for check in _registered:
        check(config, model_type)
