"""The one hand-off into verl's training engine that verl offers no public hook for (every device).

``papo.masked_logprob_mode=recompute`` needs, inside each update micro-batch, a second forward of the
policy on the masked copy of that micro-batch *with gradient*, under the engine's own input
preparation (remove-padding, Ulysses, mRoPE position ids), autocast and output processing. verl's
engine interface (``BaseEngine``) only offers whole-batch calls (``forward_backward_batch``,
``infer_batch``), whose outputs are detached. The FSDP engine's per-micro-batch method
``FSDPEngineWithLMHead.forward_step(micro_batch, loss_function, forward_only)`` does exactly the
forward we need and hands the model output, still attached to the graph, to ``loss_function``;
:func:`forward_log_probs_with_grad` uses it with a loss function that only captures the log-probs.

That method is not part of the engine interface, so :func:`check_engine_forward_step` verifies its
shape when the worker starts (not deep in the first update) and fails with
:class:`UnsupportedVersionError` naming what changed. Checked against verl 0.9.1 (FSDP/FSDP2
engines; Megatron's ``forward_step`` has another signature and is refused).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from tensordict import TensorDict

from .guard import UnsupportedVersionError, installed_version

FORWARD_STEP_PARAMETERS: tuple[str, ...] = ("micro_batch", "loss_function", "forward_only")


def forward_step_parameters(engine: Any) -> tuple[str, ...] | None:
    """The parameter names of ``engine.forward_step``, or None if it has none (or no readable signature)."""
    method = getattr(engine, "forward_step", None)
    if not callable(method):
        return None
    try:
        return tuple(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return None


def check_engine_forward_step(engine: Any) -> None:
    """Raise unless ``engine.forward_step`` has verl 0.9.1's FSDP shape ``(micro_batch, loss_function, forward_only)``.

    Raises:
        UnsupportedVersionError: naming the engine class, the parameters found and what to do.
    """
    found = forward_step_parameters(engine)
    if found != FORWARD_STEP_PARAMETERS:
        raise UnsupportedVersionError(
            f"recipe.papo.compat.verl_engine: papo.masked_logprob_mode=recompute runs the masked forward through "
            f"{type(engine).__name__}.forward_step{FORWARD_STEP_PARAMETERS}, as verl 0.9.1's FSDP engines define it, "
            f"but this engine (verl {installed_version('verl')}) has "
            f"{'no forward_step' if found is None else 'forward_step' + str(found)}. Use "
            "papo.masked_logprob_mode=precompute (engine-independent), the FSDP/FSDP2 engine, or update "
            "recipe/papo/compat/verl_engine.py after checking the engine's per-micro-batch forward."
        )


def forward_log_probs_with_grad(engine: Any, micro_batch: TensorDict) -> torch.Tensor:
    """Full-sequence nested log-probs of ``micro_batch`` from the engine's own forward, with gradient.

    Must be called inside the engine's training forward (as the PAPO loss is), after
    :func:`check_engine_forward_step` accepted the engine.

    Returns:
        The engine's ``model_output["log_probs"]``: nested ``(batch, seq_len_i)``, attached to the
        autograd graph of the engine's module.
    """
    captured: dict[str, torch.Tensor] = {}

    def capture(model_output: dict, data: TensorDict, dp_group: Any = None) -> tuple[torch.Tensor, dict]:
        captured["log_probs"] = model_output["log_probs"]
        return torch.zeros(()), {}

    engine.forward_step(micro_batch, loss_function=capture, forward_only=False)
    if "log_probs" not in captured:
        raise UnsupportedVersionError(
            f"recipe.papo.compat.verl_engine: {type(engine).__name__}.forward_step (verl {installed_version('verl')}) "
            "returned without calling its loss_function with the model output; papo.masked_logprob_mode=recompute "
            "cannot get the masked log-probs. Use papo.masked_logprob_mode=precompute."
        )
    return captured["log_probs"]


def built_actor_config(worker: Any) -> Any:
    """The ``ActorConfig`` verl's ``ActorRolloutRefWorker.init_model`` built for the actor (once per worker).

    verl 0.9.1 keeps it only as the ``config`` keyword of the loss it hands the engine
    (``worker.loss_fn = partial(ppo_loss, config=actor_config)``); the PAPO worker reads it there instead
    of building the actor config (and its ``PapoConfig``) a second time.

    Raises:
        UnsupportedVersionError: ``worker.loss_fn`` carries no ``ActorConfig`` (another verl).
    """
    from verl.workers.config import ActorConfig

    config = getattr(getattr(worker, "loss_fn", None), "keywords", {}).get("config")
    if not isinstance(config, ActorConfig):
        raise UnsupportedVersionError(
            f"recipe.papo.compat.verl_engine: the PAPO worker reads the actor config verl's init_model built from "
            f"worker.loss_fn (a partial with config=ActorConfig in verl 0.9.1), but this worker's loss_fn "
            f"(verl {installed_version('verl')}) is {getattr(worker, 'loss_fn', None)!r}. Update "
            "recipe/papo/compat/verl_engine.py after checking where init_model keeps the actor config."
        )
    return config
