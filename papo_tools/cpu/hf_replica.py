"""The "hf" rollout replica and its registration under the rollout name "hf".

Plugs into two registries of verl 0.9.1:

- ``verl.workers.rollout.replica.RolloutReplicaRegistry``: ``LLMServerManager`` builds
  ``get_rollout_replica_class(rollout.name)`` replicas and, for the hybrid (colocated) trainer,
  calls ``init_hybrid(worker_group)``, which calls :meth:`HFReplica.launch_servers`. The replica
  starts one named Ray actor (:class:`~papo_tools.cpu.hf_server.HFRolloutServer`) on the node
  of its first worker and exposes it as ``server_handle``.
- ``verl.workers.rollout.base._ROLLOUT_REGISTRY``: ``ActorRolloutRefWorker.init_model`` builds the
  actor-side ``BaseRollout`` by ``(name, mode)``; ``("hf", "async")`` maps to
  :class:`~papo_tools.cpu.hf_adapter.HFServerAdapter`.

``_ROLLOUT_REGISTRY`` is a private module-level dict with no register function in verl 0.9.1; the
entry is added through :func:`papo_tools.compat.verl_cpu.register_rollout_adapter`.
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry

from papo_tools.compat.verl_cpu import register_rollout_adapter

from .hf_adapter import server_actor_name
from .hf_server import HFRolloutServer

ROLLOUT_NAME = "hf"
ADAPTER_FQN = "papo_tools.cpu.hf_adapter.HFServerAdapter"


class HFReplica(RolloutReplica):
    """One HF ``generate`` server per replica, colocated with the replica's training workers."""

    async def launch_servers(self) -> None:
        if self.is_reward_model or self.is_teacher_model:
            raise NotImplementedError("the 'hf' rollout serves the policy only")
        node_id = await self.workers[0].__ray_call__.remote(lambda worker: ray.get_runtime_context().get_node_id())
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=server_actor_name(self.replica_rank),
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
                max_concurrency=self.max_concurrency,
            )
            .remote(config=self.config, model_config=self.model_config)
        )
        self.servers = [server]
        self._server_handle = server
        # The load balancer keys servers by address; there is no HTTP endpoint behind it.
        self._server_address = f"hf://{server_actor_name(self.replica_rank)}"


def register() -> None:
    """Register the "hf" replica and actor-side adapter (idempotent)."""
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFReplica)
    register_rollout_adapter(ROLLOUT_NAME, "async", ADAPTER_FQN)
