"""Health checks of a smoke run's metrics (verl's file-logger records) and their table."""

from __future__ import annotations

import math
from dataclasses import dataclass

PAPO_PREFIX = "papo/"
STEP_KEY = "training/global_step"
VALIDATION_PREFIX = "val-"
# papo/loss + papo/base_loss must equal actor/pg_loss (the loss verl optimises) to this relative error.
LOSS_SUM_RTOL = 1e-4
LOSS_SUM_ATOL = 1e-8


@dataclass(frozen=True)
class Expectations:
    """What the run's configuration promises.

    Attributes:
        steps: training steps the run must log (1..steps).
        papo_enabled: a PAPO coefficient is > 0, so ``papo/*`` metrics are logged and
            ``papo/kl_prcp`` must be > 0.
        use_kl_loss: the reference-KL loss is on, so ``actor/kl_loss`` must be logged.
    """

    steps: int
    papo_enabled: bool
    use_kl_loss: bool


def training_records(records: list[dict]) -> list[dict]:
    """The ``{"step", "data"}`` records of training steps (validation-only records dropped)."""
    return [record for record in records if STEP_KEY in record["data"]]


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def check_records(records: list[dict], expect: Expectations) -> list[str]:
    """Every failed check, one sentence each naming the step and metric; empty when healthy."""
    train = training_records(records)
    failures = []
    steps = [record["step"] for record in train]
    if steps != list(range(1, expect.steps + 1)):
        failures.append(f"expected training steps 1..{expect.steps} in the metrics, found {steps}")
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
            total = papo.get("papo/loss", math.nan) + papo.get("papo/base_loss", math.nan)
            pg_loss = data.get("actor/pg_loss", math.nan)
            if not math.isclose(total, pg_loss, rel_tol=LOSS_SUM_RTOL, abs_tol=LOSS_SUM_ATOL):
                failures.append(
                    f"step {step}: papo/loss + papo/base_loss = {total!r} differs from actor/pg_loss = {pg_loss!r} "
                    f"by more than {LOSS_SUM_RTOL:g} relative"
                )
        if expect.use_kl_loss and not _finite(data.get("actor/kl_loss")):
            failures.append(f"step {step}: use_kl_loss is on but actor/kl_loss = {data.get('actor/kl_loss')!r}")
    return failures


def metrics_table(records: list[dict]) -> str:
    """One row per ``papo/*`` metric (plus ``actor/pg_loss``, ``actor/kl_loss``), one column per step."""
    train = training_records(records)
    names = sorted({key for record in train for key in record["data"] if key.startswith(PAPO_PREFIX)})
    names += [key for key in ("actor/pg_loss", "actor/kl_loss") if any(key in r["data"] for r in train)]
    width = max([len(name) for name in names] + [6])
    lines = [f"{'metric':<{width}}" + "".join(f"{'step ' + str(r['step']):>14}" for r in train)]
    for name in names:
        cells = [r["data"].get(name) for r in train]
        lines.append(f"{name:<{width}}" + "".join(f"{v:>14.6g}" if _finite(v) else f"{v!s:>14}" for v in cells))
    return "\n".join(lines)
