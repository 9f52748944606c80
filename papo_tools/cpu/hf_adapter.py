"""The actor-side adapter of the "hf" rollout: ships trained weights to the HF rollout server.

Plugs into ``verl.workers.rollout.base`` (verl 0.9.1): ``ActorRolloutRefWorker.init_model`` builds
``get_rollout_class(rollout.name, rollout.mode)(config=, model_config=, device_mesh=)`` and, in
``update_weights`` (``checkpoint_engine.backend=naive``, the sync trainer's default), calls
``resume(tags=...)``, then ``update_weights(per_tensor_param, peft_config=, base_sync_done=,
global_steps=)`` with a generator of full HF-named tensors. This adapter collects that generator
into a state dict and sends it to the replica's named server actor (:mod:`.hf_server`), which
loads it with every key checked. ``resume``/``release`` are no-ops: the server holds no device
memory.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout


def server_actor_name(replica_rank: int) -> str:
    """Ray actor name of the HF rollout server of ``replica_rank`` (shared by replica and adapter)."""
    return f"hf_server_{replica_rank}"


class HFServerAdapter(BaseRollout):
    """``BaseRollout`` that forwards weight updates to the replica's HF rollout server."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs: Any) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        # One server per replica: its first rank sends the weights.
        self._is_sender = rank % rollout_world_size == 0
        self._server: ray.actor.ActorHandle | None = None

    def _server_handle(self) -> ray.actor.ActorHandle:
        # The server starts after the worker (LLMServerManager runs after init_model): look it up lazily.
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        global_steps: int | None = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        """Send every ``(name, tensor)`` of ``weights`` to the server as one CPU state dict."""
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the 'hf' rollout only takes full named tensors, got {wire_format!r}")
        if peft_config is not None:
            raise NotImplementedError("the 'hf' rollout does not load LoRA adapters; set model.lora.merge=True")
        # Materialise the generator on every rank: FSDP all-gathers inside it. Detached copies: the
        # trainer keeps updating its own parameters.
        state_dict = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}
        if self._is_sender:
            await self._server_handle().update_weights.remote(state_dict, global_steps=global_steps)
