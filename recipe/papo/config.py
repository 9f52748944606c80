"""Every PAPO option in one validated dataclass.

The options live in the top-level ``papo:`` block of ``configs/papo_trainer.yaml`` and are set from
YAML or the command line (``papo.kl_prcp_coef=0.01``). The same block is interpolated into
``actor_rollout_ref.actor.policy_loss.papo`` so the actor workers (which only receive
``actor_rollout_ref``) and the registered ``papo`` policy loss see it.

Validation runs when the dataclass is built: in ``main_papo`` before Ray starts, so an invalid
option fails at start-up, before any GPU work. Each error names the key and the allowed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from verl.base_config import BaseConfig
from verl.workers.config import PolicyLossConfig

from .hacking_guard import GUARD_MODES
from .masking import MASK_SPACES, MASK_UNITS

KL_ESTIMATORS: tuple[str, ...] = ("low_var_kl", "kl", "abs", "mse")
APPLY_MODES: tuple[str, ...] = ("all", "correct_only", "weighted")
SCHEDULES: tuple[str, ...] = ("fixed", "annealing")
MASKED_LOGPROB_MODES: tuple[str, ...] = ("precompute", "recompute")
VPPO_SHAPING_STATS: tuple[str, ...] = ("global", "micro_batch")


class PapoConfigError(ValueError):
    """An invalid ``papo.*`` option."""


def _fail(key: str, value: Any, allowed: str) -> None:
    raise PapoConfigError(f"papo.{key}={value!r} is invalid: allowed {allowed}. Fix it in your YAML or override.")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(key, value, "one of " + ", ".join(repr(c) for c in choices))


def _check_number(key: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False):
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        _fail(key, value, "a number")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        _fail(key, value, f"a number in {interval}")


@dataclass
class PapoConfig(BaseConfig):
    """PAPO options (arXiv 2507.06448). Coefficient names map to the paper as noted.

    Attributes:
        kl_prcp_coef: gamma, weight of the Implicit Perception Loss (KL_prcp is maximised).
        entropy_ori_coef: eta_ori, weight of H_ori = -mean log pi_theta(o | I).
        entropy_aug_coef: eta_aug, weight of H_aug = -mean log pi(o | I_mask).
        kl_estimator: per-token estimator of KL(pi_theta(.|I) || pi(.|I_mask)) on sampled tokens: low_var_kl
            (k3), kl, abs or mse (verl's kl_penalty of the same name).
        kl_clamp_max: if set, clamp per-token KL_prcp to [0, kl_clamp_max] (paper's optional c=0.2).
        token_top_p: if set, keep per sequence only tokens whose KL_prcp >= the (1 - p) quantile.
        apply_mode: per-sample weight on KL_prcp: all (1.0), correct_only, weighted.
        incorrect_weight: weight w on incorrect samples in ``weighted`` mode.
        correctness_key: reward extra-info key whose value > 0.5 marks a sample correct.
        schedule: ``fixed`` or ``annealing`` (linear) schedule of gamma.
        anneal_start: gamma at step 1 (annealing).
        anneal_end: gamma from step 1 + anneal_ratio * total_steps on (annealing).
        anneal_ratio: fraction of total training steps over which gamma moves start -> end.
        mask_ratio: probability that each patch is blackened.
        mask_unit: ``patch`` (one 14-px patch row of pixel_values) or ``token`` (one merged token).
        mask_space: ``pixel_values`` (aligned with the vision patches) or ``image`` (blacken raw
            images in patch_size cells and re-run the image processor: the authors' order).
        mask_patch_size: cell side in pixels for ``mask_space=image``; ``None`` (default): the model's
            vision patch side, read from its image processor (``patch_size``: 14 for Qwen2.5-VL,
            the paper's setting; 16 for Qwen3-VL and Qwen3.5), so cells are the model's patches.
        mask_seed: seed; the mask is a function of (mask_seed, global step, prompt uid).
        masked_logprob_mode: ``precompute`` (no-grad pass of the pre-update policy once per step,
            the authors' default: H_aug has zero gradient) or ``recompute`` (masked forward with
            gradient inside each update micro-batch: both branches carry gradient).
        share_masked_prompt: in ``precompute`` mode, run each prompt's masked prompt (vision tower and
            prompt tokens) once and its rollouts' responses against its cached keys/values, instead
            of the whole masked sequence per rollout: the same log-probs at about half the cost
            (docs/algorithm.md#the-shared-masked-pass). Where it cannot apply (Ulysses sequence
            parallelism, Qwen3.5, fused kernels) the full pass runs and the worker's log says why.
        base_loss_mode: verl registered policy loss providing the clipped surrogate (vanilla, gspo...).
        monitor: compute the masked pass and log every ``papo/*`` metric, but train exactly the base
            algorithm: the loss and its gradient are bit-identical to ``base_loss_mode`` alone
            (``papo/loss`` is 0). For measuring a GRPO/DAPO baseline's image dependence
            (``papo/kl_prcp``). Needs ``loss_mode=papo`` and the papo trainer like PAPO itself;
            the coefficients are then only logged as 0.
        allow_unsupported_model: run a model whose ``model_type`` is not a supported family
            (``recipe.papo.model_families``, docs/develop.md) with a warning instead of an error.
        vppo_token_fraction: VPPO's token filter p (Token-level Gradient Filtering of arXiv
            2510.09285; 0.4 in its runs): per response only the ceil(p * |y|) tokens of largest
            visual dependency s_t enter the policy-gradient term (the loss's denominator still
            counts every response token); ``None`` (default): off. See docs/vppo.md.
        vppo_beta_min: VPPO's Trajectory-level Advantage Shaping beta_min (0.9 in its runs): A_i is
            scaled by a weight in [beta_min, beta_max] that grows with the response's mean s_t, with
            mean 1 over the global mini-batch; ``None`` (default): off.
        vppo_entropy_coef: c of VPPO's entropy penalty + c * mean_t(-log pi_theta(o_t)) over all
            response tokens (0.06 in its Qwen2.5-VL-7B run); 0 (default): off.
        vppo_shaping_stats: where VPPO's advantage shaping takes min S, max S and mu from:
            ``global`` (default: the whole global mini-batch, all-reduced over the data-parallel ranks,
            so a weight does not depend on the GPU count or the micro-batch split) or ``micro_batch``
            (as the published code: min and max over this rank's share of the mini-batch, mu over each
            update micro-batch, with its 1e-8 in beta_max), to reproduce VPPO's runs. See docs/vppo.md.
        hacking_guard: the KL_prcp hacking guard (docs/training.md): every step, both entropies near the
            uniform distribution's, responses at the length limit and the reward fallen, for 2 steps
            in a row, raise an alarm. ``warn`` (default): log an ERROR naming the metrics and the
            remedies; ``stop``: also save a checkpoint and end the run after that step; ``off``.
    """

    kl_prcp_coef: float = 0.02
    entropy_ori_coef: float = 0.0
    entropy_aug_coef: float = 0.0
    kl_estimator: str = "low_var_kl"
    kl_clamp_max: float | None = None
    token_top_p: float | None = None
    apply_mode: str = "all"
    incorrect_weight: float = 0.1
    correctness_key: str = "acc"
    schedule: str = "fixed"
    anneal_start: float = 0.02
    anneal_end: float = 0.0
    anneal_ratio: float = 1.0
    mask_ratio: float = 0.6
    mask_unit: str = "patch"
    mask_space: str = "pixel_values"
    mask_patch_size: int | None = None
    mask_seed: int = 0
    masked_logprob_mode: str = "precompute"
    share_masked_prompt: bool = True
    base_loss_mode: str = "vanilla"
    monitor: bool = False
    allow_unsupported_model: bool = False
    vppo_token_fraction: float | None = None
    vppo_beta_min: float | None = None
    vppo_entropy_coef: float = 0.0
    vppo_shaping_stats: str = "global"
    hacking_guard: str = "warn"

    def __post_init__(self) -> None:
        for key in ("kl_prcp_coef", "entropy_ori_coef", "entropy_aug_coef", "anneal_start", "anneal_end"):
            _check_number(key, getattr(self, key), 0.0, math.inf, high_open=True)
        _check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        if self.kl_clamp_max is not None:
            _check_number("kl_clamp_max", self.kl_clamp_max, 0.0, math.inf, low_open=True, high_open=True)
        if self.token_top_p is not None:
            _check_number("token_top_p", self.token_top_p, 0.0, 1.0, low_open=True, high_open=True)
        _check_choice("apply_mode", self.apply_mode, APPLY_MODES)
        _check_number("incorrect_weight", self.incorrect_weight, 0.0, 1.0)
        if not isinstance(self.correctness_key, str) or not self.correctness_key:
            _fail("correctness_key", self.correctness_key, "a non-empty reward extra-info key such as 'acc'")
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_number("anneal_ratio", self.anneal_ratio, 0.0, 1.0, low_open=True)
        if self.schedule == "annealing" and self.kl_prcp_coef <= 0:
            _fail(
                "kl_prcp_coef",
                self.kl_prcp_coef,
                "a value > 0 with schedule=annealing (entropy coefficients are scaled by gamma_t / kl_prcp_coef)",
            )
        _check_number("mask_ratio", self.mask_ratio, 0.0, 1.0)
        _check_choice("mask_unit", self.mask_unit, MASK_UNITS)
        _check_choice("mask_space", self.mask_space, MASK_SPACES)
        if self.mask_space == "image" and self.mask_unit != "patch":
            _fail("mask_unit", self.mask_unit, "'patch' with mask_space=image (image cells have no token grouping)")
        if self.mask_patch_size is not None and (
            isinstance(self.mask_patch_size, bool)
            or not isinstance(self.mask_patch_size, int)
            or self.mask_patch_size < 1
        ):
            _fail(
                "mask_patch_size",
                self.mask_patch_size,
                "a positive integer number of pixels, or null for the model's patch size",
            )
        if isinstance(self.mask_seed, bool) or not isinstance(self.mask_seed, int):
            _fail("mask_seed", self.mask_seed, "an integer")
        _check_choice("masked_logprob_mode", self.masked_logprob_mode, MASKED_LOGPROB_MODES)
        if not isinstance(self.share_masked_prompt, bool):
            _fail("share_masked_prompt", self.share_masked_prompt, "true or false")
        if not isinstance(self.monitor, bool):
            _fail("monitor", self.monitor, "true or false")
        if not isinstance(self.allow_unsupported_model, bool):
            _fail("allow_unsupported_model", self.allow_unsupported_model, "true or false")
        _check_choice("hacking_guard", self.hacking_guard, GUARD_MODES)
        self._check_base_loss_mode()
        self._check_vppo()

    def _check_vppo(self) -> None:
        if self.vppo_token_fraction is not None:
            _check_number("vppo_token_fraction", self.vppo_token_fraction, 0.0, 1.0, low_open=True)
        if self.vppo_beta_min is not None:
            _check_number("vppo_beta_min", self.vppo_beta_min, 0.0, 1.0)
        _check_number("vppo_entropy_coef", self.vppo_entropy_coef, 0.0, math.inf, high_open=True)
        _check_choice("vppo_shaping_stats", self.vppo_shaping_stats, VPPO_SHAPING_STATS)
        if not self.vppo:
            return
        key = "vppo_token_fraction" if self.vppo_token_fraction is not None else "vppo_beta_min"
        if self.vppo_token_fraction is None and self.vppo_beta_min is None:
            key = "vppo_entropy_coef"
        if self.masked_logprob_mode != "precompute":
            _fail(
                "masked_logprob_mode",
                self.masked_logprob_mode,
                f"'precompute' with papo.{key} set (VPPO's s_t uses the pre-update policy's masked log-probs)",
            )
        if self.monitor:
            _fail("monitor", self.monitor, f"false with papo.{key} set (monitor trains exactly the base algorithm)")

    def _check_base_loss_mode(self) -> None:
        from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

        allowed = tuple(name for name in POLICY_LOSS_REGISTRY if name != "papo")
        _check_choice("base_loss_mode", self.base_loss_mode, allowed)

    @property
    def enabled(self) -> bool:
        """The PAPO machinery runs (masked pass, ``papo/*`` metrics): :attr:`trains` or ``monitor``.

        Off means exactly the base algorithm, with no masked pass. VPPO (:attr:`vppo`) needs the masked
        pass too, so it switches the machinery on even with every PAPO coefficient at 0.
        """
        return self.monitor or self.trains or self.vppo

    @property
    def vppo(self) -> bool:
        """Some VPPO option is on (token filter, advantage shaping or entropy penalty; docs/vppo.md)."""
        return self.vppo_token_fraction is not None or self.vppo_beta_min is not None or self.vppo_entropy_coef > 0

    @property
    def trains(self) -> bool:
        """The PAPO terms reach the loss: not ``monitor`` and some coefficient can be non-zero.

        With ``annealing`` every coefficient is scaled by gamma_t / kl_prcp_coef, and gamma_t moves
        between ``anneal_start`` and ``anneal_end``, so both being 0 switches the terms off.
        """
        if self.monitor:
            return False
        if self.schedule == "annealing" and max(self.anneal_start, self.anneal_end) == 0:
            return False
        return any(c > 0 for c in (self.kl_prcp_coef, self.entropy_ori_coef, self.entropy_aug_coef))


@dataclass
class PapoPolicyLossConfig(PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus the PAPO block (``actor.policy_loss.papo``)."""

    papo: PapoConfig = field(default_factory=PapoConfig)


def papo_config_from(config: Any) -> PapoConfig:
    """Build (and so validate) the ``PapoConfig`` from a DictConfig/dict/``PapoConfig``."""
    if isinstance(config, PapoConfig):
        return config
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    container = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    container.pop("_target_", None)
    unknown = sorted(set(container) - set(PapoConfig.__dataclass_fields__))
    if unknown:
        raise PapoConfigError(
            f"unknown PAPO option(s) {', '.join('papo.' + k for k in unknown)}; "
            f"known options: {', '.join(sorted(k for k in PapoConfig.__dataclass_fields__ if k != '_target_'))}"
        )
    return omega_conf_to_dataclass(container, dataclass_type=PapoConfig)
