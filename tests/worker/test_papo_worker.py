"""Worker level: masked log-probs, and which branch carries gradient in each mode, on the real engine."""

from __future__ import annotations

from functools import partial
from typing import Any

import papo_inprocess as inprocess
import pytest
import torch
from eager_masks import mask_batch_now
from verl.workers.utils.losses import ppo_loss

from recipe.papo.batch_keys import IMAGE_ROW_KEY, MASKED_LOG_PROBS_KEY
from recipe.papo.objective import PapoCoefficients

# Builds verl workers, whose apply_monkey_patch replaces model class forwards for the rest of the process.
pytestmark = pytest.mark.own_process

SAMPLES = [(0, "a", "3 circles"), (0, "a", "two"), (None, "b", "no image here"), (1, "c", "1 square")]
ADVANTAGES = [1.0, -1.0, 0.5, -0.5]


@pytest.fixture(scope="module")
def precompute_worker(make_worker):
    return make_worker()


@pytest.fixture(scope="module")
def recompute_worker(make_worker):
    return make_worker("papo.masked_logprob_mode=recompute")


@pytest.fixture
def batch(precompute_worker):
    samples = [
        ([] if seed is None else [inprocess.random_image(seed)], uid, "How many shapes?", text)
        for seed, uid, text in SAMPLES
    ]
    return inprocess.worker_batch(precompute_worker, samples, step=3)


def bf16_step(values: torch.Tensor) -> torch.Tensor:
    """Per value, the spacing of bfloat16 numbers at its magnitude (8 significant bits)."""
    return torch.exp2(torch.floor(torch.log2(values.float().abs())) - 7)


@pytest.mark.parametrize("shared", [False, True], ids=["full_pass", "shared_pass"])
def test_masked_log_probs_differ_on_image_rows_and_equal_on_text_rows(precompute_worker, batch, shared):
    """The text-only row sees its original inputs. The full pass runs it as the plain forward does: bitwise
    equal. The shared pass runs it as a prompt call and a response call (bf16 compute): within one bf16 step
    of each log-prob (measured: at most one step, 1/32 at -6.03; in float32 <= 1e-5,
    ``test_shared_masked_pass.py``). Qwen3.5 has no shared pass: its full pass runs either way."""
    old = list(inprocess.response_log_probs(precompute_worker, batch).unbind())
    with inprocess.masked_pass_shared(precompute_worker, shared):
        out = precompute_worker.compute_masked_log_prob(batch.copy())
    masked = list(out[MASKED_LOG_PROBS_KEY].unbind())
    assert out[IMAGE_ROW_KEY].tolist() == [True, True, False, True]
    for row in (0, 1, 3):
        assert (old[row] - masked[row]).abs().max() > 1e-4, f"image row {row} unchanged by masking"
    if shared and precompute_worker.shared_masked_pass is not None:  # Qwen3.5: the full pass (test_shared_masked_pass)
        difference = (old[2].float() - masked[2].float()).abs()
        assert (difference <= bf16_step(old[2])).all(), f"text-only row: {difference.max():.4g}"
    else:
        assert torch.equal(old[2], masked[2]), "text-only row must see identical inputs"


def training_batch(worker, data, coefs, advantages=ADVANTAGES):
    """``data`` plus what the trainers write before the update, in micro-batches of 2 rows."""
    return inprocess.training_batch(worker, data, PapoCoefficients(*coefs), advantages, micro_batch_size=2)


def max_grad_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_zero_coefficients_give_grpos_loss_and_gradient(precompute_worker, batch):
    actor_config = precompute_worker.loss_fn.keywords["config"]
    data = training_batch(precompute_worker, batch, coefs=(0.0, 0.0, 0.0))
    papo_loss, papo_grads = inprocess.loss_and_grads(precompute_worker, data)
    grpo_loss, grpo_grads = inprocess.loss_and_grads(
        precompute_worker, data, partial(ppo_loss, config=inprocess.vanilla_config(actor_config))
    )
    assert papo_loss == grpo_loss
    assert max_grad_difference(papo_grads, grpo_grads) == 0.0
    assert max(g.abs().max().item() for g in grpo_grads.values()) > 0


def test_positive_gamma_reaches_the_model_gradient(precompute_worker, batch):
    grads = {}
    for gamma in (0.0, 0.5):
        data = training_batch(precompute_worker, batch, coefs=(gamma, 0.0, 0.0))
        grads[gamma] = inprocess.loss_and_grads(precompute_worker, data)[1]
    assert max_grad_difference(grads[0.0], grads[0.5]) > 1e-6


def test_h_aug_has_no_gradient_when_precomputed_and_gradient_when_recomputed(
    precompute_worker, recompute_worker, batch
):
    """Only eta_aug > 0 and zero advantages: the whole gradient is H_aug's.

    Precompute mode with the shared masked pass (the default) and with the full one; the full pass runs the
    same masked sequences as recompute mode's masked forward, so its H_aug value is recompute mode's.
    """
    zero_advantages = [0.0] * 4
    results = {}
    runs = (
        ("precompute", precompute_worker, True),
        ("precompute, full pass", precompute_worker, False),
        ("recompute", recompute_worker, True),
    )
    for name, worker, shared in runs:
        with inprocess.masked_pass_shared(worker, shared):
            data = training_batch(worker, batch, coefs=(0.0, 0.0, 1.0), advantages=zero_advantages)
        loss, grads = inprocess.loss_and_grads(worker, data)
        results[name] = (loss, max(g.abs().max().item() for g in grads.values()))
    assert results["precompute"][1] == 0.0
    assert results["precompute, full pass"][1] == 0.0
    assert results["recompute"][1] > 1e-6
    # same H_aug value either way: the recomputed masked forward sees the same masked inputs
    assert results["precompute, full pass"][0] == pytest.approx(results["recompute"][0], rel=1e-4)


def count_masked_rows_at_each_forward(worker, monkeypatch) -> tuple[list[str], list[int], Any]:
    """Instrument ``worker``: returns the uids its builder masks (a list, filled as it masks), at every
    forward of the actor module how many rows had been masked by then (a list), and the forward hook's
    handle (the caller removes it; ``monkeypatch`` restores ``mask_row``)."""
    builder = worker.masked_input_builder
    masked_uids: list[str] = []
    at_forward: list[int] = []
    mask_row = builder.mask_row

    def counting(inputs, uid, step, *args, **kwargs):
        masked_uids.append(uid)
        return mask_row(inputs, uid, step, *args, **kwargs)

    monkeypatch.setattr(builder, "mask_row", counting)
    handle = worker.actor.engine.module.register_forward_pre_hook(
        lambda module, args: at_forward.append(len(masked_uids))
    )
    return masked_uids, at_forward, handle


@pytest.mark.parametrize("shared", [False, True], ids=["full_pass", "shared_pass"])
def test_precompute_masks_each_micro_batch_when_forwarded_and_matches_whole_batch_masking(
    precompute_worker, batch, monkeypatch, shared
):
    """Item 1 of issue 22: the masked pass builds a micro-batch's masked inputs only when that micro-batch
    is forwarded (so their memory is bounded by one micro-batch). The full pass's log-probs are bitwise
    equal to masking the whole batch up front (the previous behaviour, ``eager_masks.mask_batch_now`` in tests/support).
    The shared pass makes two model calls per micro-batch (its prompts, then its responses) and masks a
    micro-batch's new prompts just before the first."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import response_from_nested

    worker = precompute_worker
    shared = shared and worker.shared_masked_pass is not None  # Qwen3.5 has none: the full pass runs
    data = batch.copy()
    # Two micro-batches of 2 rows: [a, a] and [b (text only), c].
    tu.assign_non_tensor(data, micro_batch_size_per_gpu=2, use_dynamic_bsz=False)
    masked_uids, at_forward, handle = count_masked_rows_at_each_forward(worker, monkeypatch)
    try:
        with inprocess.masked_pass_shared(worker, shared):
            lazy = worker.compute_masked_log_prob(data.copy())[MASKED_LOG_PROBS_KEY]
        expected = [1, 1, 2, 2] if shared else [1, 2]  # shared: prompt call, response call per micro-batch
        assert at_forward == expected, f"masked rows built before each forward: {at_forward}"
        assert masked_uids == ["a", "c"]  # the 2nd rollout of prompt a shares the 1st's mask
        eager_batch, _ = mask_batch_now(worker.masked_input_builder, data.copy(), step=3)
        eager = response_from_nested(worker.actor.infer_batch(eager_batch)["log_probs"], data["response_mask"])
    finally:
        handle.remove()
    if shared:  # the shared pass against the full one: tests/worker/test_shared_masked_pass.py
        return
    for row, (x, y) in enumerate(zip(lazy.unbind(), eager.unbind(), strict=True)):
        assert torch.equal(x, y), f"row {row}: per-micro-batch masking changed the masked log-probs"


def test_recompute_masks_each_update_micro_batch_inside_its_forward(recompute_worker, batch, monkeypatch):
    """In ``recompute`` mode each update micro-batch masks itself, between its two forwards."""
    data = training_batch(recompute_worker, batch, coefs=(0.5, 0.0, 0.0))
    masked_uids, at_forward, handle = count_masked_rows_at_each_forward(recompute_worker, monkeypatch)
    try:
        inprocess.loss_and_grads(recompute_worker, data)
    finally:
        handle.remove()
    # forwards: original [a, a], masked [a, a], original [b, c], masked [b, c]
    assert at_forward == [0, 1, 1, 2]
    assert masked_uids == ["a", "c"]
