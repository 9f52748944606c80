"""The PAPO actor worker: verl 0.9.1's engine ``ActorRolloutRefWorker`` plus masked-image log-probs.

* ``init_model`` is verl's (after the ``position_ids`` repair, :mod:`recipe.papo.compat.verl`).
* ``init_papo``, called once by the PAPO trainer right after ``init_model`` (as verl's trainer calls
  ``set_loss_fn`` on its critic), receives the run-constant setting the worker's own config lacks
  (``data.mm_processor_kwargs``: verl hands a worker only ``actor_rollout_ref``), builds the
  :class:`recipe.papo.masked_inputs.MaskedInputBuilder` and installs
  :func:`recipe.papo.policy_loss.papo_ppo_loss` as the actor's loss (verl's ``ppo_loss`` + the PAPO
  inputs of each micro-batch). The PAPO options come from the actor config
  (``actor.policy_loss.papo``), where the registered loss reads them too.
* ``compute_masked_log_prob`` (``papo.masked_logprob_mode=precompute``, the authors' default): one
  no-grad pass of the pre-update policy over the batch with masked ``multi_modal_inputs``,
  micro-batched exactly like old log-probs (``rollout.log_prob_micro_batch_size_per_gpu``). The masked
  inputs are built per micro-batch, when the engine reads them (``mask_batch``'s lazy rows), so the
  pass holds the masked ``pixel_values`` of one micro-batch at a time. It writes
  ``papo_masked_log_probs`` (response tokens) and ``papo_has_image``. The masked log-probs are
  constants during the update: KL_prcp's gradient flows through log pi_theta(o|I) only and H_aug
  has zero gradient. With ``papo.share_masked_prompt`` (default) the pass runs each prompt's masked
  prompt once and its rollouts' responses against it (:mod:`recipe.papo.shared_pass`); where that
  cannot apply, the full pass runs, and ``init_papo`` prints one line saying which and why.
* ``recompute`` mode: the masked forward runs *with gradient* inside every update micro-batch
  (:func:`masked_log_probs_with_grad`), so H_aug and both KL branches carry gradient; the
  per-step call only reports ``papo_has_image``. The engine's per-micro-batch forward is not part of
  verl's engine interface: :mod:`recipe.papo.compat.verl_engine` checks it when the worker starts.

* VPPO's advantage shaping (``papo.vppo_beta_min``, docs/vppo.md): ``init_papo`` wraps the actor's
  per-mini-batch ``train_batch`` so that, before each update mini-batch, :func:`assign_vppo_weights`
  writes every row's weight w_i, with min, max and mean taken over the global mini-batch (all-reduced
  over the data-parallel group), hence independent of the micro-batch split and the GPU count. With
  ``papo.vppo_shaping_stats=micro_batch`` it writes each row's n_i normalised by this rank's min and
  max instead, and the loss takes the mean over its micro-batch (the published statistics).

The batch fields read and written here are named in :mod:`recipe.papo.batch_keys`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from tensordict import TensorDict
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.utils.profiler import DistProfiler
from verl.workers.config import ActorConfig
from verl.workers.engine_workers import ActorRolloutRefWorker
from verl.workers.utils.padding import response_from_nested

from . import register as _register  # noqa: F401  (registries in this process)
from . import vppo
from .batch_keys import (
    IMAGE_ROW_KEY,
    MASKED_LOG_PROBS_KEY,
    MULTI_MODAL_INPUTS_KEY,
    STEP_KEY,
    VPPO_NORM_KEY,
    VPPO_WEIGHT_KEY,
)
from .compat.shared_prompt import unsupported_reason, uses_flash_attention
from .compat.verl import install_position_ids_fix
from .compat.verl_engine import built_actor_config, check_engine_forward_step, forward_log_probs_with_grad
from .compat.verl_train_batch import run_before_each_mini_batch
from .config import PapoConfig
from .masked_inputs import MaskedInputBuilder, rows_with_images
from .policy_loss import papo_ppo_loss
from .shared_pass import SharedMaskedPass


def masking_step(data: TensorDict) -> int:
    """The global step a batch is masked for (:data:`recipe.papo.batch_keys.STEP_KEY`), part of the mask seed.

    Raises:
        KeyError: the batch has no step: the PAPO trainer writes it into the call that masks.
    """
    step = tu.get(data, STEP_KEY)
    if step is None:
        raise KeyError(
            f"the batch has no {STEP_KEY}: the PAPO trainer writes it each step into the call that masks "
            "(compute_masked_log_prob in precompute mode, update_actor in recompute mode)"
        )
    return int(step)


def masked_log_probs_with_grad(micro_batch: TensorDict, engine: Any, builder: MaskedInputBuilder) -> torch.Tensor:
    """Full-sequence nested log pi(o_t | q, I_mask) of one micro-batch, with gradient.

    Runs the engine's own per-micro-batch forward (input preparation, autocast, module, output
    processing; :func:`recipe.papo.compat.verl_engine.forward_log_probs_with_grad`) on a copy of the
    micro-batch whose ``multi_modal_inputs`` are masked. Called from inside the engine's forward of
    the original micro-batch (the PAPO loss), so before its ``backward``.
    """
    masked, _ = builder.mask_batch(micro_batch, step=masking_step(micro_batch))
    tu.assign_non_tensor(masked, calculate_entropy=False, calculate_sum_pi_squared=False)
    return forward_log_probs_with_grad(engine, masked)


def assign_vppo_weights(
    data: TensorDict, beta_min: float, group: Any = None, stats: str = "global"
) -> vppo.ShapingStats:
    """Write VPPO's advantage weights w_i of one global mini-batch into ``data`` (:data:`VPPO_WEIGHT_KEY`).

    Args:
        data: this rank's part of an update mini-batch, with ``old_log_probs`` and the masked
            log-probs (nested ``(batch, response_len)``), ``response_mask`` and the has-image flags.
        beta_min: ``papo.vppo_beta_min``.
        group: the data-parallel process group the mini-batch is spread over (``None``: this rank).
        stats: ``papo.vppo_shaping_stats``; with ``micro_batch`` it writes each row's n_i by this
            rank's min and max (:data:`VPPO_NORM_KEY`, :func:`recipe.papo.vppo.rank_normalised_scores`)
            instead, whatever ``group``, and the loss computes the weights per micro-batch.

    Returns:
        The reduced shaping statistics (:class:`recipe.papo.vppo.ShapingStats`; this rank's with
        ``micro_batch``).
    """
    mask = data["response_mask"].to_padded_tensor(0).to(torch.bool)
    width = mask.shape[-1]
    old = data["old_log_probs"].to_padded_tensor(0.0)[..., :width]
    masked = data[MASKED_LOG_PROBS_KEY].to_padded_tensor(0.0)[..., :width]
    scores = vppo.sequence_scores(vppo.visual_dependency(old, masked), mask)
    rows = data[IMAGE_ROW_KEY].to(torch.bool) & mask.any(-1)
    if stats == "micro_batch":
        data[VPPO_NORM_KEY], shaping = vppo.rank_normalised_scores(scores, rows)
        return shaping
    weights, shaping = vppo.shaping_weights(scores, rows, beta_min, group)
    data[VPPO_WEIGHT_KEY] = weights
    return shaping


class PapoActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's hybrid actor/rollout/ref worker with the PAPO loss and the masked-image pass."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        install_position_ids_fix()
        super().init_model()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_papo(self, mm_processor_kwargs: dict[str, Any] | None = None) -> None:
        """Set up PAPO on an initialised actor: the masked-input builder and the PAPO loss. Called once.

        Args:
            mm_processor_kwargs: the run's ``data.mm_processor_kwargs`` (processor options such as
                ``min_pixels`` / ``max_pixels``), with which verl's agent loop built the original
                image inputs; the masked pass re-processes images with the same ones.

        Raises:
            NotImplementedError: on-policy distillation is enabled.
            ValueError: the model has no multimodal processor.
        """
        if "actor" not in self.role:
            return
        if self.distillation_enabled:
            raise NotImplementedError("PAPO does not support on-policy distillation (distillation.enabled=True).")
        # The ActorConfig verl's init_model built (with the PapoConfig), for the loss: built once per worker.
        actor_config: ActorConfig = built_actor_config(self)
        papo: PapoConfig = actor_config.policy_loss.papo
        processor = self.actor.model_config.processor
        if processor is None:
            raise ValueError(
                f"PAPO needs a multimodal processor but none loaded from {self.actor.model_config.path}; "
                "use a vision-language model (Qwen2.5-VL / Qwen3-VL)."
            )
        self.papo = papo
        self.masked_input_builder = MaskedInputBuilder(papo, processor, mm_processor_kwargs)
        masked_forward = None
        if papo.masked_logprob_mode == "recompute":
            check_engine_forward_step(self.actor.engine)
            masked_forward = partial(
                masked_log_probs_with_grad, engine=self.actor.engine, builder=self.masked_input_builder
            )
        self.shared_masked_pass = self._shared_masked_pass()
        self.loss_fn = partial(papo_ppo_loss, config=actor_config, masked_forward=masked_forward)
        self.actor.set_loss_fn(self.loss_fn)
        if papo.vppo_beta_min is not None:  # each update mini-batch gets its weights first, on every rank
            run_before_each_mini_batch(
                self.actor,
                partial(
                    assign_vppo_weights,
                    beta_min=papo.vppo_beta_min,
                    group=self.actor.engine.get_data_parallel_group(),
                    stats=papo.vppo_shaping_stats,
                ),
            )

    def _shared_masked_pass(self) -> SharedMaskedPass | None:
        """The shared masked pass if it applies to this worker, else None; one start-up line says which, and why."""
        reason = unsupported_reason(self)
        shared = None
        if reason is None:
            module = self.actor.engine.module
            use_flash = uses_flash_attention(module, bool(self.actor.model_config.get("use_remove_padding", False)))
            kv_heads = module.config.get_text_config().num_key_value_heads
            shared = SharedMaskedPass(self.actor.engine, kv_heads, use_flash=use_flash)
        if self.papo.enabled and self.rank == 0:
            print(
                "PAPO masked pass: shared (each prompt's masked prompt once, its rollouts' responses against its "
                f"cached keys/values; {'flash-attn' if shared and shared.use_flash else 'torch SDPA'} kernels)"
                if shared
                else f"PAPO masked pass: full sequence per rollout, not shared: {reason}",
                flush=True,
            )
        return shared

    def _log_prob_micro_batch_limit(self, data: TensorDict) -> dict[str, int | None]:
        """The no-grad micro-batch limit ``infer_batch`` would use for ``data``: ``max_rows`` or ``max_tokens``."""
        engine_config = self.actor.engine_config
        dynamic = tu.get(data, "use_dynamic_bsz", default=engine_config.use_dynamic_bsz)
        if dynamic:
            tokens = tu.get(data, "max_token_len_per_gpu", default=engine_config.infer_max_token_len_per_gpu)
            return dict(max_rows=None, max_tokens=int(tokens))
        rows = tu.get(data, "micro_batch_size_per_gpu", default=engine_config.infer_micro_batch_size_per_gpu)
        return dict(max_rows=int(rows), max_tokens=None)

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    @DistProfiler.annotate(color="purple", role="papo_masked_log_prob")
    def compute_masked_log_prob(self, data: TensorDict) -> TensorDict | None:
        """Masked-image log-probs of the pre-update policy (no grad) and the has-image flags.

        Expects the usual log-prob metadata (``temperature``, ``calculate_entropy=False``,
        ``compute_loss=False``) and, in ``precompute`` mode, ``papo_global_step``.
        Returns a TensorDict with ``papo_masked_log_probs`` (nested, response tokens; omitted in
        ``recompute`` mode) and ``papo_has_image`` ``(batch,)`` bool.
        """
        if self.papo.masked_logprob_mode == "recompute":  # the update masks each micro-batch itself
            if not self.actor.engine.is_mp_src_rank_with_outputs():
                return None
            return TensorDict({IMAGE_ROW_KEY: rows_with_images(data)}, batch_size=data.batch_size)
        # Lazy rows: each row's masked inputs are built when the engine reads its micro-batch, not all up front.
        masked, has_image = self.masked_input_builder.mask_batch(data, step=masking_step(data))
        fields: dict[str, torch.Tensor] = {IMAGE_ROW_KEY: has_image}
        if self.shared_masked_pass is not None:
            fields[MASKED_LOG_PROBS_KEY] = self.shared_masked_pass(
                data, tu.get(masked, MULTI_MODAL_INPUTS_KEY), **self._log_prob_micro_batch_limit(data)
            )
            return TensorDict(fields, batch_size=data.batch_size)
        output = self.actor.infer_batch(masked)
        if output is None:  # not an output-collecting model-parallel rank
            return None
        fields[MASKED_LOG_PROBS_KEY] = response_from_nested(output["log_probs"], data["response_mask"])
        return TensorDict(fields, batch_size=data.batch_size).cpu()
