"""Shared vs full masked pass on CUDA, with the scripts' attention (flash-attn): prints one JSON line.

Run by ``tests/worker/test_shared_masked_pass_gpu.py`` in a child process with a user's environment
(not the test session's CPU backend): ``python tests/support/shared_pass_cuda.py <family> <out_dir>``.
Builds the family's tiny model, the real ``PapoActorRolloutRefWorker`` on verl's FSDP2 engine on one
GPU (NCCL, world size 1), remove-padding on, bf16 compute, ``attn_implementation=flash_attention_2``
(verl's default, what the scripts run), and the batch of ``tests/worker/test_shared_masked_pass.py``.
Prints ``{"shared_vs_full": ..., "full_spread": ..., "bf16_step": ..., "uses_flash": ...}``: the largest
difference of the shared pass from the full one (micro-batches of 2 rows), the full pass's own spread
between micro-batches of 2 and 10 rows, one bf16 step at the largest |log-prob|, and whether the shared
pass ran flash-attn kernels.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "worker"))


def main(family: str, out_dir: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)

    import papo_inprocess as inprocess
    import test_shared_masked_pass as cases
    import torch

    from papo_tools.demo.tiny_model import save_tiny_model
    from recipe.papo.model_families import FAMILIES

    model_dir = save_tiny_model(Path(out_dir) / family, family, seed=0)
    config = inprocess.compose_config(model_dir, [cases.RMPAD, *cases.PAPO_VPPO], prompts=5, rollout_n=2)
    config.trainer.device = "cuda"  # the CPU overrides' settings a GPU run does not have
    config.actor_rollout_ref.model.override_config.attn_implementation = "flash_attention_2"
    worker = inprocess.make_worker(config)
    side = 2 * FAMILIES[family].patch_size * FAMILIES[family].merge_size
    batch = inprocess.worker_batch(worker, cases.samples(side), step=3)
    shared = cases.masked(worker, cases.with_micro_batches(batch, 2), shared=True)[0]
    full = cases.masked(worker, cases.with_micro_batches(batch, 2), shared=False)[0]
    other = cases.masked(worker, cases.with_micro_batches(batch, 10), shared=False)[0]
    largest = max(row.abs().max().item() for row in full)
    bf16_step = 2.0 ** (torch.tensor(largest).log2().floor().item() - 7)
    print(
        json.dumps(
            {
                "shared_vs_full": cases.max_difference(shared, full),
                "full_spread": cases.max_difference(full, other),
                "bf16_step": bf16_step,
                "uses_flash": worker.shared_masked_pass is not None and worker.shared_masked_pass.use_flash,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
