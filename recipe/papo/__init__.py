"""PAPO (Perception-Aware Policy Optimization) as a recipe on verl 0.9.

This package import is deliberately light (``data_prep`` uses ``recipe.papo.prompt`` and
``recipe.papo.masking`` without loading verl). Registration in verl's per-process registries happens
on ``import recipe.papo.register``: the ``papo`` policy loss
(``actor_rollout_ref.actor.policy_loss.loss_mode=papo``), the ``papo`` advantage estimator
(``algorithm.adv_estimator=papo``) and the ``papo`` trainer (``trainer.v1.trainer_mode=papo``).
``python -m recipe.papo.main_papo`` and the PAPO worker import it in every process.
"""
