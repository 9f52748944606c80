"""VPPO's advantage shaping over data-parallel ranks: the weights of a global mini-batch spread over 2
or 4 gloo ranks (each with its own micro-batch split) equal those computed over the whole mini-batch
on one rank. Ranks are forked processes with a real ``torch.distributed`` gloo group."""

from __future__ import annotations

import multiprocessing
import os
import socket

import pytest
import torch

from recipe.papo.vppo import shaping_weights

BETA_MIN = 0.9


def _scores() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(16, generator=g, dtype=torch.float64) ** 3 * 0.01
    rows = torch.ones(16, dtype=torch.bool)
    rows[[3, 10]] = False  # e.g. text-only rows
    return scores, rows


def _rank(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        scores, rows = _scores()
        share = slice(rank * 16 // world, (rank + 1) * 16 // world)
        weights, _ = shaping_weights(scores[share], rows[share], BETA_MIN, group=torch.distributed.group.WORLD)
        queue.put((rank, weights.tolist()))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("world", [2, 4])
def test_weights_over_ranks_equal_weights_over_the_whole_mini_batch(world):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_rank, args=(rank, world, port, queue)) for rank in range(world)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    spread = [w for rank in range(world) for w in results[rank]]
    scores, rows = _scores()
    whole, stats = shaping_weights(scores, rows, BETA_MIN)
    assert stats.shapes
    assert spread == pytest.approx(whole.tolist(), abs=1e-7)
    # the per-rank statistics alone (the published code's min/max over one rank) would differ
    alone, _ = shaping_weights(scores[: 16 // world], rows[: 16 // world], BETA_MIN)
    assert alone.tolist() != pytest.approx(whole[: 16 // world].tolist(), abs=1e-3)
