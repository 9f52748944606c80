"""Start-up checks of a composed PAPO run config (before Ray starts, before any GPU work)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from .config import PapoConfig, PapoConfigError, papo_config_from

GROUP_ESTIMATORS = ("papo", "grpo", "grpo_vectorized")
# verl 0.9.1's default of actor.grad_clip (trainer/config/actor/dp_actor.yaml), a key its engine never reads.
IGNORED_GRAD_CLIP_DEFAULT = 1.0


def check_papo_run_config(config: DictConfig) -> PapoConfig:
    """Validate the ``papo`` block and its consistency with verl's keys; return the ``PapoConfig``.

    Raises:
        PapoConfigError: naming the key and what to set, e.g. PAPO enabled with a loss mode that
            would silently drop the PAPO terms.
    """
    if "papo" not in config:
        raise PapoConfigError("the config has no `papo` block: compose it from configs/papo_trainer.yaml")
    papo = papo_config_from(config.papo)
    actor = config.actor_rollout_ref.actor
    mirrored = OmegaConf.select(actor, "policy_loss.papo")
    if mirrored is not None and papo_config_from(mirrored) != papo:
        raise PapoConfigError(
            "actor_rollout_ref.actor.policy_loss.papo differs from papo: set PAPO options as papo.<key>=... "
            "(the actor copy is an interpolation of the papo block)"
        )
    check_ignored_keys(config)
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
    return papo


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
            f"actor_rollout_ref.actor.optim.clip_grad={clip_grad}): set actor_rollout_ref.actor.optim.clip_grad instead."
        )
    if OmegaConf.select(actor, "freeze_vision_tower", default=False):
        raise PapoConfigError(
            "actor_rollout_ref.actor.freeze_vision_tower=True is ignored by verl 0.9.1 (no engine reads it; the "
            "vision tower would still be trained): remove the override."
        )


def papo_summary(config: DictConfig, papo: PapoConfig) -> dict:
    """The resolved settings a user checks before a run (printed by the dry run).

    Keys are verl config paths, with ``actor.``/``rollout.``/``ref.``/``model.`` short for
    ``actor_rollout_ref.<...>.``; ``scripts/`` tests compare them with the spec's table.
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
        "algorithm.filter_groups.enable": bool(OmegaConf.select(config, "algorithm.filter_groups.enable", default=False)),
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
