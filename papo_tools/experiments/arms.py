"""The experiment's arms: one GRPO baseline in monitor mode and three PAPO-G settings.

Every arm is PAPO-G's base algorithm (GRPO with the paper's low_var_kl reference-KL loss 0.01 and
clip 0.2 / 0.3, the published PAPO-G settings of arXiv 2507.06448) and differs only in the ``papo.*``
options below. The masked log-probs are precomputed once per step (the authors' default), so in
every arm H_aug carries no gradient; the double entropy arm acts through H_ori's gradient and
logs H_aug.

Gamma values are those of the toy scale (docs/dynamics.md, "gamma sweep"): the paper's gamma 0.02
moves nothing visible in a few dozen steps of a model this small, so the moderate and high gammas
were chosen by a sweep on this task. The entropy coefficients of the double entropy arm follow the
paper's 7B ratio eta / gamma = 0.05 / 0.02 = 2.5.
"""

from __future__ import annotations

from dataclasses import dataclass

GAMMA_MODERATE = 2.0
GAMMA_HIGH = 20.0
ENTROPY_PER_GAMMA = 2.5  # the paper's PAPO-G 7B setting: eta_ori = eta_aug = 0.05 at gamma 0.02


@dataclass(frozen=True)
class Arm:
    """One training configuration: a name and its ``papo.*`` Hydra overrides."""

    name: str
    overrides: tuple[str, ...]
    description: str


def papo_overrides(gamma: float, entropy_coef: float = 0.0) -> tuple[str, ...]:
    """``papo.*`` overrides of a PAPO-G arm with KL_prcp weight ``gamma`` and eta_ori = eta_aug."""
    return (
        f"papo.kl_prcp_coef={gamma}",
        f"papo.entropy_ori_coef={entropy_coef}",
        f"papo.entropy_aug_coef={entropy_coef}",
    )


ARMS: tuple[Arm, ...] = (
    Arm(
        "grpo",
        ("papo.monitor=true", *papo_overrides(0.0)),
        "GRPO; monitor mode computes the masked pass and logs papo/* without touching the loss",
    ),
    Arm("papo", papo_overrides(GAMMA_MODERATE), f"PAPO-G, gamma {GAMMA_MODERATE}, no entropy terms"),
    Arm(
        "papo_high_gamma_no_entropy",
        papo_overrides(GAMMA_HIGH),
        f"PAPO-G, gamma {GAMMA_HIGH}, no entropy terms (the setting that collapses in the paper)",
    ),
    Arm(
        "papo_high_gamma_double_entropy",
        papo_overrides(GAMMA_HIGH, ENTROPY_PER_GAMMA * GAMMA_HIGH),
        f"PAPO-G, gamma {GAMMA_HIGH}, double entropy loss eta_ori = eta_aug = {ENTROPY_PER_GAMMA * GAMMA_HIGH:g}",
    ),
)
ARM_NAMES: tuple[str, ...] = tuple(arm.name for arm in ARMS)


def sweep_arm(gamma: float) -> Arm:
    """A PAPO-G arm without entropy terms at ``gamma`` (the gamma sweep)."""
    return Arm(f"papo_gamma_{gamma:g}", papo_overrides(gamma), f"PAPO-G, gamma {gamma:g}, no entropy terms")
