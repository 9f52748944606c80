"""Patches of verl that apply on every device (GPU runs included).

Only one today: the mRoPE ``position_ids`` repair of equal-length batches. It is written against
verl 0.9.1 with TransferQueue 0.1.x, but it is guarded by *detecting the defect* rather than by the
version: :func:`install_position_ids_fix` first runs verl's own ``maybe_fix_3d_position_ids`` on
a probe batch and patches only if verl corrupts it, so a verl release that fixes the defect is
left alone.

The defect. The v1 trainer stores each sample's mRoPE position ids, a ``(4, seq_len)`` tensor for
Qwen2/2.5-VL, in TransferQueue; reading a batch back packs them with
``torch.nested.as_nested_tensor(samples, layout=torch.jagged)``. torch makes the *first* dimension
whose sizes differ the ragged one, so

- lengths differ: shape ``(B, 4, j)``, ragged dim 2, values ``(4, sum L)``: what verl expects;
- every length equal: no dimension differs, torch picks dim 1: shape ``(B, j, L)``, ragged dim 1,
  values ``(4 * B, L)``, offsets ``[0, 4, 8, ...]``.

``verl.utils.tensordict_utils.maybe_fix_3d_position_ids`` (called by the actor update, by
``compute_log_prob`` and per micro-batch) sets ``_ragged_idx = 2`` on any 3-D nested
``position_ids``. That is right for its intended case (a ``(B, 4, j)`` tensor whose ragged index
was reset to 1 by a tensordict consolidate + pickle round trip, values still ``(4, sum L)``) but
corrupts the equal-length tensor: the actor update's mini-batch ``index_select`` then fails inside
torch (``split_with_sizes``) and remove-padding reads ``values()`` of the wrong shape. Equal
lengths are common with short response limits (every response hits the limit).

The fix tells the two ragged-dim-1 states apart by where the offsets point (a genuine
ragged-dim-1 tensor has ``offsets[-1] == values.shape[0]``; the pickled ``(B, 4, j)`` tensor has
``offsets[-1] == values.shape[1]`` with ``values.shape[0] == 4``), rebuilds the equal-length one
ragged along the tokens, keeps verl's behaviour for the other, and raises a clear error if the
result is still inconsistent. Both readings coincide only for a batch whose total token count
equals the channel count, i.e. never for a real prompt.

Upstream. The same defect is reported to verl (states as checked when this was written):

- https://github.com/verl-project/verl/issues/7899 (open): this exact crash in the v1 trainer
  (``split_with_sizes`` after ``maybe_fix_3d_position_ids`` sets ``_ragged_idx = 2`` on an
  equal-length or one-sample batch); its fix, https://github.com/verl-project/verl/pull/7901, is an
  open pull request (a validating ``normalize_3d_position_ids`` behind ``maybe_fix_3d_position_ids``,
  and write sites that build ragged-along-tokens tensors);
- https://github.com/verl-project/verl/pull/5829 (closed without merging): the same
  ``split_with_sizes`` crash on the engine worker with a small batch, and the hard-coded
  ``_ragged_idx``;
- https://github.com/verl-project/verl/issues/6073 (open): the same jagged-dimension flip for
  equal-length micro-batches on the SFT path. https://github.com/verl-project/verl/pull/6127
  (merged in April 2026, so in 0.9.x) fixed it where verl *rebuilds* nested tensors after
  selecting or chunking, but not in ``maybe_fix_3d_position_ids``, which verl 0.9.1 and verl's main
  branch of late August 2026 still have unchanged.

When to drop it. Once the verl that ``pyproject.toml`` pins fixes issue 7899 (verl 0.9.1, the pin,
does not), delete this module and its three calls (``PapoTrainer.__init__``,
``PapoActorRolloutRefWorker.init_model``, ``papo_tools.cpu.activate``). On such a verl
:func:`install_position_ids_fix` already steps aside and logs "verl's own function handles
equal-length mRoPE batches; not patched", and
``tests/compat/test_compat.py::test_position_ids_fix_detects_the_defect_in_verl_0_9_1`` fails:
that failure is the signal. ``tests/cpu/test_position_ids.py`` keeps checking equal-length batches
through the actor update either way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from tensordict import TensorDict

from .guard import UnsupportedVersionError, log_patched

POSITION_IDS_PATCH = "verl.maybe_fix_3d_position_ids"
_FUNCTION = "maybe_fix_3d_position_ids"
# Modules of verl 0.9.1 that import the function by name (``from ... import maybe_fix_3d_position_ids``).
_IMPORTERS = ("verl.workers.engine_workers", "verl.workers.engine.base", "verl.workers.engine_workers_tinker")
_TOKEN_DIM = 2


def _ragged_along_tokens(position_ids: torch.Tensor) -> torch.Tensor:
    """The same samples as a jagged ``(B, channels, j)`` tensor, ragged along the token dim."""
    samples = position_ids.unbind()
    lengths = torch.tensor([sample.shape[-1] for sample in samples], dtype=torch.int64)
    offsets = torch.nn.functional.pad(torch.cumsum(lengths, dim=0), (1, 0))
    return torch.nested.nested_tensor_from_jagged(
        torch.cat(samples, dim=-1), offsets.to(position_ids.device), jagged_dim=_TOKEN_DIM
    )


def _offsets_span_dim(position_ids: torch.Tensor, values_dim: int) -> bool:
    return int(position_ids.offsets()[-1]) == position_ids.values().shape[values_dim]


def maybe_fix_3d_position_ids(data: TensorDict) -> None:
    """Make a 3-D nested ``data["position_ids"]`` ragged along its token dimension (in place).

    Drop-in replacement for verl 0.9.1's function of the same name; see the module docstring.

    Raises:
        ValueError: the nested tensor fits neither known layout.
    """
    if "position_ids" not in data.keys():
        return
    position_ids = data["position_ids"]
    if not (position_ids.is_nested and position_ids.dim() == 3) or position_ids._ragged_idx == _TOKEN_DIM:
        return
    if _offsets_span_dim(position_ids, 0):
        # Equal lengths: a valid tensor ragged along the channels; its samples are intact.
        data["position_ids"] = _ragged_along_tokens(position_ids)
    else:
        # verl's case: the ragged index was lost in a consolidate + pickle round trip.
        position_ids._ragged_idx = _TOKEN_DIM
        if not _offsets_span_dim(position_ids, _TOKEN_DIM - 1):
            raise ValueError(
                f"cannot repair nested position_ids: shape {tuple(position_ids.shape)}, values "
                f"{tuple(position_ids.values().shape)}, offsets ending at {int(position_ids.offsets()[-1])}"
            )


def corrupts_equal_length_batches(fix: Callable[[TensorDict], None]) -> bool:
    """True if ``fix`` leaves an equal-length mRoPE batch unusable (the defect this module fixes).

    Probe: two ``(4, 3)`` samples packed as TransferQueue packs them (ragged along the channels);
    a correct ``fix`` must leave them ragged along the tokens with every sample intact.
    """
    samples = [torch.arange(12).view(4, 3) + 100 * index for index in range(2)]
    data = TensorDict({"position_ids": torch.nested.as_nested_tensor(samples, layout=torch.jagged)}, batch_size=[2])
    try:
        fix(data)
        repaired = data["position_ids"]
        return not (
            repaired._ragged_idx == _TOKEN_DIM
            and all(torch.equal(got, want) for got, want in zip(repaired.unbind(), samples, strict=True))
        )
    except (RuntimeError, ValueError, IndexError):
        return True


def install_position_ids_fix() -> bool:
    """Replace verl's ``maybe_fix_3d_position_ids`` if (and only if) it has the defect (idempotent).

    Returns:
        True if :func:`maybe_fix_3d_position_ids` is in place after the call, False if verl's own
        function handles equal-length batches and was left alone.

    Raises:
        UnsupportedVersionError: verl has no ``verl.utils.tensordict_utils.maybe_fix_3d_position_ids``
            (a verl this patch does not know).
    """
    import verl.utils.tensordict_utils as tensordict_utils

    current = getattr(tensordict_utils, _FUNCTION, None)
    if current is maybe_fix_3d_position_ids:
        return True
    if current is None:
        raise UnsupportedVersionError(
            f"recipe.papo.compat: {POSITION_IDS_PATCH}: this verl has no verl.utils.tensordict_utils.{_FUNCTION}; "
            "the mRoPE position_ids repair was written for verl 0.9.1. Check whether equal-length batches of a "
            "vision-language model still work and update recipe/papo/compat/verl.py."
        )
    if not corrupts_equal_length_batches(current):
        log_patched(POSITION_IDS_PATCH, "verl's own function handles equal-length mRoPE batches; not patched")
        return False
    setattr(tensordict_utils, _FUNCTION, maybe_fix_3d_position_ids)
    patched = ["verl.utils.tensordict_utils"]
    for name in _IMPORTERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, _FUNCTION, None) is current:
            setattr(module, _FUNCTION, maybe_fix_3d_position_ids)
            patched.append(name)
    log_patched(POSITION_IDS_PATCH, f"replaced {_FUNCTION} (equal-length mRoPE batches) in {', '.join(patched)}")
    return True
