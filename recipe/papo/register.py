"""Import for side effects: register PAPO's loss and advantage estimator in verl's registries.

verl's registries are per process; this module is imported by the driver (``main_papo``), the
PAPO trainer and the PAPO worker. It can also be named in ``actor_rollout_ref.model.external_lib``.
"""

from . import advantage, policy_loss  # noqa: F401
