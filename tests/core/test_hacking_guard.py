"""The KL_prcp hacking guard (``recipe.papo.hacking_guard``), replayed on the committed toy runs.

The replay reads each run's per-step metrics from ``papo_tools/experiments/results/dynamics_summary.json``
(``per_seed[arm][seed][metric]``: 60 steps of the five arms x 3 seeds of docs/dynamics.md, each
series verl's own per-step value from the run's ``metrics.jsonl``, accuracy from its rollout dumps)
and feeds them to the guard step by step, as the trainer does. The guard must go off in all 3 seeds
of the collapse arm (gamma 2 without the Double Entropy Loss) at most one step after the collapse
(the first step whose accuracy is 0.05 or below) and never in the 12 healthy runs. The extra runs
(``dynamics_double_entropy.json``, ``dynamics_gamma_sweep.json`` beside it) are replayed too: the
collapses whose entropies rose to uniform are caught, and the two that are not are the ones the
guard is not built for (the entropy fell). ``python tests/core/test_hacking_guard.py`` prints the
calibration table quoted in docs/training.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recipe.papo.hacking_guard import (
    ENTROPY_AUG_METRIC,
    ENTROPY_ORI_METRIC,
    KL_PRCP_METRIC,
    LENGTH_METRIC,
    REMEDIES,
    SCORE_METRIC,
    HackingGuard,
)

RESULTS = Path(__file__).resolve().parents[2] / "papo_tools" / "experiments" / "results"
RUNS_FILE = RESULTS / "dynamics_summary.json"
EXTRA_FILES = (RESULTS / "dynamics_double_entropy.json", RESULTS / "dynamics_gamma_sweep.json")
COLLAPSE_ARM = "papo_high_gamma_no_entropy"
HEALTHY_ARMS = ("grpo", "papo", "vppo", "papo_vppo")
ACCURACY = "task/accuracy"
COLLAPSED_ACCURACY = 0.05
# The tiny model of docs/dynamics.md: 272 tokens (papo_tools/demo/tiny_model.py).
VOCAB_SIZE = 272


def load_runs(path: Path) -> tuple[dict[str, dict[str, dict[str, list[float]]]], int]:
    """``(per_seed, max_response_length)`` of a committed experiment summary."""
    summary = json.loads(path.read_text())
    return summary["per_seed"], summary["run"]["size"]["max_response_length"]


def replay(series: dict[str, list[float]], max_response_length: int) -> dict:
    """Feed one run's per-step metrics to a fresh guard; the first alarm step and the largest score."""
    guard = HackingGuard(VOCAB_SIZE, max_response_length)
    steps = len(series[SCORE_METRIC])
    first_alarm, largest, largest_at = None, 0.0, None
    for index in range(steps):
        step = index + 1
        assert guard.observe(step, {name: values[index] for name, values in series.items()}) is not None
        if all(s.rose for s in guard.recent) and guard.score > largest:
            largest, largest_at = guard.score, step
        if guard.alarm() is not None and first_alarm is None:
            first_alarm = step
    collapse = next((i + 1 for i, a in enumerate(series[ACCURACY]) if a <= COLLAPSED_ACCURACY), None)
    return {"alarm": first_alarm, "collapse": collapse, "score": largest, "score_step": largest_at}


@pytest.fixture(scope="module")
def committed():
    per_seed, max_response_length = load_runs(RUNS_FILE)
    return {
        (arm, seed): replay(series, max_response_length) for arm in per_seed for seed, series in per_seed[arm].items()
    }


def test_the_committed_file_holds_the_five_arms_by_three_seeds_of_60_steps():
    per_seed, max_response_length = load_runs(RUNS_FILE)
    assert set(per_seed) == {COLLAPSE_ARM, *HEALTHY_ARMS}
    assert max_response_length == 8
    for arm, seeds in per_seed.items():
        assert set(seeds) == {"0", "1", "2"}, arm
        for series in seeds.values():
            for name in (ENTROPY_ORI_METRIC, ENTROPY_AUG_METRIC, LENGTH_METRIC, SCORE_METRIC, KL_PRCP_METRIC):
                assert len(series[name]) == 60 and all(math.isfinite(v) for v in series[name]), (arm, name)


@pytest.mark.parametrize("seed", ["0", "1", "2"])
def test_the_guard_goes_off_in_every_collapse_seed_at_most_one_step_after_the_collapse(committed, seed):
    run = committed[(COLLAPSE_ARM, seed)]
    assert run["collapse"] is not None and run["collapse"] <= 5  # the committed runs did collapse early
    assert run["alarm"] is not None
    assert run["collapse"] <= run["alarm"] + 1 and run["alarm"] <= run["collapse"] + 1, run


@pytest.mark.parametrize("arm", HEALTHY_ARMS)
@pytest.mark.parametrize("seed", ["0", "1", "2"])
def test_the_guard_never_goes_off_in_a_healthy_run(committed, arm, seed):
    run = committed[(arm, seed)]
    assert run["alarm"] is None and run["score"] < 1.0, run


def test_the_healthy_runs_stay_below_the_threshold_with_a_margin(committed):
    """The closest healthy call (docs/training.md): PAPO+VPPO seed 0, whose entropies reached 0.98 of
    uniform with responses at the limit for a few steps, but whose reward fell 23 % and then 30 %,
    not 25 % on two steps in a row."""
    healthy = {key: run for key, run in committed.items() if key[0] in HEALTHY_ARMS}
    closest = max(healthy, key=lambda key: healthy[key]["score"])
    assert closest == ("papo_vppo", "0") and 0.85 < healthy[closest]["score"] < 0.95


def test_the_extra_runs_collapse_to_uniform_are_caught_and_the_other_collapses_are_not():
    caught, missed = {}, {}
    for path in EXTRA_FILES:
        per_seed, max_response_length = load_runs(path)
        for arm, seeds in per_seed.items():
            for seed, series in seeds.items():
                run = replay(series, max_response_length)
                (caught if run["alarm"] is not None else missed)[(arm, seed)] = (run, series)
    assert {key for key in caught} == {
        ("papo_high_gamma_no_entropy", "0"),
        ("papo_high_gamma_no_entropy", "1"),
        ("papo_high_gamma_no_entropy", "2"),
        ("papo_high_gamma_double_entropy", "1"),
        ("papo_high_gamma_double_entropy", "2"),
        ("papo_gamma_2", "0"),
    }
    for run, _ in caught.values():
        assert run["alarm"] <= run["collapse"] + 1, run
    # not caught: the double-entropy seed 0 fell to a low-entropy state (short non-digit answers), and
    # gamma 0.2's accuracy fell late in its 12 steps while its entropies stayed far below uniform
    ln_vocab = math.log(VOCAB_SIZE)
    for key in (("papo_high_gamma_double_entropy", "0"), ("papo_gamma_0.2", "0")):
        run, series = missed[key]
        assert run["collapse"] is not None
        assert max(series[ENTROPY_ORI_METRIC][run["collapse"] - 1 :]) < 0.8 * ln_vocab, key


# --- the rule on hand-made steps -----------------------------------------------------------------

LN = math.log(VOCAB_SIZE)


def step(entropy: float, length: float, score: float, kl: float = 0.1) -> dict[str, float]:
    return {
        ENTROPY_ORI_METRIC: entropy,
        ENTROPY_AUG_METRIC: entropy + 0.1,
        LENGTH_METRIC: length,
        SCORE_METRIC: score,
        KL_PRCP_METRIC: kl,
    }


def feed(guard: HackingGuard, steps: list[dict[str, float]]) -> list[bool]:
    alarms = []
    for index, metrics in enumerate(steps):
        guard.observe(index + 1, metrics)
        alarms.append(guard.alarm() is not None)
    return alarms


def test_two_consecutive_hacking_steps_raise_the_alarm_one_does_not():
    healthy, hacked = step(0.2 * LN, 2.0, 0.6), step(0.99 * LN, 8.0, 0.4)
    assert feed(HackingGuard(VOCAB_SIZE, 8), [healthy, hacked, healthy, hacked, hacked]) == [
        False,
        False,
        False,
        False,
        True,
    ]


@pytest.mark.parametrize(
    "hacked",
    [
        step(0.94 * LN, 8.0, 0.4),  # one entropy short of 0.95 of uniform
        step(0.99 * LN, 7.1, 0.4),  # responses short of 0.9 of the limit
        step(0.99 * LN, 8.0, 0.46),  # the reward fell 23 %, not 25 %
    ],
)
def test_each_condition_is_needed(hacked):
    assert not any(feed(HackingGuard(VOCAB_SIZE, 8), [step(0.2 * LN, 2.0, 0.6), hacked, hacked]))


def test_a_model_that_starts_uniform_is_no_collapse_of_training():
    """A random model (the demo, SMOKE runs) writes uniform bytes to the length limit from step 1."""
    uniform = [step(0.99 * LN, 8.0, score) for score in (0.6, 0.4, 0.4, 0.4)]
    assert not any(feed(HackingGuard(VOCAB_SIZE, 8), uniform))


def test_a_negative_reward_falls_by_a_share_of_its_magnitude():
    healthy = step(0.2 * LN, 2.0, -0.4)
    fallen = [healthy, step(0.99 * LN, 8.0, -0.51), step(0.99 * LN, 8.0, -0.52)]  # 27.5 % and 30 % of 0.4
    assert feed(HackingGuard(VOCAB_SIZE, 8), fallen) == [False, False, True]
    held = [healthy, step(0.99 * LN, 8.0, -0.45), step(0.99 * LN, 8.0, -0.45)]  # 12.5 %
    assert not any(feed(HackingGuard(VOCAB_SIZE, 8), held))


def test_a_step_without_the_metrics_breaks_the_streak_and_is_not_scored():
    guard = HackingGuard(VOCAB_SIZE, 8)
    feed(guard, [step(0.2 * LN, 2.0, 0.6), step(0.99 * LN, 8.0, 0.4)])
    missing = step(0.99 * LN, 8.0, 0.4)
    del missing[ENTROPY_AUG_METRIC]  # e.g. a step without image rows
    assert guard.observe(3, missing) is None
    guard.observe(4, step(0.99 * LN, 8.0, 0.4))
    assert guard.alarm() is None
    guard.observe(5, step(0.99 * LN, 8.0, 0.4))
    assert guard.alarm() is not None


def test_the_alarm_names_the_metrics_their_values_and_the_remedies():
    guard = HackingGuard(VOCAB_SIZE, 8)
    feed(guard, [step(0.2 * LN, 2.0, 0.6, kl=0.2), step(0.99 * LN, 8.0, 0.4, kl=0.9), step(0.99 * LN, 8.0, 0.38)])
    alarm = guard.alarm()
    assert alarm is not None and alarm.step == 3
    message = alarm.message()
    for text in (
        "KL_prcp hacking suspected at step 3",
        f"papo/entropy_ori={0.99 * LN:.4g}",
        f"ln(vocab size)={LN:.4g}",
        "response_length/mean=8 (max_response_length=8",
        "critic/score/mean=0.38 (best so far 0.6, a fall of 37%",
        "papo/kl_prcp=0.1 (first step 0.2, largest 0.9)",
        "arXiv 2507.06448",
        *REMEDIES,
    ):
        assert text in message, text
    assert guard.score == pytest.approx(min(0.99 / 0.95, 1 / 0.9, (0.6 - 0.4) / 0.6 / 0.25))


if __name__ == "__main__":
    for path in (RUNS_FILE, *EXTRA_FILES):
        per_seed, max_response_length = load_runs(path)
        for arm, seeds in per_seed.items():
            for seed, series in seeds.items():
                run = replay(series, max_response_length)
                print(
                    f"{path.name:32} {arm:32} seed {seed}: alarm at step {run['alarm']}, accuracy <= "
                    f"{COLLAPSED_ACCURACY} from step {run['collapse']}, largest score {run['score']:.3f} "
                    f"(step {run['score_step']})"
                )
