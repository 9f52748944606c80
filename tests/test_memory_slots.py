"""The suite's memory admission (``tests/support/memory_slots.py``): which runs may share a machine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import memory_slots
import pytest
from memory_slots import PEAK_GIB, admits, budget_gib, memory_slot, read_entries, read_ledger

CI_MACHINE_GIB = 23.4  # MemTotal of a 24 GiB CI machine, GiB


@pytest.fixture
def ledger(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "ledger"
    monkeypatch.setattr(memory_slots, "LEDGER", path)
    monkeypatch.setattr(memory_slots, "total_memory_gib", lambda: CI_MACHINE_GIB)
    monkeypatch.setattr(memory_slots, "POLL_S", 0.05)
    return path


def test_a_ci_machine_refuses_the_runs_that_ran_out_of_memory_together():
    # CI ran out of memory with two vLLM SMOKE runs and an HF demo run at once
    budget = budget_gib(CI_MACHINE_GIB)
    assert not admits([PEAK_GIB["vllm"]], PEAK_GIB["vllm"], budget)
    assert not admits([PEAK_GIB["vllm"], PEAK_GIB["hf"]], PEAK_GIB["vllm"], budget)
    # while a vLLM run beside an HF run and an in-process engine, or three HF runs, fit
    assert admits([PEAK_GIB["vllm"], PEAK_GIB["engine"]], PEAK_GIB["hf"], budget)
    assert admits([PEAK_GIB["hf"], PEAK_GIB["hf"]], PEAK_GIB["hf"], budget)
    # the two-node cluster run is a vLLM run with more: never beside another, but beside an HF run
    assert not admits([PEAK_GIB["cluster"]], PEAK_GIB["vllm"], budget)
    assert admits([PEAK_GIB["cluster"], PEAK_GIB["engine"]], PEAK_GIB["hf"], budget)


def test_a_run_larger_than_the_budget_starts_once_it_is_alone():
    assert admits([], 100.0, budget=10.0)
    assert not admits([0.5], 100.0, budget=10.0)


def test_a_slot_is_in_the_ledger_while_held_and_gone_after(ledger):
    with memory_slot("hf"):
        entries = read_entries(ledger.read_text())
        assert [(kind, gib) for _, kind, gib in entries] == [("hf", PEAK_GIB["hf"])]
    assert read_entries(ledger.read_text()) == []


def test_a_slot_is_freed_when_its_block_raises(ledger):
    with pytest.raises(ValueError), memory_slot("vllm"):
        raise ValueError("run failed")
    assert read_entries(ledger.read_text()) == []


def test_the_slot_of_a_process_that_died_is_freed(ledger):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ledger.write_text(f"{dead.pid} vllm {PEAK_GIB['vllm']}\n")
    with memory_slot("vllm"):  # would not fit beside a live vLLM run
        assert [kind for _, kind, _ in read_entries(ledger.read_text())] == ["vllm"]


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import memory_slots
    memory_slots.LEDGER = Path(sys.argv[2])
    memory_slots.total_memory_gib = lambda: float(sys.argv[4])
    with memory_slots.memory_slot("vllm"):
        Path(sys.argv[3]).write_text("holding")
        while Path(sys.argv[3]).exists():
            time.sleep(0.05)
    """
)


def test_a_second_vllm_run_waits_for_the_first_in_another_process(ledger, tmp_path):
    flag = tmp_path / "holding"
    support = Path(memory_slots.__file__).parent
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(support), str(ledger), str(flag), str(CI_MACHINE_GIB)])
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the holder never took its slot"
            time.sleep(0.05)
        with pytest.raises(TimeoutError, match=rf"{holder.pid}, 'vllm'"), memory_slot("vllm", timeout_s=0.5):
            pass
        with memory_slot("hf"):  # fits beside it
            pass
        flag.unlink()  # the holder's run ends
        with memory_slot("vllm", timeout_s=60):
            assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()


@pytest.fixture
def other_process():
    """The pid of a live process that is not this one (a stand-in for another pytest worker)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process.pid
    process.kill()
    process.wait()


def test_the_run_that_waited_longest_goes_first(ledger, other_process):
    """A free slot goes to the oldest waiter that fits, not to whichever run polls first."""
    vllm = PEAK_GIB["vllm"]
    ledger.write_text(f"wait {other_process} vllm {vllm} {time.time() - 60!r}\n")
    with pytest.raises(TimeoutError), memory_slot("vllm", timeout_s=0.3):
        pass
    # the run that gave up waiting is gone from the ledger; the older waiter is still there
    assert read_ledger(ledger.read_text()) == (
        [],
        [(other_process, "vllm", vllm, pytest.approx(time.time() - 60, abs=5))],
    )
    ledger.write_text("")  # the older run took its slot and finished
    with memory_slot("vllm", timeout_s=5):
        assert read_ledger(ledger.read_text())[0] == [(memory_slots.os.getpid(), "vllm", vllm)]


def test_an_older_waiter_that_does_not_fit_lets_a_smaller_run_go(ledger, other_process):
    cluster, vllm = PEAK_GIB["cluster"], PEAK_GIB["vllm"]
    ledger.write_text(f"{other_process} cluster {cluster}\nwait {other_process} vllm {vllm} {time.time() - 60!r}\n")
    with memory_slot("hf", timeout_s=5):  # the waiting vLLM run does not fit beside the cluster; an HF run does
        holders, waiters = read_ledger(ledger.read_text())
        assert [kind for _, kind, _ in holders] == ["cluster", "hf"] and [w[1] for w in waiters] == ["vllm"]


def test_the_wait_for_a_slot_does_not_count_against_the_tests_time_limit(ledger, other_process):
    """pytest-timeout's timer is pushed back by the time spent waiting, so a limit bounds the run only."""
    import signal
    import threading

    vllm = PEAK_GIB["vllm"]
    ledger.write_text(f"{other_process} vllm {vllm}\n")  # another worker's vLLM run holds the machine

    def finish_the_other_run():
        time.sleep(1.0)
        ledger.write_text("")

    finisher = threading.Thread(target=finish_the_other_run)
    previous = signal.getitimer(signal.ITIMER_REAL)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.setitimer(signal.ITIMER_REAL, 30.0)  # stands in for pytest-timeout's limit (signal method)
    try:
        finisher.start()
        started = time.monotonic()
        with memory_slot("vllm", timeout_s=10):
            waited = time.monotonic() - started
            remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, *previous)
        finisher.join()
    assert waited >= 0.9
    # without the extension the timer would show 30 - waited; with it, about 30 s are left
    assert remaining == pytest.approx(30.0, abs=0.3)
    assert remaining > 30.0 - waited + 0.5
