"""SIGTERM and SIGINT as exceptions, so an interrupted run can clean up and leave earlier outputs intact.

Python turns SIGINT (Ctrl-C) into :class:`KeyboardInterrupt`, but SIGTERM (``kill``, a job scheduler
ending a job) ends the process at once by default, without running any cleanup. Inside
:func:`terminate_raises` SIGTERM raises :class:`Terminated` instead. :func:`signals_deferred` holds
both signals back while a few files are swapped into place, and delivers them afterwards.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """The process received SIGTERM (a ``BaseException``, like ``KeyboardInterrupt``)."""


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(f"received {signal.Signals(signum).name}")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def terminate_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` in the main thread."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM during the block; re-deliver the first one received after it."""
    if not _in_main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


def worker_signals() -> None:
    """Pool-worker initializer: Ctrl-C is the parent's to handle; SIGTERM ends the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
