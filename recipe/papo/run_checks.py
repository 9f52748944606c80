"""Start-up checks of a composed PAPO run config (before Ray starts, before any GPU work)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf

from . import register as _register  # noqa: F401  (the papo loss and estimator in this process's registries)
from .backend_checks import run_backend_checks
from .compat.verl_registries import rollout_names
from .config import PapoConfig, PapoConfigError, papo_config_from
from .model_families import check_model_supported
from .vllm_checks import guard_device_normalization

GROUP_ESTIMATORS = ("papo", "grpo", "grpo_vectorized")
# verl 0.9.1's default of actor.grad_clip (trainer/config/actor/dp_actor.yaml), a key its engine never reads.
IGNORED_GRAD_CLIP_DEFAULT = 1.0

logger = logging.getLogger(__name__)


def check_papo_run_config(config: DictConfig) -> PapoConfig:
    """Validate the ``papo`` block and its consistency with verl's keys; return the ``PapoConfig``.

    Raises:
        PapoConfigError: naming the key and what to set, e.g. PAPO enabled with a loss mode that
            would silently drop the PAPO terms.

    Repairs one setting in place: with a vLLM rollout and a vLLM that normalises images on the
    device, ``actor_rollout_ref.rollout.engine_kwargs.vllm.mm_device_do_normalize`` is set to False
    (:func:`recipe.papo.vllm_checks.guard_device_normalization`).
    """
    if "papo" not in config:
        raise PapoConfigError("the config has no `papo` block: compose it from configs/papo_trainer.yaml")
    check_registry_names(config)
    papo = papo_config_from(config.papo)
    actor = config.actor_rollout_ref.actor
    mirrored = OmegaConf.select(actor, "policy_loss.papo")
    if mirrored is not None and papo_config_from(mirrored) != papo:
        raise PapoConfigError(
            "actor_rollout_ref.actor.policy_loss.papo differs from papo: set PAPO options as papo.<key>=... "
            "(the actor copy is an interpolation of the papo block)"
        )
    check_ignored_keys(config)
    model_type = check_model_supported(config.actor_rollout_ref.model.path, papo.allow_unsupported_model)
    run_backend_checks(config, model_type)  # e.g. the CPU backend refuses Ulysses where it cannot run
    guard_device_normalization(config)  # vLLM >= 0.29 would normalise images with unsynced buffers
    loss_mode = actor.policy_loss.loss_mode
    trainer_mode = config.trainer.v1.trainer_mode
    if papo.enabled and loss_mode != "papo":
        raise PapoConfigError(
            f"PAPO is enabled but actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode!r}: the PAPO terms would "
            f"never reach the loss. Set loss_mode=papo and papo.base_loss_mode={loss_mode!r}."
        )
    if papo.enabled and trainer_mode != "papo":
        raise PapoConfigError(
            f"PAPO is enabled but trainer.v1.trainer_mode={trainer_mode!r}: only the papo trainer computes masked "
            "log-probs. Set trainer.v1.trainer_mode=papo."
        )
    n = config.actor_rollout_ref.rollout.n
    if config.algorithm.adv_estimator in GROUP_ESTIMATORS and n < 2:
        raise PapoConfigError(
            f"algorithm.adv_estimator={config.algorithm.adv_estimator} is group-relative but "
            f"actor_rollout_ref.rollout.n={n}: set rollout.n >= 2"
        )
    warn_ineffective_settings(papo)
    return papo


def _check_registered(key: str, value: object, allowed: Iterable[str], what: str, hint: str = "") -> None:
    allowed = sorted(allowed)
    if value not in allowed:
        raise PapoConfigError(
            f"{key}={value!r} is not a registered {what}; allowed: {', '.join(allowed)}. Fix the override{hint}."
        )


def check_registry_names(config: DictConfig) -> None:
    """Every registry name the run uses is registered in this process, checked before Ray starts.

    Checks ``algorithm.adv_estimator`` (verl's ``ADV_ESTIMATOR_REGISTRY``),
    ``actor_rollout_ref.actor.policy_loss.loss_mode`` (``POLICY_LOSS_REGISTRY``; ``papo.base_loss_mode``
    is checked by :class:`PapoConfig`), ``reward.reward_manager.name`` when its ``source`` is
    ``register`` (the reward-loop ``REWARD_MANAGER`` registry) and ``actor_rollout_ref.rollout.name``
    (``RolloutReplicaRegistry``). Modules named in ``actor_rollout_ref.model.external_lib`` are
    imported first, as verl's workers import them, so names they register count.

    Raises:
        PapoConfigError: naming the key, the value and the allowed values.
    """
    from verl.experimental.reward_loop.reward_manager import registry as reward_managers
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY
    from verl.utils.import_utils import import_external_libs

    import_external_libs(OmegaConf.select(config, "actor_rollout_ref.model.external_lib", default=None) or None)
    hint = " or register it in a module named in actor_rollout_ref.model.external_lib"
    _check_registered(
        "algorithm.adv_estimator", config.algorithm.adv_estimator, ADV_ESTIMATOR_REGISTRY, "advantage estimator", hint
    )
    _check_registered(
        "actor_rollout_ref.actor.policy_loss.loss_mode",
        config.actor_rollout_ref.actor.policy_loss.loss_mode,
        POLICY_LOSS_REGISTRY,
        "policy loss",
        hint,
    )
    manager = OmegaConf.select(config, "reward.reward_manager")
    if manager is not None and manager.get("source", "register") == "register":
        _check_registered("reward.reward_manager.name", manager.name, reward_managers.REWARD_MANAGER, "reward manager")
    rollout = OmegaConf.select(config, "actor_rollout_ref.rollout.name", throw_on_missing=False)
    if rollout is not None:  # unset (verl's "???"): verl's own validation reports the missing value
        cpu_hint = " (the CPU backend registers 'hf' only when VERL_PLATFORM=cpu)" if rollout == "hf" else ""
        _check_registered("actor_rollout_ref.rollout.name", rollout, rollout_names(), "rollout", cpu_hint)


def warn_ineffective_settings(papo: PapoConfig) -> None:
    """Log a warning (once, at start-up) for a PAPO setting that has only part of its effect.

    ``entropy_aug_coef > 0`` with ``masked_logprob_mode=precompute``: the masked log-probs are
    constants during the update, so H_aug adds to the loss value but not to the gradient (as in the
    authors' implementation, which the published 7B settings follow).
    """
    if papo.trains and papo.entropy_aug_coef > 0 and papo.masked_logprob_mode == "precompute":
        logger.warning(
            "papo.entropy_aug_coef=%s with papo.masked_logprob_mode=precompute: H_aug (the masked branch's "
            "entropy) adds to the loss value but not to the gradient, since the masked log-probs are precomputed "
            "without gradient (as in the authors' implementation). Set papo.masked_logprob_mode=recompute for a "
            "gradient through H_aug.",
            papo.entropy_aug_coef,
        )


def check_ignored_keys(config: DictConfig) -> None:
    """Reject settings that verl 0.9.1 accepts but never reads, so they cannot silently do nothing.

    - ``actor.grad_clip``: the FSDP engine clips with ``actor.optim.clip_grad`` only. Changed from
      its default (1.0) to anything but ``optim.clip_grad``, it would be silently ignored.
    - ``actor.freeze_vision_tower``: declared in ``ActorConfig`` but read nowhere; the engine trains
      every parameter (the vision tower included, as in every published PAPO run).
    """
    actor = config.actor_rollout_ref.actor
    grad_clip, clip_grad = OmegaConf.select(actor, "grad_clip"), OmegaConf.select(actor, "optim.clip_grad")
    if grad_clip not in (None, IGNORED_GRAD_CLIP_DEFAULT, clip_grad):
        raise PapoConfigError(
            f"actor_rollout_ref.actor.grad_clip={grad_clip} is ignored by verl 0.9.1 (its engine clips with "
            f"actor_rollout_ref.actor.optim.clip_grad={clip_grad}): "
            "set actor_rollout_ref.actor.optim.clip_grad instead."
        )
    if OmegaConf.select(actor, "freeze_vision_tower", default=False):
        raise PapoConfigError(
            "actor_rollout_ref.actor.freeze_vision_tower=True is ignored by verl 0.9.1 (no engine reads it; the "
            "vision tower would still be trained): remove the override."
        )


def papo_summary(config: DictConfig, papo: PapoConfig) -> dict:
    """The resolved settings a user checks before a run (printed by the dry run).

    Keys are verl config paths, with ``actor.``/``rollout.``/``ref.``/``model.`` short for
    ``actor_rollout_ref.<...>.``; ``scripts/`` tests compare them with the published settings (arXiv 2507.06448).
    """
    actor = config.actor_rollout_ref.actor
    rollout = config.actor_rollout_ref.rollout
    data = config.data

    def plain(value):
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    return {
        "papo.enabled": papo.enabled,
        **{f"papo.{key}": getattr(papo, key) for key in PapoConfig.__dataclass_fields__ if key != "_target_"},
        "algorithm.adv_estimator": config.algorithm.adv_estimator,
        "algorithm.use_kl_in_reward": config.algorithm.use_kl_in_reward,
        "algorithm.filter_groups.enable": bool(
            OmegaConf.select(config, "algorithm.filter_groups.enable", default=False)
        ),
        "algorithm.filter_groups.metric": OmegaConf.select(config, "algorithm.filter_groups.metric", default=None),
        "reward.reward_manager.name": OmegaConf.select(config, "reward.reward_manager.name", default=None),
        "reward.custom_reward_function.path": OmegaConf.select(config, "reward.custom_reward_function.path"),
        "reward.custom_reward_function.name": OmegaConf.select(config, "reward.custom_reward_function.name"),
        "model.path": config.actor_rollout_ref.model.path,
        "actor.policy_loss.loss_mode": actor.policy_loss.loss_mode,
        "actor.use_kl_loss": actor.use_kl_loss,
        "actor.kl_loss_coef": actor.kl_loss_coef,
        "actor.kl_loss_type": actor.kl_loss_type,
        "actor.clip_ratio_low": actor.clip_ratio_low,
        "actor.clip_ratio_high": actor.clip_ratio_high,
        "actor.loss_agg_mode": actor.loss_agg_mode,
        "actor.entropy_coeff": actor.entropy_coeff,
        "actor.optim.lr": actor.optim.lr,
        "actor.optim.lr_scheduler_type": actor.optim.lr_scheduler_type,
        "actor.optim.lr_warmup_steps": actor.optim.lr_warmup_steps,
        "actor.optim.lr_warmup_steps_ratio": actor.optim.lr_warmup_steps_ratio,
        "actor.optim.weight_decay": actor.optim.weight_decay,
        "actor.optim.clip_grad": actor.optim.clip_grad,
        "actor.freeze_vision_tower": bool(OmegaConf.select(actor, "freeze_vision_tower", default=False)),
        "actor.ppo_mini_batch_size": actor.ppo_mini_batch_size,
        "actor.ppo_micro_batch_size_per_gpu": actor.ppo_micro_batch_size_per_gpu,
        "actor.ppo_epochs": actor.ppo_epochs,
        "ref.log_prob_micro_batch_size_per_gpu": config.actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu,
        "rollout.name": rollout.name,
        "rollout.tensor_model_parallel_size": rollout.tensor_model_parallel_size,
        "rollout.gpu_memory_utilization": rollout.gpu_memory_utilization,
        "rollout.log_prob_micro_batch_size_per_gpu": rollout.log_prob_micro_batch_size_per_gpu,
        "rollout.n": rollout.n,
        "rollout.temperature": rollout.temperature,
        "rollout.top_p": rollout.top_p,
        "rollout.top_k": rollout.top_k,
        "rollout.val_kwargs.n": rollout.val_kwargs.n,
        "rollout.val_kwargs.temperature": rollout.val_kwargs.temperature,
        "rollout.val_kwargs.top_p": rollout.val_kwargs.top_p,
        "rollout.val_kwargs.top_k": rollout.val_kwargs.top_k,
        "rollout.val_kwargs.do_sample": rollout.val_kwargs.do_sample,
        "data.train_files": plain(data.train_files),
        "data.val_files": plain(data.val_files),
        "data.train_batch_size": data.train_batch_size,
        "data.max_prompt_length": data.max_prompt_length,
        "data.max_response_length": data.max_response_length,
        "data.filter_overlong_prompts": data.filter_overlong_prompts,
        "data.image_patch_size": data.image_patch_size,
        "data.mm_processor_kwargs": plain(data.get("mm_processor_kwargs", {})),
        "trainer.v1.trainer_mode": config.trainer.v1.trainer_mode,
        "trainer.nnodes": config.trainer.nnodes,
        "trainer.n_gpus_per_node": config.trainer.n_gpus_per_node,
        "trainer.total_epochs": config.trainer.total_epochs,
        "trainer.test_freq": config.trainer.test_freq,
        "trainer.val_before_train": config.trainer.val_before_train,
        "trainer.val_only": config.trainer.val_only,
        "trainer.save_freq": config.trainer.save_freq,
        "trainer.resume_mode": config.trainer.resume_mode,
        "trainer.default_local_dir": config.trainer.default_local_dir,
        "trainer.project_name": config.trainer.project_name,
        "trainer.experiment_name": config.trainer.experiment_name,
        "trainer.logger": plain(config.trainer.logger),
        "trainer.validation_data_dir": config.trainer.validation_data_dir,
        "ray_kwargs.ray_init.runtime_env.env_vars": plain(
            OmegaConf.select(config, "ray_kwargs.ray_init.runtime_env.env_vars", default={})
        ),
    }
