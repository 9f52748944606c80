"""A batch's masked inputs all built at once, as plain dicts (what the masked pass did before issue 22).

Test and benchmark support: importable as ``eager_masks`` once ``tests/support`` is on ``sys.path``
(``tests/conftest.py`` and ``benchmarks/bench_common.py`` put it there). The PAPO worker never does
this: its rows stay lazy and are built one micro-batch at a time
(:meth:`recipe.papo.masked_inputs.MaskedInputBuilder.mask_batch`).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

from recipe.papo.batch_keys import MULTI_MODAL_INPUTS_KEY
from recipe.papo.masked_inputs import LazyMaskedInputs, MaskedInputBuilder


def mask_batch_now(builder: MaskedInputBuilder, data: TensorDict, step: int) -> tuple[TensorDict, torch.Tensor]:
    """``builder.mask_batch(data, step)`` with every row's masked inputs built now, in row order.

    Returns:
        ``(masked batch, (batch,) bool has-image)``: the masked ``multi_modal_inputs`` are plain dicts,
        so the whole batch's masked ``pixel_values`` exist at once (the rollouts of a prompt, read one
        after the other, share one tensor as in the worker).
    """
    masked, has_image = builder.mask_batch(data, step)
    rows = [row.build() if isinstance(row, LazyMaskedInputs) else row for row in tu.get(masked, MULTI_MODAL_INPUTS_KEY)]
    tu.assign_non_tensor_stack(masked, MULTI_MODAL_INPUTS_KEY, rows)
    return masked, has_image
