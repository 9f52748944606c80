"""Validation metrics exactly as verl 0.9.1's v1 trainer computes them, for the evaluation-table tests.

Test support: importable as ``papo_eval_metrics`` once ``tests/support`` is on ``sys.path``
(``tests/conftest.py`` puts it there).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from recipe.papo.prompt import data_source
from recipe.papo.reward import compute_score

GROUND_TRUTH = "7"
RESPONSES = {1: "<think>3 + 4</think> \\boxed{7}", 0: "<think>3 + 5</think> \\boxed{8}"}


def verl_validation_metrics(samples: Mapping[str, Sequence[Sequence[int]]], n: int = 8) -> dict[str, Any]:
    """Validation metrics exactly as verl 0.9.1's v1 ``_validate`` returns them.

    Args:
        samples: ``{benchmark: [[acc of each sample of question 1], [question 2], ...]}``; a question
            listed with fewer than ``n`` samples models failed sessions.
        n: samples per question the run asked for (``val_kwargs.n``).

    Scores one response per listed sample with the PAPO reward and feeds the results through verl's
    own ``PPOTrainer._val_metrics_update`` (which calls ``process_validation_metrics``), the same way
    ``_validate`` does.
    """
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    sources: list[str] = []
    uids: list[str] = []
    infos: dict[str, list[Any]] = defaultdict(list)
    expected_counts: dict[tuple[str, str], int] = {}
    for benchmark, questions in samples.items():
        source = data_source(benchmark)
        for index, accs in enumerate(questions):
            uid = f"{benchmark}-{index}"
            expected_counts[(source, uid)] = n
            for acc in accs:
                result = compute_score(source, RESPONSES[acc], GROUND_TRUTH, extra_info={})
                sources.append(source)
                uids.append(uid)
                infos["reward"].append(result["score"])  # _validate's rm_scores sum
                for key, value in result.items():
                    infos[key].append(value)
    # _val_metrics_update does not use `self`; calling it unbound runs verl's exact naming code.
    return PPOTrainer._val_metrics_update(
        None, sources, uids, dict(infos), [1] * len(uids), expected_acc_counts=expected_counts
    )
