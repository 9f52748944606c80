"""Memory admission for the suite's training runs: a run starts only when its measured peak fits.

The end-to-end modules start whole Ray clusters (trainer workers, vLLM engines, TransferQueue,
reward workers: a dozen processes each). pytest-xdist runs several modules at once, and three such
runs together outgrow a 24 GiB CI machine: Ray's memory monitor then kills workers at 95 % of the
node's memory and the runs fail (seen in CI: two vLLM runs and an HF run at once). So each run first
takes a slot here: a ledger file shared by every pytest process on the machine (all xdist workers,
and a second suite running beside this one) lists the runs in flight with their peak, and a run
waits until its own peak fits the budget. Waiting runs are listed too, with the time they began
waiting: when a slot frees, the one that has waited longest among those that fit goes first. (Without
that, whichever run polled first took it: the journey's fixture once waited out its 15-minute limit
while later vLLM runs took the slot one after another.)

Test support: importable as ``memory_slots`` once ``tests/support`` is on ``sys.path``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Peak resident memory of one run above an idle machine, GiB, rounded up from `MemTotal - MemAvailable`
# sampled every 0.5 s on an otherwise idle 2-core machine (docs/develop.md, memory admission):
#   vllm   - SMOKE=1 run_qwen2_5_vl_7b_papo_g.sh, verl's vLLM rollout, 2 workers: 8.7 GiB
#   hf     - the same run with actor_rollout_ref.rollout.name=hf: 5.2 GiB
#   engine - tests/cpu/test_vllm_rollout.py (two in-process vLLM engines, no Ray): 1.9 GiB
#   cluster - tests/e2e/test_multi_node.py: the vLLM run on a two-node Ray cluster (a second raylet and
#             the dashboard on top of a vllm run): 9.3 GiB (summed PSS of the block's processes)
PEAK_GIB = {"vllm": 9.0, "hf": 5.5, "engine": 2.0, "cluster": 9.5}
# Ray's memory monitor kills workers above this share of the node's memory (its default threshold).
RAY_KILL_SHARE = 0.95
# Kept free beside the runs: the pytest workers themselves (about 0.6 GiB each) and the in-process
# tests that build verl workers in a child process (up to about 2 GiB).
HEADROOM_GIB = 5.0
LEDGER = Path(tempfile.gettempdir()) / "papo-verl-tests-memory.ledger"
POLL_S = 2.0


def total_memory_gib() -> float:
    """The machine's memory (``MemTotal`` of ``/proc/meminfo``), GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("/proc/meminfo has no MemTotal line")


def budget_gib(total_gib: float) -> float:
    """Memory the runs in flight may hold together on a machine of ``total_gib``, GiB."""
    return total_gib * RAY_KILL_SHARE - HEADROOM_GIB


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def admits(held_gib: list[float], need_gib: float, budget: float) -> bool:
    """Whether a run of ``need_gib`` may start beside runs holding ``held_gib``.

    A run larger than the whole budget still starts once it is alone, so a small machine runs
    everything, one run at a time.
    """
    return not held_gib or sum(held_gib) + need_gib <= budget


Entry = tuple[int, str, float]  # (pid, kind, GiB) of a run holding its slot
Waiter = tuple[int, str, float, float]  # (pid, kind, GiB, time.time() it began waiting)
WAIT_MARK = "wait"


def read_ledger(text: str) -> tuple[list[Entry], list[Waiter]]:
    """The holders and the waiters of the ledger whose process is still alive (a crashed one frees its place).

    A holder's line is ``<pid> <kind> <GiB>``, a waiter's ``wait <pid> <kind> <GiB> <since>``.
    """
    holders: list[Entry] = []
    waiters: list[Waiter] = []
    for line in text.splitlines():
        fields = line.split()
        if fields[0] == WAIT_MARK:
            _, pid, kind, gib, since = fields
            if alive(int(pid)):
                waiters.append((int(pid), kind, float(gib), float(since)))
        else:
            pid, kind, gib = fields
            if alive(int(pid)):
                holders.append((int(pid), kind, float(gib)))
    return holders, waiters


def read_entries(text: str) -> list[Entry]:
    """``(pid, kind, GiB)`` of each run holding its slot whose process is still alive."""
    return read_ledger(text)[0]


def format_ledger(holders: list[Entry], waiters: list[Waiter]) -> str:
    return "".join(f"{pid} {kind} {gib}\n" for pid, kind, gib in holders) + "".join(
        f"{WAIT_MARK} {pid} {kind} {gib} {since!r}\n" for pid, kind, gib, since in waiters
    )


def update_ledger(change) -> bool:
    """Apply ``change(holders, waiters) -> (holders, waiters, done)`` under an exclusive lock; returns ``done``."""
    with LEDGER.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        holders, waiters, done = change(*read_ledger(handle.read()))
        handle.seek(0)
        handle.truncate()
        handle.write(format_ledger(holders, waiters))
        return done


def without_one(entries: list, entry) -> list:
    """``entries`` less one copy of ``entry`` (a process may hold two slots of one kind)."""
    kept = list(entries)
    if entry in kept:
        kept.remove(entry)
    return kept


def goes_now(holders: list[Entry], waiters: list[Waiter], me: Waiter, budget: float) -> bool:
    """Whether ``me`` may take its slot: it fits beside the holders, and no run waiting longer fits too."""
    held = [gib for *_, gib in holders]
    if not admits(held, me[2], budget):
        return False
    return not any(other[3] < me[3] and admits(held, other[2], budget) for other in waiters if other != me)


def extend_time_limit(seconds: float) -> None:
    """Push the calling test's pytest-timeout deadline back by ``seconds`` (the time it waited for a slot).

    A test's limit bounds its own run, not the queue in front of it: a family's SMOKE run that waited
    9 minutes for the vLLM slot then hit pytest's 900 s in CI while running. pytest-timeout's ``signal``
    method (this suite's) arms ``ITIMER_REAL``; when that timer is armed in the main thread it is
    re-armed with the wait added. Elsewhere (no timer, another thread) nothing changes.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        return
    remaining, interval = signal.getitimer(signal.ITIMER_REAL)
    if remaining > 0:
        signal.setitimer(signal.ITIMER_REAL, remaining + seconds, interval)


@contextmanager
def memory_slot(kind: str, timeout_s: float = 3600.0) -> Iterator[None]:
    """Hold a slot of :data:`PEAK_GIB` ``[kind]`` GiB while the block runs one training run of that kind.

    Waits (polling every :data:`POLL_S` s, listed in the ledger as waiting) until the run fits
    :func:`budget_gib` beside the runs in flight on this machine and no run that has waited longer fits
    too; raises ``TimeoutError`` after ``timeout_s`` s, naming the holders. The wait does not count against
    the test's pytest time limit (:func:`extend_time_limit`).
    """
    need = PEAK_GIB[kind]
    budget = budget_gib(total_memory_gib())
    me = (os.getpid(), kind, need, time.time())
    deadline = time.monotonic() + timeout_s
    seen: list[Entry] = []

    def take(holders, waiters):
        seen[:] = holders
        waiters = without_one(waiters, me)
        if goes_now(holders, [*waiters, me], me, budget):
            return [*holders, me[:3]], waiters, True
        return holders, [*waiters, me], False

    waiting_since = time.monotonic()
    try:
        while not update_ledger(take):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no memory slot for a {kind} run ({need} GiB of {budget:.1f}) after {timeout_s} s; held: {seen}"
                )
            time.sleep(POLL_S)
    except BaseException:  # a timeout, or pytest's time limit inside the sleep: stop waiting
        update_ledger(lambda holders, waiters: (holders, without_one(waiters, me), True))
        raise
    extend_time_limit(time.monotonic() - waiting_since)
    try:
        yield
    finally:
        update_ledger(lambda holders, waiters: (without_one(holders, me[:3]), waiters, True))
