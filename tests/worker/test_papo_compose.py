"""PAPO on every policy loss and loss aggregation verl 0.9.1 registers, through verl's real engine.

The support matrix of docs/compose.md, one dimension at a time with the others at PAPO-G's defaults
(``vanilla`` surrogate, ``token-mean``, low_var_kl reference-KL loss 0.01): for each cell

- with the PAPO coefficients at 0 the loss and every parameter gradient are bit-identical to verl's
  own ``ppo_loss`` with that policy loss alone, for 1 and 2 micro-batches;
- with PAPO on, ``papo/loss + papo/base_loss == actor/pg_loss`` after verl's own update and metric
  reduction, for 1 and 2 micro-batches;
- the ``papo/*`` token means and ``papo/loss`` do not depend on the micro-batch split (except where
  docs/compose.md says why: ``seq-mean-token-sum-norm`` without ``actor.loss_scale_factor``).

Plus the measurements behind two entries of the matrix: ``geo_mean``'s surrogate grows with the number
of micro-batches while the PAPO terms do not (so PAPO training on it is refused at start-up), and
``seq-mean-token-sum-norm`` divides by each micro-batch's padded width unless ``loss_scale_factor`` is set.

One worker (tiny Qwen2.5-VL, float32, learning rate 0 so every update sees the same weights) is built
for the module; each cell swaps only the loss function's config, as ``PapoActorRolloutRefWorker.init_papo``
builds it.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import papo_inprocess as inprocess
import pytest
import torch
from verl.trainer.config.algorithm import RolloutCorrectionConfig
from verl.workers.config import PolicyLossConfig
from verl.workers.utils.losses import ppo_loss

from recipe.papo.objective import PapoCoefficients
from recipe.papo.policy_loss import papo_step_metrics

# Builds verl workers, whose apply_monkey_patch replaces model class forwards for the rest of the process.
pytestmark = pytest.mark.own_process

GAMMA, ETA_ORI, ETA_AUG = 0.5, 0.05, 0.03
ON = PapoCoefficients(GAMMA, ETA_ORI, ETA_AUG)
OFF = PapoCoefficients(0.0, 0.0, 0.0)
# (image seed or None, uid, response): ragged responses, the two longest in the first micro-batch of 2.
SAMPLES = [
    (0, "a", "two red squares and a long tail of words"),
    (0, "a", "3 circles"),
    (None, "b", "no image"),
    (1, "c", "1 square"),
]
ADVANTAGES = [1.0, -1.0, 0.5, -0.5]
SPLITS = {"1 micro-batch": 4, "2 micro-batches": 2}
# PAPO-G's defaults for the dimensions a cell does not vary (scripts/common.sh GRPO_ARGS).
PAPO_G = dict(loss_agg_mode="token-mean", use_kl_loss=True, kl_loss_type="low_var_kl", kl_loss_coef=0.01)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One row of docs/compose.md: a base loss and an aggregation, plus the keys that cell needs."""

    loss: str
    agg: str = "token-mean"
    policy_loss: tuple[tuple[str, Any], ...] = ()  # extra actor.policy_loss fields (verl's PolicyLossConfig)
    actor: tuple[tuple[str, Any], ...] = ()  # extra actor fields

    @property
    def id(self) -> str:
        settings = (*self.policy_loss, *self.actor)
        extra = "".join(f",{key}={value}" for key, value in settings if key != "rollout_correction")
        return f"{self.loss}/{self.agg}{extra}"


BYPASS = (("rollout_correction", RolloutCorrectionConfig.bypass_ppo_clip()),)
LOSS_CELLS = [
    Cell("vanilla"),
    Cell("gspo"),
    Cell("sapo"),
    Cell("cispo"),
    Cell("clip_cov"),
    Cell("kl_cov"),
    Cell("dppo_tv"),
    Cell("dppo_kl"),
    Cell("dro", policy_loss=(("dro_beta", 0.1),)),
    Cell("gpg"),
    Cell("bypass_mode", policy_loss=BYPASS),
]
AGG_CELLS = [
    Cell("vanilla", "token-sum"),
    Cell("vanilla", "seq-mean-token-sum"),
    Cell("vanilla", "seq-mean-token-mean"),
    Cell("vanilla", "seq-mean-token-sum-norm"),
    Cell("vanilla", "seq-mean-token-sum-norm", actor=(("loss_scale_factor", 64),)),
]
CELLS = LOSS_CELLS + AGG_CELLS
# PAPO training refused at start-up, papo.monitor allowed (docs/compose.md): bit-for-bit, and measured below.
MONITOR_ONLY = [Cell("geo_mean")]
# Without loss_scale_factor verl divides each micro-batch's loss by its own padded response width.
SPLIT_DEPENDENT_PAPO_LOSS = {Cell("vanilla", "seq-mean-token-sum-norm").id}


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    papo = [f"papo.kl_prcp_coef={GAMMA}", f"papo.entropy_ori_coef={ETA_ORI}", f"papo.entropy_aug_coef={ETA_AUG}"]
    return inprocess.frozen_fp32_worker(tiny_model_dir, papo, prompts=2)


def _nested_like(reference, values: list[torch.Tensor]):
    return torch.nested.as_nested_tensor(values, layout=torch.jagged).to(reference.dtype)


@pytest.fixture(scope="module")
def prepared(worker):
    """The batch as the trainers leave it before an update, with old log-probs moved off the current
    policy (so every surrogate's ratio, clip and mask logic is exercised) and a reference policy."""
    data = inprocess.prepared_batch(worker, SAMPLES, ADVANTAGES)
    old = list(data["old_log_probs"].unbind())
    shift = [0.15 * torch.cos(torch.arange(len(row), dtype=row.dtype) + i) for i, row in enumerate(old)]
    data["old_log_probs"] = _nested_like(data["old_log_probs"], [o + s for o, s in zip(old, shift, strict=True)])
    data["ref_log_prob"] = _nested_like(data["old_log_probs"], [o - 0.05 * s for o, s in zip(old, shift, strict=True)])
    return data


def loss_configs(worker, cell: Cell):
    """``(papo_config, verl_config)``: the worker's ActorConfig with ``cell``'s settings, as the PAPO
    loss sees it (``loss_mode=papo``, ``papo.base_loss_mode=cell.loss``) and as verl alone would
    (``loss_mode=cell.loss``)."""
    actor_config = worker.loss_fn.keywords["config"]
    policy_loss = actor_config.policy_loss
    fields = dict(cell.policy_loss)
    papo_policy_loss = dataclasses.replace(
        policy_loss, papo=dataclasses.replace(policy_loss.papo, base_loss_mode=cell.loss), **fields
    )
    actor_fields = {**PAPO_G, "loss_agg_mode": cell.agg, **dict(cell.actor), "global_batch_info": {}}
    papo_config = dataclasses.replace(actor_config, policy_loss=papo_policy_loss, **actor_fields)
    verl_config = dataclasses.replace(
        actor_config, policy_loss=PolicyLossConfig(loss_mode=cell.loss, **fields), **actor_fields
    )
    return papo_config, verl_config


def papo_loss_fn(worker, config):
    """The worker's own loss (``papo_ppo_loss`` with its ``masked_forward``) on ``config``."""
    return partial(worker.loss_fn.func, **{**worker.loss_fn.keywords, "config": config})


def forward_backward(worker, data, loss_fn):
    """:func:`papo_inprocess.forward_backward` with torch's RNG reset first (``clip_cov`` draws tokens)."""
    torch.manual_seed(0)
    return inprocess.forward_backward(worker, data, loss_fn)


def update_metrics(worker, prepared, config, micro_batch_size: int) -> dict[str, float]:
    """One update (verl's ``update_actor``, metrics reduced as the trainer does) with ``config``'s PAPO loss;
    the ``actor/*`` metrics and the ``papo/*`` step metrics in one dict."""
    worker.actor.set_loss_fn(papo_loss_fn(worker, config))
    try:
        metrics = inprocess.update_actor_metrics(worker, prepared, ON, micro_batch_size=micro_batch_size)
    finally:
        worker.actor.set_loss_fn(worker.loss_fn)
    return {**metrics, **papo_step_metrics(metrics)}


@pytest.fixture(scope="module")
def updates(worker, prepared):
    """``updates(cell)``: the update metrics of ``cell`` per split, computed once."""
    cache: dict[str, dict[str, dict[str, float]]] = {}

    def get(cell: Cell) -> dict[str, dict[str, float]]:
        if cell.id not in cache:
            config = loss_configs(worker, cell)[0]
            cache[cell.id] = {name: update_metrics(worker, prepared, config, size) for name, size in SPLITS.items()}
        return cache[cell.id]

    return get


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("cell", CELLS + MONITOR_ONLY, ids=lambda cell: cell.id)
def test_zero_coefficients_give_verls_own_loss_and_gradient_bit_for_bit(worker, prepared, cell, split):
    papo_config, verl_config = loss_configs(worker, cell)
    data = inprocess.with_engine_update_metadata(prepared, OFF, micro_batch_size=SPLITS[split])
    papo_out, papo_grads = forward_backward(worker, data, papo_loss_fn(worker, papo_config))
    verl_out, verl_grads = forward_backward(worker, data, partial(ppo_loss, config=verl_config))
    assert papo_out["loss"] == verl_out["loss"]
    assert papo_grads.keys() == verl_grads.keys() and len(verl_grads) > 0
    assert all(torch.equal(papo_grads[name], verl_grads[name]) for name in verl_grads)
    assert max(grad.abs().max().item() for grad in verl_grads.values()) > 0
    assert "papo/loss" in papo_out["metrics"]  # the PAPO path ran (terms measured, not added)


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("cell", CELLS, ids=lambda cell: cell.id)
def test_papo_terms_add_up_to_pg_loss(updates, cell, split):
    metrics = updates(cell)[split]
    assert metrics["papo/loss"] + metrics["papo/base_loss"] == pytest.approx(metrics["actor/pg_loss"], rel=1e-5)
    assert abs(metrics["papo/loss"]) > 1e-3 * abs(metrics["actor/pg_loss"])  # the terms are really there
    assert metrics["papo/kl_prcp"] > 0


@pytest.mark.parametrize("cell", CELLS, ids=lambda cell: cell.id)
def test_papo_metrics_do_not_depend_on_the_micro_batch_split(updates, cell):
    one, two = (updates(cell)[split] for split in SPLITS)
    keys = ["papo/kl_prcp", "papo/entropy_ori", "papo/entropy_aug"]
    keys += [] if cell.id in SPLIT_DEPENDENT_PAPO_LOSS else ["papo/loss"]
    for key in keys:
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-9), key


def test_geo_mean_surrogate_grows_with_the_micro_batches_but_the_papo_terms_do_not(updates):
    """Why PAPO training on ``geo_mean`` is refused at start-up (recipe/papo/run_checks.py): verl's
    ``compute_policy_loss_geo_mean`` returns a plain mean over the micro-batch's sequences, so the engine's
    sum over 2 equal micro-batches doubles it, while the PAPO terms are normalised over the mini-batch."""
    one, two = (updates(Cell("geo_mean"))[split] for split in SPLITS)
    assert two["papo/base_loss"] == pytest.approx(2 * one["papo/base_loss"], rel=1e-4)
    assert abs(one["papo/base_loss"]) > 1e-4
    assert two["papo/loss"] == pytest.approx(one["papo/loss"], rel=1e-5)


def test_sum_norm_without_loss_scale_factor_divides_by_each_micro_batchs_width(updates):
    """The caveat of ``seq-mean-token-sum-norm`` in docs/compose.md: without ``actor.loss_scale_factor`` verl
    divides every micro-batch's loss by its own padded response width, the PAPO terms as the surrogate."""
    one, two = (updates(Cell("vanilla", "seq-mean-token-sum-norm"))[split] for split in SPLITS)
    assert two["papo/loss"] != pytest.approx(one["papo/loss"], rel=1e-3)
    assert two["papo/loss"] + two["papo/base_loss"] == pytest.approx(two["actor/pg_loss"], rel=1e-5)
    for key in ("papo/kl_prcp", "papo/entropy_ori", "papo/entropy_aug"):  # the token means still agree
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
