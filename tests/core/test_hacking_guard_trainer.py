"""What the PAPO trainer does with the hacking guard's alarm (``PapoTrainer._watch_for_hacking``).

The trainer is the real ``PapoTrainer`` built from the composed config of the tiny model (its
constructor starts no worker and no Ray). Saving a checkpoint needs the workers, so here
``_save_checkpoint`` only records its calls; the live run with verl's own checkpoint is
``tests/experiments/test_hacking_guard_e2e.py``.
"""

from __future__ import annotations

import math

import papo_inprocess as inprocess
import pytest

from recipe.papo.hacking_guard import (
    ENTROPY_AUG_METRIC,
    ENTROPY_ORI_METRIC,
    HACKING_ALARM_METRIC,
    HACKING_SCORE_METRIC,
    LENGTH_METRIC,
    SCORE_METRIC,
)

MAX_RESPONSE_LENGTH = 8


def metrics(entropy_fraction: float, length: float, score: float, vocab: int) -> dict[str, float]:
    entropy = entropy_fraction * math.log(vocab)
    return {ENTROPY_ORI_METRIC: entropy, ENTROPY_AUG_METRIC: entropy, LENGTH_METRIC: length, SCORE_METRIC: score}


HEALTHY, HACKED = (0.2, 2.0, 0.6), (0.99, 8.0, 0.35)


def trainer_for(tiny_model_dir, *overrides: str):
    from recipe.papo.trainer import PapoTrainer

    config = inprocess.compose_config(tiny_model_dir, [f"data.max_response_length={MAX_RESPONSE_LENGTH}", *overrides])
    trainer = PapoTrainer(config)
    trainer.hacking_guard = trainer._build_hacking_guard()  # what on_init_end does
    trainer.total_training_steps = 10
    trainer.saved = []
    trainer._save_checkpoint = lambda: trainer.saved.append(trainer.global_steps)
    return trainer, 272


def run_steps(trainer, vocab: int, steps: list[tuple]) -> list[dict]:
    logged = []
    for step, values in enumerate(steps, start=1):
        trainer.global_steps = step
        record = metrics(*values, vocab)
        trainer._watch_for_hacking(record, step)
        logged.append(record)
    return logged


def test_the_vocabulary_size_is_read_from_the_models_config(tiny_model_dir):
    import json

    from recipe.papo.trainer import model_vocab_size

    config = inprocess.compose_config(tiny_model_dir)
    expected = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]["vocab_size"]
    assert model_vocab_size(config.actor_rollout_ref.model) == expected == 272


def test_warn_logs_one_error_per_episode_and_trains_on(tiny_model_dir, caplog):
    trainer, vocab = trainer_for(tiny_model_dir, "papo.hacking_guard=warn")
    with caplog.at_level("ERROR", logger="recipe.papo.trainer"):
        logged = run_steps(trainer, vocab, [HEALTHY, HACKED, HACKED, HACKED, HEALTHY, HACKED, HACKED])
    assert [r[HACKING_ALARM_METRIC] for r in logged] == [0, 0, 1, 1, 0, 0, 1]
    assert logged[0][HACKING_SCORE_METRIC] == 0.0 and logged[2][HACKING_SCORE_METRIC] >= 1.0
    alarms = [r.message for r in caplog.records if "KL_prcp hacking suspected" in r.message]
    assert len(alarms) == 2 and "at step 3" in alarms[0] and "at step 7" in alarms[1]
    assert trainer.saved == [] and trainer.total_training_steps == 10


@pytest.mark.parametrize(("save_freq", "saved"), [(-1, [3]), (3, [])])
def test_stop_saves_the_alarm_step_unless_verl_just_did_and_ends_the_loop_there(
    tiny_model_dir, caplog, save_freq, saved
):
    trainer, vocab = trainer_for(tiny_model_dir, "papo.hacking_guard=stop", f"trainer.save_freq={save_freq}")
    with caplog.at_level("ERROR", logger="recipe.papo.trainer"):
        run_steps(trainer, vocab, [HEALTHY, HACKED, HACKED])
    assert trainer.saved == saved
    # verl's fit loop runs while global_steps <= total_training_steps: it ends after step 3 is logged
    assert trainer.total_training_steps == 3
    assert "papo.hacking_guard=stop: the run ends after step 3 (of 10)" in caplog.text
    assert "global_step_3" in caplog.text


def test_the_guard_is_built_with_the_models_vocabulary_unless_off_or_papo_is_off(tiny_model_dir):
    trainer, _ = trainer_for(tiny_model_dir)
    assert trainer.hacking_guard.ln_vocab == pytest.approx(math.log(272))
    assert trainer.hacking_guard.max_response_length == MAX_RESPONSE_LENGTH
    assert trainer_for(tiny_model_dir, "papo.hacking_guard=off")[0].hacking_guard is None
    assert trainer_for(tiny_model_dir, "papo.kl_prcp_coef=0")[0].hacking_guard is None  # plain GRPO


def test_a_step_without_the_metrics_is_not_scored(tiny_model_dir):
    trainer, _ = trainer_for(tiny_model_dir)
    record = {SCORE_METRIC: 0.5}  # e.g. a step without image rows: no papo/entropy_* metrics
    trainer._watch_for_hacking(record, 1)
    assert HACKING_SCORE_METRIC not in record and HACKING_ALARM_METRIC not in record
