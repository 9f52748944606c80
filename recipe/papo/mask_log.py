"""A per-rank log of the masks drawn, to check that every rank and node masks a prompt alike.

Off unless the environment variable ``PAPO_MASK_LOG_DIR`` names a folder. On a cluster it must reach
the workers through the job's runtime env (``++ray_kwargs.ray_init.runtime_env.env_vars.PAPO_MASK_LOG_DIR=...``,
docs/training.md) and be on storage every node writes. Then every process that masks a row appends
one JSON line per masked row to ``<dir>/masks_rank<rank>_pid<pid>.jsonl``::

    {"step": 2, "uid": "...", "rank": 1, "node_id": "...", "host": "...", "pid": 123,
     "pixels": "<sha256>", "masked": "<sha256>", "rows": 64, "rows_blackened": 38}

``pixels`` and ``masked`` are SHA-256 digests (first 16 hex digits) of the row's original and masked
``pixel_values`` bytes, ``rows`` their row count and ``rows_blackened`` the rows masking changed.
A row's mask is a pure function of ``(papo.mask_seed, step, uid)`` and its own inputs
(:mod:`recipe.papo.masked_inputs`), so lines with the same step and uid carry the same digests on
every rank and node; a difference names the prompt and step where they diverge.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import torch

MASK_LOG_ENV = "PAPO_MASK_LOG_DIR"


def digest(tensor: torch.Tensor) -> str:
    """First 16 hex digits of the SHA-256 of ``tensor``'s bytes (any dtype, any device)."""
    data = tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _rank() -> int | None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ["RANK"]) if os.environ.get("RANK", "").isdigit() else None


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def log_mask(uid: str, step: int, pixel_values: torch.Tensor, masked: torch.Tensor) -> None:
    """Append one row's mask record (module docstring) when ``PAPO_MASK_LOG_DIR`` is set; else nothing.

    Args:
        uid: the row's prompt uid.
        step: the global step the row is masked for.
        pixel_values / masked: the row's original and masked ``(rows, row_width)`` ``pixel_values``.
    """
    folder = os.environ.get(MASK_LOG_ENV)
    if not folder:
        return
    rank, pid = _rank(), os.getpid()
    record = {
        "step": int(step),
        "uid": str(uid),
        "rank": rank,
        "node_id": _node_id(),
        "host": socket.gethostname(),
        "pid": pid,
        "pixels": digest(pixel_values),
        "masked": digest(masked),
        "rows": int(masked.shape[0]),
        "rows_blackened": int((masked != pixel_values).reshape(masked.shape[0], -1).any(-1).sum()),
    }
    path = Path(folder) / f"masks_rank{rank}_pid{pid}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
