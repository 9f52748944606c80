"""The PAPO trainer: verl 0.9.1's synchronous v1 trainer plus the PAPO inputs of every step.

Registered as ``trainer.v1.trainer_mode=papo``. Per step, after old log-probs (verl's
``_compute_old_log_prob``), it

1. asks the PAPO worker for the masked-image log-probs of the pre-update policy
   (``compute_masked_log_prob``; in ``recompute`` mode only the has-image flags),
2. writes the per-sample KL_prcp weights (``papo.apply_mode``, from the reward's
   ``papo.correctness_key``, e.g. ``acc``) to the batch,
3. before the actor update, sets gamma_t and the entropy coefficients of this global step
   (a pure function of the step, so a resumed run continues the schedule exactly),

and logs ``papo/*`` and ``vppo/*`` metrics (:func:`recipe.papo.policy_loss.papo_step_metrics`,
:func:`recipe.papo.policy_loss.vppo_step_metrics`). With PAPO off (all
coefficients 0, no ``papo.monitor``) it skips all of this and is exactly verl's synchronous trainer.
In monitor mode it does all of this with the coefficients set to 0
(:func:`recipe.papo.objective.loss_coefficients`).

Once, when the workers exist, it hands the actor workers what their own config (``actor_rollout_ref``)
lacks, ``data.mm_processor_kwargs`` (``PapoActorRolloutRefWorker.init_papo``). Per step it writes
only what changes per step: the global step, once, into the call that masks, and the step's
coefficients as one :class:`recipe.papo.objective.PapoCoefficients` (:mod:`recipe.papo.batch_keys`).

With PAPO on and ``papo.hacking_guard`` not ``off``, every step's metrics, once verl has computed them
all (``_compute_metrics``), go to the KL_prcp hacking guard (:mod:`recipe.papo.hacking_guard`). On its
alarm the trainer logs an ERROR; with ``stop`` it also saves a checkpoint of the step (verl's own
checkpoint, :func:`recipe.papo.compat.verl_trainer.save_checkpoint`, unless ``trainer.save_freq``
saved this step already) and lowers
``total_training_steps`` to the step, so that verl's ``fit`` loop logs the step's metrics and ends
as after its last step.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from . import register as _register  # noqa: F401  (registries in this process)
from .batch_keys import COEFFICIENTS_KEY, IMAGE_ROW_KEY, KL_WEIGHT_KEY, MASKED_LOG_PROBS_KEY, STEP_KEY, UID_KEY
from .compat.verl import install_position_ids_fix
from .compat.verl_trainer import check_trainer_hooks, save_checkpoint
from .config import PapoConfig, papo_config_from
from .hacking_guard import HACKING_ALARM_METRIC, HACKING_SCORE_METRIC, HackingGuard
from .objective import coefficients_at_step, sample_weights
from .policy_loss import METRIC_PREFIX, papo_step_metrics, vppo_step_metrics
from .shared_pass import order_by_prompt
from .worker import PapoActorRolloutRefWorker

logger = logging.getLogger(__name__)

TRAINER_MODE = "papo"
# The mode verl's base trainer runs this trainer as (see PapoTrainer.__init__).
BASE_TRAINER_MODE = "sync"


def correctness_from_extra_fields(extra_fields: list, key: str) -> torch.Tensor:
    """``(batch,)`` bool: ``reward_extra_info[key] > 0.5`` for each row's ``extra_fields``."""
    correct = []
    for row, fields in enumerate(extra_fields):
        fields = getattr(fields, "data", fields)
        info = fields.get("reward_extra_info", {}) if isinstance(fields, dict) else {}
        if key not in info:
            raise KeyError(
                f"papo.apply_mode needs the reward's '{key}' per sample (papo.correctness_key) but row {row} has "
                f"reward extra info keys {sorted(info)}; use the PAPO reward (recipe/papo/reward.py returns 'acc') "
                "or set papo.correctness_key."
            )
        correct.append(float(info[key]) > 0.5)
    return torch.tensor(correct, dtype=torch.bool)


def model_vocab_size(model_config: DictConfig) -> int:
    """The vocabulary size of ``actor_rollout_ref.model`` (its text config's ``vocab_size``), read as verl reads it."""
    from transformers import AutoConfig
    from verl.utils.fs import copy_to_local

    path = OmegaConf.select(model_config, "hf_config_path") or model_config.path
    local = copy_to_local(path, use_shm=bool(OmegaConf.select(model_config, "use_shm", default=False)))
    trust = bool(OmegaConf.select(model_config, "trust_remote_code", default=False))
    return int(AutoConfig.from_pretrained(local, trust_remote_code=trust).get_text_config().vocab_size)


def mm_processor_kwargs_of(config: DictConfig) -> dict[str, Any]:
    """``data.mm_processor_kwargs`` of a run config as a plain dict (``{}`` when unset)."""
    kwargs = OmegaConf.select(config, "data.mm_processor_kwargs", default=None)
    if kwargs is None:
        return {}
    return OmegaConf.to_container(kwargs, resolve=True) if OmegaConf.is_config(kwargs) else dict(kwargs)


check_trainer_hooks(PPOTrainerSync)  # the methods overridden below are still verl 0.9.1's


@register_trainer(TRAINER_MODE)
class PapoTrainer(PPOTrainerSync):
    """Synchronous PPO/GRPO/DAPO trainer with PAPO's masked-image branch."""

    def __init__(self, config: DictConfig):
        # verl reads trainer.v1.trainer_mode for two things: main_ppo picks the trainer class by it
        # ("papo": this class), and PPOTrainer.__init__ copies it to self.trainer_mode, on which the
        # base class branches (== "sync") for the replay buffer, exact-refill batching, checkpointed
        # TransferQueue state and in-flight prompt re-issue. PAPO runs verl's synchronous schedule, so
        # the base class is built as a "sync" trainer; the config keeps the registered name.
        registered_mode = config.trainer.v1.trainer_mode
        config.trainer.v1.trainer_mode = BASE_TRAINER_MODE
        try:
            super().__init__(config)
        finally:
            config.trainer.v1.trainer_mode = registered_mode
        install_position_ids_fix()
        self.papo: PapoConfig = papo_config_from(config.papo)
        self.hacking_guard: HackingGuard | None = None
        self._hacking_alarm_on = False

    def on_init_end(self):
        # Once, before the first step: the run-constant setting the actor workers' own config lacks.
        # The processor options verl's agent loop used for the original images: the masked pass
        # re-processes images (mask_space=image, images_aug) with the same ones.
        self.actor_rollout_wg.init_papo(mm_processor_kwargs=mm_processor_kwargs_of(self.config))
        self.hacking_guard = self._build_hacking_guard()
        super().on_init_end()

    def _build_hacking_guard(self) -> HackingGuard | None:
        """The KL_prcp hacking guard of this run: ``None`` with ``papo.hacking_guard=off`` or PAPO off."""
        if not self.papo.enabled or self.papo.hacking_guard == "off":
            return None
        vocab_size = model_vocab_size(self.config.actor_rollout_ref.model)
        return HackingGuard(vocab_size, int(self.config.data.max_response_length))

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        # verl maps every actor/rollout/ref role to its engine ActorRolloutRefWorker; use PAPO's subclass.
        for role, worker_cls in list(self.role_worker_mapping.items()):
            if getattr(worker_cls, "__ray_actor_class__", None) is ActorRolloutRefWorker:
                self.role_worker_mapping[role] = ray.remote(PapoActorRolloutRefWorker)

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._compute_old_log_prob(batch, metrics)
        if self.papo.enabled:
            batch = self._compute_papo_inputs(batch, metrics)
        return batch

    def _compute_papo_inputs(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """Masked log-probs, has-image flags and per-sample KL weights for this step's batch."""
        precompute = self.papo.masked_logprob_mode == "precompute"
        batch.extra_info.update(
            {
                "calculate_entropy": False,
                "compute_loss": False,
                "temperature": self.config.actor_rollout_ref.rollout.temperature,
            }
        )
        self._write_step(batch)
        output = self.actor_rollout_wg.compute_masked_log_prob(self._grouped_by_prompt(batch))
        assert len(output) == len(batch)

        fields = [IMAGE_ROW_KEY, "response_mask"]
        if self.papo.apply_mode != "all":
            fields.append("extra_fields")
        if precompute:
            fields += [MASKED_LOG_PROBS_KEY, "old_log_probs"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)

        has_image = data[IMAGE_ROW_KEY].to(torch.bool)
        correct = torch.ones_like(has_image)
        if self.papo.apply_mode != "all":
            correct = correctness_from_extra_fields(list(data["extra_fields"]), self.papo.correctness_key)
        kl_weight = sample_weights(correct, self.papo.apply_mode, self.papo.incorrect_weight)
        batch = tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict({KL_WEIGHT_KEY: kl_weight}, batch_size=len(batch)),
        )

        metrics[METRIC_PREFIX + "rows_without_image"] = int((~has_image).sum())
        metrics[METRIC_PREFIX + "kl_weight_mean"] = float(kl_weight[has_image].mean()) if has_image.any() else 0.0
        if precompute and has_image.any():
            old = data["old_log_probs"].to_padded_tensor(0.0)
            masked = data[MASKED_LOG_PROBS_KEY].to_padded_tensor(0.0)
            mask = data["response_mask"].to_padded_tensor(0).to(torch.bool) & has_image.unsqueeze(-1)
            metrics[METRIC_PREFIX + "logprob_gap"] = float(((old - masked) * mask).sum() / mask.sum())
        return batch

    def _grouped_by_prompt(self, batch: KVBatchMeta) -> KVBatchMeta:
        """``batch`` with its rows ordered for the shared masked pass: each prompt's rows on one rank.

        verl's ``_balance_batch`` spreads a prompt's rollouts over the data-parallel ranks; the shared
        pass (``papo.share_masked_prompt``) shares a prompt only among the rows one rank holds. The
        masked pass's outputs are stored by row key, so only this call sees the other order
        (:func:`recipe.papo.shared_pass.order_by_prompt`); the batch itself keeps verl's.
        """
        ranks = self.actor_rollout_wg.world_size
        sequence_parallel = OmegaConf.select(self.config, "actor_rollout_ref.actor.ulysses_sequence_parallel_size")
        shared = self.papo.share_masked_prompt and self.papo.masked_logprob_mode == "precompute"
        if not shared or ranks <= 1 or (sequence_parallel or 1) > 1 or len(batch) % ranks:
            return batch
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[UID_KEY])
        uids = [str(uid) for uid in tu.get(data, UID_KEY)]
        lengths = [int(tag.get("seq_len", 1)) for tag in batch.tags]
        return batch.select_keys([batch.keys[row] for row in order_by_prompt(uids, lengths, ranks)])

    def _write_step(self, batch: KVBatchMeta) -> None:
        """Give a PAPO call of this step the global step (:data:`STEP_KEY`, part of the mask seed).

        Both PAPO calls of a step get it: the masked pass masks with it in precompute mode, each update
        micro-batch in recompute mode (the other call ignores it). Written into each call's metadata
        because verl builds a new batch between them.
        """
        batch.extra_info[STEP_KEY] = self.global_steps

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self.papo.enabled:
            coefs = coefficients_at_step(self.papo, self.global_steps, self.total_training_steps)
            batch.extra_info[COEFFICIENTS_KEY] = coefs
            self._write_step(batch)
            metrics[METRIC_PREFIX + "gamma"] = coefs.kl_prcp
            metrics[METRIC_PREFIX + "entropy_ori_coef"] = coefs.entropy_ori
            metrics[METRIC_PREFIX + "entropy_aug_coef"] = coefs.entropy_aug
        batch = super()._update_actor(batch, metrics)
        metrics.update(papo_step_metrics(metrics))
        metrics.update(vppo_step_metrics(metrics))
        return batch

    def _compute_metrics(self, batch: KVBatchMeta, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        if self.hacking_guard is not None:
            self._watch_for_hacking(metrics, global_steps)

    def _watch_for_hacking(self, metrics: dict, step: int) -> None:
        """Feed the step's metrics to the hacking guard; log its score, and act on its alarm (module docstring)."""
        if self.hacking_guard.observe(step, metrics) is None:  # a step without the watched metrics
            return
        metrics[HACKING_SCORE_METRIC] = self.hacking_guard.score
        alarm = self.hacking_guard.alarm()
        metrics[HACKING_ALARM_METRIC] = float(alarm is not None)
        if alarm is not None and not self._hacking_alarm_on:  # once per episode, not every step of it
            logger.error(alarm.message())
        self._hacking_alarm_on = alarm is not None
        if alarm is not None and self.papo.hacking_guard == "stop":
            self._stop_for_hacking(step)

    def _stop_for_hacking(self, step: int) -> None:
        """Save a checkpoint of ``step`` (unless verl's loop saved it) and end the run after this step."""
        trainer = self.config.trainer
        saved = trainer.save_freq > 0 and (step >= self.total_training_steps or step % trainer.save_freq == 0)
        if not saved:
            save_checkpoint(self)
        folder = os.path.join(trainer.default_local_dir, f"global_step_{step}")
        logger.error(
            "papo.hacking_guard=stop: the run ends after step %d (of %d) on the KL_prcp hacking alarm above; its "
            "checkpoint is %s (the collapsed model, for diagnosis: resume from an earlier one with the remedies).",
            step,
            self.total_training_steps,
            folder,
        )
        # verl's fit loop runs while global_steps <= total_training_steps: this step's metrics are still
        # logged, then the loop ends as after its last step (on_train_end, dump executor shut down).
        self.total_training_steps = step
