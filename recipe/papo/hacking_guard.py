"""The KL_prcp hacking guard: the signature of PAPO's collapse, checked on every step's metrics.

With a large gamma and no Double Entropy Loss, PAPO's Implicit Perception Loss can be maximised by
emitting tokens unrelated to the question ("KL_prcp hacking", arXiv 2507.06448's analysis of it):
both entropies rise towards the uniform distribution's, responses run to the length limit and the
reward falls. The PAPO trainer hands this guard each step's metrics once verl has computed all of
them (``papo.hacking_guard``, docs/training.md); it raises an alarm when, for :data:`PATIENCE`
consecutive steps,

* both ``papo/entropy_ori`` and ``papo/entropy_aug`` are at least :data:`ENTROPY_FRACTION` of
  ``ln(vocab size)`` (the entropy of the uniform distribution; the metrics are the sampled tokens'
  mean negative log-prob, whose expectation under a uniform policy is exactly that),
* ``response_length/mean`` is at least :data:`LENGTH_FRACTION` of ``data.max_response_length``,
* ``critic/score/mean`` lies below the best step's by at least :data:`REWARD_FALL` of that best's
  magnitude,

and some earlier step of the run had both entropies below :data:`HEALTHY_ENTROPY_FRACTION` of
``ln(vocab size)`` (the entropies *rose*: a model that starts out uniform, such as a random one, is
not a collapse of training). ``papo/kl_prcp`` is reported, not tested: in the committed collapse runs
it jumped fourfold or more in two seeds of three but not in the third, and it falls to about 1e-3
once both branches are uniform (docs/dynamics.md).

The thresholds were calibrated on the committed toy runs (papo_tools/experiments/results/dynamics_summary.json, read by
``tests/core/test_hacking_guard.py``): the alarm goes off in every seed of the collapse arm at most
one step after the accuracy fell to 0.05 or below, and never in the 12 healthy runs. Each step gets a
score, the smallest of the three conditions' ratios to their thresholds, over the last
:data:`PATIENCE` steps (``papo/hacking_score``): the alarm goes off at 1.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

GUARD_MODES: tuple[str, ...] = ("off", "warn", "stop")

ENTROPY_FRACTION = 0.95
LENGTH_FRACTION = 0.9
REWARD_FALL = 0.25
HEALTHY_ENTROPY_FRACTION = 0.5
PATIENCE = 2

ENTROPY_ORI_METRIC = "papo/entropy_ori"
ENTROPY_AUG_METRIC = "papo/entropy_aug"
KL_PRCP_METRIC = "papo/kl_prcp"
LENGTH_METRIC = "response_length/mean"
CLIP_RATIO_METRIC = "response_length/clip_ratio"
SCORE_METRIC = "critic/score/mean"
# What the guard logs per step.
HACKING_SCORE_METRIC = "papo/hacking_score"
HACKING_ALARM_METRIC = "papo/hacking_alarm"

REMEDIES = (
    "lower papo.kl_prcp_coef (gamma), or papo.schedule=annealing",
    "the Double Entropy Loss: papo.entropy_ori_coef and papo.entropy_aug_coef > 0 (the paper's ratio to gamma is "
    "2.5 for PAPO-G 7B), with papo.masked_logprob_mode=recompute for a gradient through H_aug",
)


@dataclass(frozen=True)
class StepSignals:
    """One step's hacking signals, each as a share of its reference.

    Attributes:
        step: the global step.
        entropy_fraction: min(H_ori, H_aug) / ln(vocab size).
        length_fraction: mean response length / the maximum response length.
        reward_fall: (best score so far - this step's) / |best score so far|, at least 0 (0 at the first step).
        rose: some step of the run so far had both entropies below :data:`HEALTHY_ENTROPY_FRACTION`.
        metrics: the watched metrics' values this step (name -> value).
    """

    step: int
    entropy_fraction: float
    length_fraction: float
    reward_fall: float
    rose: bool
    metrics: dict[str, float]

    @property
    def score(self) -> float:
        """Smallest ratio of a signal to its threshold: >= 1 when all three conditions hold."""
        return min(
            self.entropy_fraction / ENTROPY_FRACTION,
            self.length_fraction / LENGTH_FRACTION,
            self.reward_fall / REWARD_FALL,
        )

    @property
    def hacking(self) -> bool:
        """This step shows the signature: every condition holds and the entropies rose to it."""
        return self.rose and self.score >= 1.0


@dataclass(frozen=True)
class HackingAlarm:
    """The guard went off: the last :data:`PATIENCE` steps all showed the signature."""

    steps: tuple[StepSignals, ...]
    ln_vocab: float
    max_response_length: int
    best_score: float
    kl_prcp_first: float | None
    kl_prcp_max: float | None

    @property
    def step(self) -> int:
        return self.steps[-1].step

    def message(self) -> str:
        """The ERROR line: the metrics, their values against their thresholds, and the remedies."""
        last = self.steps[-1]
        m = last.metrics
        parts = [
            f"KL_prcp hacking suspected at step {self.step} (papo.hacking_guard): for {len(self.steps)} consecutive "
            f"steps both entropies rose to the uniform distribution's, responses ran to the length limit and the "
            f"reward fell. At step {self.step}: {ENTROPY_ORI_METRIC}={m[ENTROPY_ORI_METRIC]:.4g} and "
            f"{ENTROPY_AUG_METRIC}={m[ENTROPY_AUG_METRIC]:.4g} (ln(vocab size)={self.ln_vocab:.4g}, threshold "
            f"{ENTROPY_FRACTION:g} x that), {LENGTH_METRIC}={m[LENGTH_METRIC]:.4g} (max_response_length="
            f"{self.max_response_length}, threshold {LENGTH_FRACTION:g} x that)",
        ]
        if CLIP_RATIO_METRIC in m:
            parts.append(f"{CLIP_RATIO_METRIC}={m[CLIP_RATIO_METRIC]:.4g}")
        parts.append(
            f"{SCORE_METRIC}={m[SCORE_METRIC]:.4g} (best so far {self.best_score:.4g}, a fall of "
            f"{last.reward_fall:.0%}, threshold {REWARD_FALL:.0%})"
        )
        if KL_PRCP_METRIC in m and self.kl_prcp_first is not None:
            parts.append(
                f"{KL_PRCP_METRIC}={m[KL_PRCP_METRIC]:.4g} (first step {self.kl_prcp_first:.4g}, largest "
                f"{self.kl_prcp_max:.4g})"
            )
        remedies = "; ".join(REMEDIES)
        return (
            ", ".join(parts)
            + f". Remedies (arXiv 2507.06448, its KL_prcp hacking analysis): {remedies}. Resume from a checkpoint "
            "saved before the collapse."
        )


class HackingGuard:
    """Watches each step's metrics for the KL_prcp hacking signature (module docstring).

    Args:
        vocab_size: the model's vocabulary size (its output distribution's support).
        max_response_length: ``data.max_response_length`` in tokens.

    The history (best score, lowest entropy, the last steps) starts empty when the guard is built,
    so after a resume the guard watches from the resumed step on.
    """

    def __init__(self, vocab_size: int, max_response_length: int):
        if vocab_size < 2 or max_response_length < 1:
            raise ValueError(f"vocab_size={vocab_size} must be >= 2 and max_response_length={max_response_length} >= 1")
        self.ln_vocab = math.log(vocab_size)
        self.max_response_length = max_response_length
        self.best_score: float | None = None
        self.lowest_entropy_fraction = math.inf
        self.kl_prcp_first: float | None = None
        self.kl_prcp_max: float | None = None
        self.recent: deque[StepSignals] = deque(maxlen=PATIENCE)

    def observe(self, step: int, metrics: Mapping[str, float]) -> StepSignals | None:
        """Record one step; ``None`` when the step lacks a watched metric (it then breaks the streak).

        Args:
            step: the global step.
            metrics: the step's metrics as verl logs them (``papo/*``, ``response_length/*``,
                ``critic/score/mean``, ...).
        """
        needed = (ENTROPY_ORI_METRIC, ENTROPY_AUG_METRIC, LENGTH_METRIC, SCORE_METRIC)
        if any(not _finite(metrics.get(name)) for name in needed):
            self.recent.clear()
            return None
        watched = (*needed, KL_PRCP_METRIC, CLIP_RATIO_METRIC)
        values = {name: float(metrics[name]) for name in watched if _finite(metrics.get(name))}
        entropy_fraction = min(values[ENTROPY_ORI_METRIC], values[ENTROPY_AUG_METRIC]) / self.ln_vocab
        self.lowest_entropy_fraction = min(self.lowest_entropy_fraction, entropy_fraction)
        score = values[SCORE_METRIC]
        fall = 0.0 if self.best_score is None else _fall(self.best_score, score)
        self.best_score = score if self.best_score is None else max(self.best_score, score)
        if KL_PRCP_METRIC in values:
            kl = values[KL_PRCP_METRIC]
            self.kl_prcp_first = kl if self.kl_prcp_first is None else self.kl_prcp_first
            self.kl_prcp_max = kl if self.kl_prcp_max is None else max(self.kl_prcp_max, kl)
        signals = StepSignals(
            step=step,
            entropy_fraction=entropy_fraction,
            length_fraction=values[LENGTH_METRIC] / self.max_response_length,
            reward_fall=fall,
            rose=self.lowest_entropy_fraction < HEALTHY_ENTROPY_FRACTION,
            metrics=values,
        )
        self.recent.append(signals)
        return signals

    @property
    def score(self) -> float:
        """``papo/hacking_score``: the smallest step score of the last :data:`PATIENCE` steps (0 before)."""
        if len(self.recent) < PATIENCE:
            return 0.0
        return min(s.score for s in self.recent)

    def alarm(self) -> HackingAlarm | None:
        """The alarm when the last :data:`PATIENCE` observed steps all show the signature, else ``None``."""
        if len(self.recent) < PATIENCE or not all(s.hacking for s in self.recent):
            return None
        assert self.best_score is not None
        return HackingAlarm(
            steps=tuple(self.recent),
            ln_vocab=self.ln_vocab,
            max_response_length=self.max_response_length,
            best_score=self.best_score,
            kl_prcp_first=self.kl_prcp_first,
            kl_prcp_max=self.kl_prcp_max,
        )


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _fall(best: float, score: float) -> float:
    """How far ``score`` lies below ``best``, as a share of ``|best|``; 0 at or above it, and for ``best`` 0."""
    return max(0.0, (best - score) / abs(best)) if best != 0 else 0.0
