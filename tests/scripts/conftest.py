"""Fixtures of the script tests; running a script is :mod:`script_runs` (``tests/support``).

Each dry run is one Python start plus the verl import (about 6 s), so the dry runs every test needs
are started once per session on a small thread pool and shared (:func:`dry_runs`).
"""

from __future__ import annotations

import pytest
from script_runs import DryRuns


@pytest.fixture(scope="session")
def dry_runs(tmp_path_factory):
    runs = DryRuns(tmp_path_factory.mktemp("dry_runs"))
    yield runs
    runs.close()
