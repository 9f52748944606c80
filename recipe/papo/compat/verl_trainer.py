"""The methods of verl's synchronous v1 trainer that the PAPO trainer overrides or calls (every device).

verl 0.9.1's ``PPOTrainerSync`` offers no public hook around a step: the PAPO trainer
(:mod:`recipe.papo.trainer`) overrides four of its private step methods, and
``papo.hacking_guard=stop`` calls its private checkpoint method. On a verl that renamed one of them
or changed its arguments, an override would silently never run (a run without PAPO's terms that
looks healthy). :func:`check_trainer_hooks` refuses such a verl when the trainer module is
imported, before any run starts; :func:`save_checkpoint` is the one call of a private method.
"""

from __future__ import annotations

import inspect

from .guard import UnsupportedVersionError, installed_version, log_patched

# Method -> its parameters after ``self``, as verl 0.9.1's ``verl.trainer.ppo.v1`` defines them.
TRAINER_HOOKS: dict[str, tuple[str, ...]] = {
    "_init_resource_pool_mgr": (),
    "_compute_old_log_prob": ("batch", "metrics"),
    "_update_actor": ("batch", "metrics"),
    "_compute_metrics": ("batch", "metrics", "timing_raw", "global_steps", "epoch"),
    "_save_checkpoint": (),
}


def check_trainer_hooks(trainer_class: type) -> None:
    """Check that ``trainer_class`` (verl's ``PPOTrainerSync``) has every method of :data:`TRAINER_HOOKS`.

    Raises:
        UnsupportedVersionError: a method is missing or takes other parameters, naming it and what to do.
    """
    for name, parameters in TRAINER_HOOKS.items():
        method = getattr(trainer_class, name, None)
        found = None if method is None else tuple(inspect.signature(method).parameters)[1:]
        if found != parameters:
            raise UnsupportedVersionError(
                f"recipe.papo.compat.verl_trainer: {trainer_class.__qualname__}.{name} of verl "
                f"{installed_version('verl')} is {'missing' if method is None else f'{name}{found}'}, not "
                f"{name}{parameters} as in verl 0.9.1, so the PAPO trainer's override would not run. Install "
                "verl 0.9.1 or update recipe/papo/trainer.py and recipe/papo/compat/verl_trainer.py after checking "
                "where this verl computes old log-probs, updates the actor, computes metrics and saves checkpoints."
            )
    log_patched("verl_trainer", f"{trainer_class.__qualname__} has the step methods the PAPO trainer overrides")


def save_checkpoint(trainer) -> None:
    """Save verl's checkpoint of ``trainer``'s current global step (its ``_save_checkpoint``)."""
    trainer._save_checkpoint()
