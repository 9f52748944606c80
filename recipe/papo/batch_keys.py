"""The names of the batch fields PAPO adds to, or reads from, verl's batches.

One module owns them because three parties share them: the PAPO trainer writes them into the step's
batch (TransferQueue fields or the batch's ``extra_info``), the PAPO worker reads and writes them in
its masked pass, and the ``papo`` loss reads them per micro-batch. verl 0.9.1 hands a worker a
``TensorDict`` whose per-row fields are tensors (nested along the response for per-token ones) and
whose batch-level values (``extra_info``) are non-tensor entries, read with
``verl.utils.tensordict_utils.get``.

Run-constant settings are not batch fields: the PAPO options reach the worker in its actor config
(``actor_rollout_ref.actor.policy_loss.papo``) and ``data.mm_processor_kwargs`` through
``PapoActorRolloutRefWorker.init_papo``, both once at start-up.
"""

from __future__ import annotations

# -- Per-row fields (TransferQueue columns) ------------------------------------------------------

# Nested ``(batch, response_len)`` float: log pi(o_t | q, I_mask) of the pre-update policy on the
# response tokens, no gradient. Written by the worker's masked pass (``masked_logprob_mode=precompute``
# only), read by the loss.
MASKED_LOG_PROBS_KEY = "papo_masked_log_probs"

# ``(batch,)`` bool: the row carries image patches, so the PAPO terms apply to it. Written by the
# worker's masked pass, read by the trainer (metrics, weights) and the loss.
IMAGE_ROW_KEY = "papo_has_image"

# ``(batch,)`` float32: the row's weight on KL_prcp (``papo.apply_mode``). Written by the trainer,
# read by the loss.
KL_WEIGHT_KEY = "papo_kl_weight"

# ``(batch,)`` float32: VPPO's advantage weight w_i (``papo.vppo_beta_min``, docs/vppo.md), computed
# over the global mini-batch. Written by the worker into each update mini-batch, read by the loss.
VPPO_WEIGHT_KEY = "vppo_advantage_weight"

# ``(batch,)`` float32: VPPO's normalised score n_i by min and max over this rank's share of the update
# mini-batch, NaN for rows not shaped (``papo.vppo_shaping_stats=micro_batch``, the published statistics).
# Written by the worker into each update mini-batch instead of the weight, read by the loss, which takes
# mu over its micro-batch.
VPPO_NORM_KEY = "vppo_normalised_score"

# -- Batch-level values (the step's ``extra_info``) ------------------------------------------------

# :class:`recipe.papo.objective.PapoCoefficients`: gamma_t, eta_ori_t and eta_aug_t of this step
# (all 0 in monitor mode). Written by the trainer before the actor update, read by the loss.
COEFFICIENTS_KEY = "papo_coefficients"

# int: the global step, part of the mask seed ``(papo.mask_seed, step, uid)``. Written by the trainer
# once per step, into the call that masks: the masked pass in ``precompute`` mode, the actor update in
# ``recompute`` mode (each update micro-batch masks itself).
STEP_KEY = "papo_global_step"

# -- Fields of verl's batch that PAPO reads --------------------------------------------------------

# Per-row dict of the processor's outputs (``pixel_values``, ``image_grid_thw``, ...), a
# ``NonTensorStack``; the masked pass replaces its ``pixel_values``.
MULTI_MODAL_INPUTS_KEY = "multi_modal_inputs"

# Per-row list of pre-computed masked images (a dataset column, optional): same count and sizes as
# the row's ``images``; used instead of online masking where present.
IMAGES_AUG_KEY = "images_aug"

# Per-row prompt id, shared by the ``rollout.n`` responses of one prompt: part of the mask seed.
UID_KEY = "uid"

# Per-row chat messages of the prompt, holding the raw images (``mask_space=image``, ``images_aug``).
RAW_PROMPT_KEY = "raw_prompt"
