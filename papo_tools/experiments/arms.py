"""The experiment's arms: GRPO (monitor mode), PAPO-G at two gammas, VPPO, and PAPO-G with VPPO;
and, on request (``--arms``), the collapse case with the Double Entropy Loss.

Every arm is PAPO-G's base algorithm (GRPO with the paper's low_var_kl reference-KL loss 0.01 and
clip 0.2 / 0.3, the published PAPO-G settings of arXiv 2507.06448) and differs only in the ``papo.*``
options below. The masked log-probs are precomputed once per step (the authors' default).

Gammas (docs/dynamics.md, "Arms"): after the warm-up the model uses the image, and its KL_prcp (0.2
nats per token in GRPO's first steps, 0.7 in its last, averaged over seeds) is of the order the
paper's gamma was set for, so the PAPO arm takes the paper's gamma, 0.02 (its published PAPO-G 3B
setting), unscaled. The collapse arm takes 100 times that, gamma 2 without the entropy terms: the
gamma that collapsed the earlier format-only version of this experiment within 24 steps although its
KL_prcp was a thousand times smaller. VPPO (arXiv 2510.09285) runs with its published token fraction
0.4 and beta_min 0.9 (docs/vppo.md), without its entropy penalty. The Double Entropy Loss arm keeps
the paper's PAPO-G 7B ratio of entropy weight to gamma, 0.05 / 0.02 = 2.5, at the collapse arm's
gamma; with precomputed masked log-probs only its H_ori term has a gradient (docs/algorithm.md).
None of these was tuned on this task.
"""

from __future__ import annotations

from dataclasses import dataclass

GAMMA_PAPO = 0.02
GAMMA_COLLAPSE = 2.0
VPPO_TOKEN_FRACTION = 0.4  # VPPO's p (its published runs)
VPPO_BETA_MIN = 0.9  # VPPO's Trajectory-level Advantage Shaping beta_min (its published runs)
ENTROPY_PER_GAMMA = 2.5  # eta_ori = eta_aug over gamma in the paper's PAPO-G 7B setting: 0.05 / 0.02


@dataclass(frozen=True)
class Arm:
    """One training configuration: a name and its ``papo.*`` Hydra overrides."""

    name: str
    overrides: tuple[str, ...]
    description: str


def papo_overrides(gamma: float, eta: float = 0.0) -> tuple[str, ...]:
    """``papo.*`` overrides of a PAPO-G arm with KL_prcp weight ``gamma`` and both entropy weights ``eta``."""
    return (f"papo.kl_prcp_coef={gamma}", f"papo.entropy_ori_coef={eta}", f"papo.entropy_aug_coef={eta}")


VPPO_OVERRIDES: tuple[str, ...] = (
    f"papo.vppo_token_fraction={VPPO_TOKEN_FRACTION}",
    f"papo.vppo_beta_min={VPPO_BETA_MIN}",
)

ARMS: tuple[Arm, ...] = (
    Arm(
        "grpo",
        ("papo.monitor=true", *papo_overrides(0.0)),
        "GRPO; monitor mode computes the masked pass and logs papo/* without touching the loss",
    ),
    Arm("papo", papo_overrides(GAMMA_PAPO), f"PAPO-G, gamma {GAMMA_PAPO}, no entropy terms"),
    Arm(
        "papo_high_gamma_no_entropy",
        papo_overrides(GAMMA_COLLAPSE),
        f"PAPO-G, gamma {GAMMA_COLLAPSE}, no entropy terms (the setting that collapses in the paper)",
    ),
    Arm(
        "vppo",
        (*papo_overrides(0.0), *VPPO_OVERRIDES),
        f"VPPO alone: token fraction {VPPO_TOKEN_FRACTION}, beta_min {VPPO_BETA_MIN}",
    ),
    Arm(
        "papo_vppo",
        (*papo_overrides(GAMMA_PAPO), *VPPO_OVERRIDES),
        f"PAPO-G gamma {GAMMA_PAPO} and VPPO on one masked pass",
    ),
)
ARM_NAMES: tuple[str, ...] = tuple(arm.name for arm in ARMS)

# Arms run only when named in ``--arms``: not part of the default comparison.
EXTRA_ARMS: tuple[Arm, ...] = (
    Arm(
        "papo_high_gamma_double_entropy",
        papo_overrides(GAMMA_COLLAPSE, ENTROPY_PER_GAMMA * GAMMA_COLLAPSE),
        f"PAPO-G, gamma {GAMMA_COLLAPSE}, Double Entropy Loss, "
        f"eta_ori = eta_aug = {ENTROPY_PER_GAMMA * GAMMA_COLLAPSE:g}",
    ),
)
SELECTABLE_ARMS: tuple[Arm, ...] = ARMS + EXTRA_ARMS


def sweep_arm(gamma: float) -> Arm:
    """A PAPO-G arm without entropy terms at ``gamma`` (the gamma sweep)."""
    return Arm(f"papo_gamma_{gamma:g}", papo_overrides(gamma), f"PAPO-G, gamma {gamma:g}, no entropy terms")
