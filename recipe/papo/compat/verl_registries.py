"""Read-only views of verl registries that have no public listing (every device).

The start-up checks (:mod:`recipe.papo.run_checks`) name the allowed values of every registry name a
run uses, before Ray starts. Advantage estimators, policy losses and reward managers are public
module-level dicts in verl 0.9.1; the rollout replicas are not: ``RolloutReplicaRegistry`` offers
``get(name)``, which *imports* the backend (vLLM, SGLang), impossible on a machine without it. So
:func:`rollout_names` reads the class's private ``_registry`` keys, after checking that it is still
the ``name -> loader`` dict verl 0.9.1 keeps (it fails loudly otherwise). Nothing is modified.
"""

from __future__ import annotations

from .guard import UnsupportedVersionError, installed_version


def rollout_names() -> tuple[str, ...]:
    """Rollout names ``actor_rollout_ref.rollout.name`` may take in this process, sorted.

    Those registered in ``verl.workers.rollout.replica.RolloutReplicaRegistry`` (verl 0.9.1: vllm,
    sglang, trtllm; plus ``hf`` when the project's CPU backend is on, ``VERL_PLATFORM=cpu``).

    Raises:
        UnsupportedVersionError: the registry is no longer a dict of names to loaders.
    """
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    registry = getattr(RolloutReplicaRegistry, "_registry", None)
    if not isinstance(registry, dict) or not all(isinstance(k, str) and callable(v) for k, v in registry.items()):
        raise UnsupportedVersionError(
            "recipe.papo.compat.verl_registries: verl.workers.rollout.replica.RolloutReplicaRegistry._registry "
            f"(verl {installed_version('verl')}) is not the dict of rollout names to loaders that verl 0.9.1 keeps; "
            "update recipe/papo/compat/verl_registries.py after checking how this verl lists rollout names."
        )
    return tuple(sorted(registry))
