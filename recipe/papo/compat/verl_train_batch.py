"""A step before each update mini-batch of verl's actor (every device): VPPO's advantage weights.

VPPO's weights w_i are normalised over one update mini-batch (its paper; ``recipe.papo.vppo``), so they
must be computed once per mini-batch, on every rank, before the loss sees its micro-batches. verl
0.9.1's ``TrainingWorker.train_mini_batch`` splits the update batch into mini-batches and calls
``self.train_batch(mini_batch)`` for each, with no hook in between. :func:`run_before_each_mini_batch`
sets an instance attribute ``train_batch`` on the actor's ``TrainingWorker`` that runs the step and then
verl's own method, which that loop then calls. It checks, when the worker starts, that the installed
verl is the one this was written for and that ``train_mini_batch`` still calls ``self.train_batch``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from tensordict import TensorDict

from .guard import UnsupportedVersionError, installed_version, log_patched, require_version

TRAIN_BATCH_PATCH = "verl_train_batch.run_before_each_mini_batch"
SUPPORTED_VERL: tuple[str, ...] = ("0.9.1",)
_CALL = "self.train_batch("


def run_before_each_mini_batch(training_worker: Any, step: Callable[[TensorDict], Any]) -> None:
    """Make ``training_worker`` (verl's actor ``TrainingWorker``) run ``step(mini_batch)`` before each mini-batch.

    ``step`` may write fields into the mini-batch (its return value is dropped); then verl's own
    ``train_batch`` runs on it, as before.

    Raises:
        UnsupportedVersionError: another verl than 0.9.1, or a ``train_mini_batch`` that no longer
            calls ``self.train_batch`` per mini-batch.
    """
    require_version("verl", SUPPORTED_VERL, TRAIN_BATCH_PATCH)
    try:
        source = inspect.getsource(type(training_worker).train_mini_batch)
    except (AttributeError, OSError, TypeError):
        source = ""
    if _CALL not in source:
        raise UnsupportedVersionError(
            f"recipe.papo.compat.verl_train_batch: VPPO's weights run before each update mini-batch by wrapping "
            f"{type(training_worker).__name__}.train_batch, which verl {installed_version('verl')}'s train_mini_batch "
            "no longer calls per mini-batch. Update recipe/papo/compat/verl_train_batch.py after checking where the "
            "update loop hands each mini-batch to the engine."
        )
    train_batch = training_worker.train_batch

    def train_batch_after_step(data: TensorDict) -> Any:
        step(data)
        return train_batch(data)

    training_worker.train_batch = train_batch_after_step
    log_patched(TRAIN_BATCH_PATCH, f"{type(training_worker).__name__}.train_batch runs a step before each mini-batch")
