"""CPU backend that lets verl 0.9.1's real v1 trainer run end to end without a GPU.

Off unless switched on. The switch is the environment variable ``VERL_PLATFORM=cpu`` (verl's own
platform selector, ``verl/plugin/platform/platform_manager.py``); importing this package without it
does nothing. Nothing in the recipe (:mod:`recipe.papo`) imports it.

How it reaches every process: set ``VERL_USE_EXTERNAL_MODULES=papo_tools.cpu``. verl 0.9.1's
``verl/__init__.py`` imports every module named there right after its own core imports, in every
process that imports verl: the driver, the task runner and every Ray actor (Ray passes the
environment to its workers). Platform selection is lazy (first ``get_platform()`` call), so the
"cpu" platform is registered before anything asks for it.

What :func:`activate` installs, one module per concern (each documents the verl code it plugs into);
every patch of verl itself goes through :mod:`papo_tools.compat` or :mod:`recipe.papo.compat`
(version-checked, see docs/develop.md):

- :mod:`.platform`: the "cpu" platform (device "cpu", backend "gloo", Ray resource "GPU").
- ``"cpu:gloo"`` as the worker process-group backend (:mod:`papo_tools.compat.verl_cpu`).
- :mod:`.engines`: verl's FSDP engines registered for device "cpu".
- :mod:`.hf_replica`, :mod:`.hf_server`, :mod:`.hf_adapter`: the rollout named "hf"
  (HF ``generate`` in a named Ray actor; vision placeholder tokens suppressed), for the tests of
  trainer mechanics and the dynamics experiment; ``SMOKE=1`` and ``make demo`` run verl's own vLLM
  rollout on the CPU build of vLLM (:func:`.launch.rollout_overrides`).

What runs before any of this, in every process of a CPU install, is :mod:`papo_tools.cpu_boot`
(torchvision and vLLM fixes that must precede their first import).
- :mod:`.varlen_attention`: torch attention over packed sequences, so verl's remove-padding path
  (``use_remove_padding=True``, also needed by Ulysses sequence parallelism) runs without flash-attn.
- the reference model's FSDP2 offload without pinned memory (``use_kl_loss=True`` on CPU).
- the equal-length mRoPE ``position_ids`` repair (not CPU-specific; :mod:`recipe.papo.compat.verl`).

:mod:`.launch` returns the environment and Hydra overrides of a CPU run.
"""

from __future__ import annotations

import os

SWITCH_ENV = "VERL_PLATFORM"
SWITCH_VALUE = "cpu"

_active = False


def is_enabled() -> bool:
    """True when the CPU backend is switched on (``VERL_PLATFORM=cpu``)."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() == SWITCH_VALUE


def activate() -> None:
    """Install every piece of the CPU backend in this process (idempotent)."""
    global _active
    if _active:
        return
    from papo_tools.compat import verl_cpu
    from recipe.papo.backend_checks import register_backend_check
    from recipe.papo.compat import verl as verl_compat

    from . import engines, hf_replica, platform, varlen_attention
    from .launch import check_cpu_sequence_parallel

    platform.register()  # first: verl modules imported below ask for the device name at import time
    verl_cpu.install_process_group_backend()
    engines.register()
    hf_replica.register()
    verl_cpu.install_varlen_attention(varlen_attention.varlen_attention, varlen_attention.dense_attention)
    verl_cpu.install_unpinned_reference_offload()
    verl_compat.install_position_ids_fix()
    register_backend_check(check_cpu_sequence_parallel)  # Ulysses SP where the CPU cannot run it: refused
    _active = True


if is_enabled():
    activate()
