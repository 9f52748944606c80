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

# Estimators whose baseline is the other responses of the prompt: with rollout.n = 1 they have none
# (grpo_passk raises, the others silently degrade to an unbaselined or zero advantage).
GROUP_ESTIMATORS = (
    "papo",
    "grpo",
    "grpo_vectorized",
    "grpo_passk",
    "rloo",
    "rloo_vectorized",
    "opo",
    "gpg",
    "reinforce_plus_plus_baseline",
)
_V1_TRAINER = "the PAPO trainer (verl 0.9.1's synchronous v1 trainer, PPOTrainer._compute_advantage)"
# Estimators verl 0.9.1 registers but its v1 trainer, which the PAPO trainer extends, cannot feed
# (docs/compose.md): name -> why. They fail at the first advantage step of every run, PAPO on or off.
UNSUPPORTED_ESTIMATORS: dict[str, str] = {
    "remax": (
        f"ReMax needs a greedy baseline rollout per prompt (reward_baselines), which only verl's legacy "
        f"RayPPOTrainer generates; {_V1_TRAINER} never does, so compute_remax_outcome_advantage would fail on its "
        "missing reward_baselines argument"
    ),
    "optimal_token_baseline": (
        f"the optimal token baseline needs the actor's sum_pi_squared, which {_V1_TRAINER} never reads into the "
        "advantage step (it fetches a fixed list of fields), so verl's own assertion would fail"
    ),
    "tir_optimal_token_baseline": (
        f"the optimal token baseline needs the actor's sum_pi_squared, which {_V1_TRAINER} never reads into the "
        "advantage step (it fetches a fixed list of fields), so verl's own assertion would fail"
    ),
    "gdpo": (
        f"GDPO needs each reward component (algorithm.gdpo_reward_keys) per row, but {_V1_TRAINER} hands the "
        "estimator only the uid column, so verl's own assertion would fail"
    ),
}
# verl 0.9.1's default of actor.grad_clip (trainer/config/actor/dp_actor.yaml), a key its engine never reads.
IGNORED_GRAD_CLIP_DEFAULT = 1.0

# Each estimator's mean |A| per response as a share of GRPO's (std-normalised, the advantage the published
# gamma and eta were tuned with), keyed by (estimator, algorithm.norm_adv_by_std_in_grpo). Measured with
# binary rewards, n = 5 responses per prompt, each prompt's success probability uniform in [0, 1], 20,000
# prompts, through verl 0.9.1's own advantage call (docs/compose.md), by
#     PYTHONPATH=tests/support python tests/core/test_estimator_scale.py
# Only papo, grpo and grpo_passk read the flag; the others are keyed by True. gae is left out: its scale is
# its critic's.
ESTIMATOR_SCALE_VS_GRPO: dict[tuple[str, bool], float] = {
    ("papo", True): 1.00,
    ("papo", False): 0.50,
    ("grpo", True): 1.00,
    ("grpo", False): 0.50,
    ("grpo_vectorized", True): 1.00,
    ("grpo_passk", True): 0.14,
    ("grpo_passk", False): 0.06,
    ("rloo", True): 0.63,
    ("rloo_vectorized", True): 0.63,
    ("opo", True): 0.50,
    ("gpg", True): 1.00,
    ("reinforce_plus_plus", True): 1.89,
    ("reinforce_plus_plus_baseline", True): 1.38,
}
# Warn when an estimator's ratio to GRPO's is beyond this factor either way.
ESTIMATOR_SCALE_LIMIT = 2.0

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
    if mirrored is not None and OmegaConf.to_container(mirrored, resolve=True) != OmegaConf.to_container(
        config.papo, resolve=True
    ):
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
    check_composition(config, papo)
    warn_ineffective_settings(papo)
    warn_composition(config, papo)
    warn_estimator_scale(config, papo)
    return papo


def base_loss_mode_of(config: DictConfig, papo: PapoConfig) -> str:
    """The registered policy loss that provides the surrogate: ``papo.base_loss_mode`` under the ``papo``
    loss, else ``actor.policy_loss.loss_mode`` itself."""
    loss_mode = config.actor_rollout_ref.actor.policy_loss.loss_mode
    return papo.base_loss_mode if loss_mode == "papo" else loss_mode


def check_composition(config: DictConfig, papo: PapoConfig) -> None:
    """Refuse a policy loss / advantage estimator / aggregation that cannot work with PAPO (docs/compose.md).

    Raises:
        PapoConfigError: naming both settings of the combination and the reason.
    """
    estimator = config.algorithm.adv_estimator
    if estimator in UNSUPPORTED_ESTIMATORS:
        raise PapoConfigError(
            f"algorithm.adv_estimator={estimator!r} cannot run with trainer.v1.trainer_mode="
            f"{config.trainer.v1.trainer_mode!r}: {UNSUPPORTED_ESTIMATORS[estimator]}. Use papo (GRPO's advantage), "
            "grpo, rloo or another estimator of docs/compose.md."
        )
    if estimator == "gae" and OmegaConf.select(config, "critic.enable") is False:
        raise PapoConfigError(
            "algorithm.adv_estimator='gae' with critic.enable=False: GAE needs the critic's values; remove "
            "critic.enable=False (verl then builds the critic) or use an outcome estimator such as papo."
        )
    if estimator == "grpo_vectorized" and not config.algorithm.get("norm_adv_by_std_in_grpo", True):
        raise PapoConfigError(
            "algorithm.adv_estimator='grpo_vectorized' with algorithm.norm_adv_by_std_in_grpo=False: verl 0.9.1's "
            "v1 trainer does not pass the flag to this estimator, so the advantage would still be divided by the "
            "group's std. Use adv_estimator=papo or grpo for Dr.GRPO's unnormalised advantage."
        )
    base = base_loss_mode_of(config, papo)
    trains = papo.trains or papo.vppo_entropy_coef > 0
    if base == "geo_mean" and trains:
        raise PapoConfigError(
            "papo.base_loss_mode='geo_mean' with the PAPO terms on (papo.kl_prcp_coef / entropy coefficients, or "
            "papo.vppo_entropy_coef): verl's geo_mean surrogate is a plain mean over each micro-batch's sequences "
            "(it ignores actor.loss_agg_mode and the global-batch normalisation), so summed over micro-batches it "
            "grows with their number while the PAPO terms do not: gamma's weight would depend on the micro-batch "
            "size. Use papo.monitor=true to measure, or another base_loss_mode."
        )
    if base == "geo_mean" and papo.vppo_token_fraction is not None:
        raise PapoConfigError(
            f"papo.vppo_token_fraction={papo.vppo_token_fraction} with papo.base_loss_mode='geo_mean': verl's GMPO "
            "surrogate averages the per-token advantages into one per sequence, so VPPO's filter (advantage 0 on "
            "dropped tokens) would scale each response's advantage by its kept share (about p) instead of limiting "
            "its gradient to the kept tokens. Remove papo.vppo_token_fraction (VPPO's shaping works with geo_mean) "
            "or use another base_loss_mode."
        )
    dro_beta = OmegaConf.select(config, "actor_rollout_ref.actor.policy_loss.dro_beta")
    if base == "dro" and not (dro_beta is not None and dro_beta > 0):
        raise PapoConfigError(
            f"papo.base_loss_mode='dro' with actor_rollout_ref.actor.policy_loss.dro_beta={dro_beta}: verl's DRO "
            "loss needs a positive dro_beta (its quadratic log-ratio penalty) and raises at the first update "
            "without one. Set actor_rollout_ref.actor.policy_loss.dro_beta."
        )
    if base == "bypass_mode" and not OmegaConf.select(config, "algorithm.rollout_correction.bypass_mode"):
        raise PapoConfigError(
            "papo.base_loss_mode='bypass_mode' with algorithm.rollout_correction.bypass_mode=False: verl's bypass_mode "
            "loss takes old_log_prob to be the rollout engine's log-probs, which the trainer writes there only in "
            "bypass mode (otherwise it would be plain PPO-clip with mislabelled rollout-correction metrics). Set "
            "algorithm.rollout_correction.bypass_mode=True, or use base_loss_mode=vanilla."
        )


def warn_composition(config: DictConfig, papo: PapoConfig) -> None:
    """Log a warning (once, at start-up) for a composition that works with a caveat (docs/compose.md)."""
    actor = config.actor_rollout_ref.actor
    base = base_loss_mode_of(config, papo)
    if not (papo.trains or papo.vppo):  # the base algorithm alone, or monitor mode: verl's own caveats
        return
    terms = "the PAPO terms" if papo.trains else "VPPO's filter, shaping and entropy penalty"
    if base == "sapo" and actor.loss_agg_mode != "seq-mean-token-mean":
        logger.warning(
            "papo.base_loss_mode=sapo with actor_rollout_ref.actor.loss_agg_mode=%s: verl's SAPO surrogate is always "
            "aggregated seq-mean-token-mean, %s with loss_agg_mode. Set loss_agg_mode=seq-mean-token-mean for one "
            "normalisation.",
            actor.loss_agg_mode,
            terms,
        )
    if actor.loss_agg_mode == "seq-mean-token-sum-norm" and actor.loss_scale_factor is None:
        logger.warning(
            "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm without actor_rollout_ref.actor."
            "loss_scale_factor: verl divides each micro-batch's loss (surrogate and %s) by that micro-batch's "
            "padded response length, so the loss depends on the micro-batch split. Set loss_scale_factor (e.g. "
            "data.max_response_length) for Dr.GRPO's constant.",
            terms,
        )


def estimator_scale_vs_grpo(estimator: str, norm_by_std: bool) -> float | None:
    """The estimator's mean |A| as a share of GRPO's (:data:`ESTIMATOR_SCALE_VS_GRPO`); ``None`` if unmeasured."""
    return ESTIMATOR_SCALE_VS_GRPO.get((estimator, norm_by_std), ESTIMATOR_SCALE_VS_GRPO.get((estimator, True)))


def warn_estimator_scale(config: DictConfig, papo: PapoConfig) -> None:
    """Warn when the advantage's typical scale is beyond :data:`ESTIMATOR_SCALE_LIMIT` x GRPO's while a term
    that does not read the advantage trains (the PAPO terms, VPPO's entropy penalty; docs/compose.md)."""
    coefficients = []
    if papo.trains:
        coefficients += ["papo.kl_prcp_coef", "papo.entropy_ori_coef", "papo.entropy_aug_coef"]
        if papo.schedule == "annealing":
            coefficients += ["papo.anneal_start", "papo.anneal_end"]
    if papo.vppo_entropy_coef > 0:
        coefficients.append("papo.vppo_entropy_coef")
    estimator = config.algorithm.adv_estimator
    norm_by_std = bool(config.algorithm.get("norm_adv_by_std_in_grpo", True))
    ratio = estimator_scale_vs_grpo(estimator, norm_by_std)
    if not coefficients or ratio is None or 1 / ESTIMATOR_SCALE_LIMIT <= ratio <= ESTIMATOR_SCALE_LIMIT:
        return
    logger.warning(
        "algorithm.adv_estimator=%r (algorithm.norm_adv_by_std_in_grpo=%s): its advantage scale is %.2f x GRPO's "
        "(mean |A| per response, binary rewards, n=5; docs/compose.md). The surrogate reads the advantage and %s "
        "do not, so they weigh about %.1f times the share of the gradient their published values were tuned for "
        "(on GRPO). To keep the published balance, multiply them by %.2f.",
        estimator,
        norm_by_std,
        ratio,
        ", ".join(coefficients),
        1 / ratio,
        ratio,
    )


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
