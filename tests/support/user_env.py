"""The environment a user's shell would give a documented command, for tests that run one.

The test session changes its own ``os.environ``: ``tests/conftest.py`` switches verl's CPU backend on
(``VERL_PLATFORM``, ``VERL_USE_EXTERNAL_MODULES``) and quiets tokenizers, ``papo_inprocess`` sets a
world-size-1 process group (``MASTER_ADDR``/``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``), pytest sets ``PYTEST_*`` and the own-process runner its report file. A child
started with ``env=None`` inherits all of that, so a documented command such as
``python benchmarks/bench_masking.py`` can pass under pytest and crash for a user.
:func:`user_env` is ``os.environ`` without those keys; tests that run a documented command (a
benchmark, ``python -m data_prep...``, ``python -m recipe.papo...``, a script) pass it as ``env``.

Kept on purpose: ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` (tests must not reach the network; a
user without a network sets them too), ``PATH`` and everything the developer's shell had.
Tests of end-to-end training through Ray that do need the CPU backend pass ``cpu_env()``
explicitly (``papo_tools/cpu/launch.py``), which documents that a CPU run needs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Set by the test session (tests/conftest.py, tests/support/papo_inprocess.py, the own-process
# runner), never by a user's shell.
SESSION_KEYS = frozenset(
    {
        "VERL_PLATFORM",
        "VERL_USE_EXTERNAL_MODULES",
        "TOKENIZERS_PARALLELISM",
        "MASTER_ADDR",
        "MASTER_PORT",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "PAPO_OWN_PROCESS_REPORTS",
    }
)
# Set by pytest and its plugins (PYTEST_CURRENT_TEST, PYTEST_XDIST_WORKER, ...).
SESSION_PREFIXES = ("PYTEST_",)


def is_session_key(key: str) -> bool:
    """True iff ``key`` is an environment variable the test session sets (see :data:`SESSION_KEYS`)."""
    return key in SESSION_KEYS or key.startswith(SESSION_PREFIXES)


def user_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without what the test session set in it, plus ``extra``.

    Args:
        extra: variables the test sets on purpose, as the command's documentation tells a user to
            (e.g. ``{"PAPO_DRY_RUN": "1"}``); they win over the inherited ones.

    Returns:
        A new dict to pass as ``env=`` to :func:`subprocess.run`.
    """
    env = {key: value for key, value in os.environ.items() if not is_session_key(key)}
    env.update(extra or {})
    return env
