"""Start-up checks of a composed PAPO run config (before Ray starts, before any GPU work)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from .config import PapoConfig, PapoConfigError, papo_config_from

GROUP_ESTIMATORS = ("papo", "grpo", "grpo_vectorized")


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


def papo_summary(config: DictConfig, papo: PapoConfig) -> dict:
    """The resolved settings a user checks before a run (printed by the dry run)."""
    actor = config.actor_rollout_ref.actor
    rollout = config.actor_rollout_ref.rollout
    return {
        "papo.enabled": papo.enabled,
        **{f"papo.{key}": getattr(papo, key) for key in PapoConfig.__dataclass_fields__ if key != "_target_"},
        "algorithm.adv_estimator": config.algorithm.adv_estimator,
        "algorithm.filter_groups.enable": bool(OmegaConf.select(config, "algorithm.filter_groups.enable", default=False)),
        "algorithm.filter_groups.metric": OmegaConf.select(config, "algorithm.filter_groups.metric", default=None),
        "actor.policy_loss.loss_mode": actor.policy_loss.loss_mode,
        "actor.use_kl_loss": actor.use_kl_loss,
        "actor.kl_loss_coef": actor.kl_loss_coef,
        "actor.kl_loss_type": actor.kl_loss_type,
        "actor.clip_ratio_low": actor.clip_ratio_low,
        "actor.clip_ratio_high": actor.clip_ratio_high,
        "actor.loss_agg_mode": actor.loss_agg_mode,
        "actor.entropy_coeff": actor.entropy_coeff,
        "actor.optim.lr": actor.optim.lr,
        "actor.optim.weight_decay": actor.optim.weight_decay,
        "actor.grad_clip": actor.grad_clip,
        "actor.ppo_mini_batch_size": actor.ppo_mini_batch_size,
        "actor.ppo_epochs": actor.ppo_epochs,
        "rollout.n": rollout.n,
        "rollout.temperature": rollout.temperature,
        "rollout.top_p": rollout.top_p,
        "rollout.val_kwargs.n": rollout.val_kwargs.n,
        "rollout.val_kwargs.temperature": rollout.val_kwargs.temperature,
        "data.train_batch_size": config.data.train_batch_size,
        "data.max_prompt_length": config.data.max_prompt_length,
        "data.max_response_length": config.data.max_response_length,
        "data.mm_processor_kwargs": OmegaConf.to_container(config.data.get("mm_processor_kwargs", {}), resolve=True),
        "trainer.v1.trainer_mode": config.trainer.v1.trainer_mode,
        "trainer.total_epochs": config.trainer.total_epochs,
        "trainer.test_freq": config.trainer.test_freq,
    }
