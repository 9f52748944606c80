"""Run a test module in a fresh pytest process of its own, so what it patches dies with that process.

Building a verl worker in-process runs verl's ``apply_monkey_patch``, which replaces the model
classes' ``forward`` (and, with remove-padding, the attention class's) for the rest of the process;
a later test of the same family in the same process would then run verl's forward instead of the
model's own. A module marked ``pytestmark = pytest.mark.own_process`` is therefore never run in the
pytest process that collected it: the first time one of its tests is due, the selected tests of the
whole module run in one child ``python -m pytest`` (module-scoped fixtures are built once there),
and every test's setup/call/teardown reports come back and are logged in the parent as if the test
had run there (pass, fail with the child's traceback, skip, captured output and durations).

So any subset of test files, in any order and under pytest-xdist, sees the model classes unpatched.
Test support, not runtime code; wired up by ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

MARKER = "own_process"
MARKER_HELP = f"{MARKER}: the module patches classes or process state; it runs in a fresh pytest process of its own"
# Set in the child: the file the child writes its serialised reports to.
REPORTS_ENV = "PAPO_OWN_PROCESS_REPORTS"
# The child gets this long before its missing reports count as failures (s); a test's own limit is
# pytest-timeout's (pyproject.toml), applied inside the child.
CHILD_TIMEOUT_S = 1800


def in_child() -> bool:
    """True inside a child started by :class:`OwnProcessRunner`."""
    return REPORTS_ENV in os.environ


class ChildReportRecorder:
    """Plugin for the child: serialises every test report and failed collection, written at session end."""

    def __init__(self, config: pytest.Config, path: str) -> None:
        self.config = config
        self.path = path
        self.records: list[dict[str, Any]] = []

    def _record(self, report) -> None:
        self.records.append(self.config.hook.pytest_report_to_serializable(config=self.config, report=report))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._record(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        Path(self.path).write_text(json.dumps(self.records))


class OwnProcessRunner:
    """Plugin for the parent: runs each ``own_process`` module once in a child and replays its reports."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.reports: dict[Path, dict[str, list]] = {}  # module path -> nodeid -> test reports
        self.failures: dict[Path, str] = {}  # module path -> why reports are missing (child output tail)

    def _child_command(self, nodeids: list[str]) -> list[str]:
        command = [sys.executable, "-m", "pytest", *nodeids, "-q", "--no-header", "-p", "no:xdist"]
        seed = getattr(self.config.option, "randomly_seed", None)
        if self.config.pluginmanager.has_plugin("randomly") and isinstance(seed, int):
            command += ["-p", "randomly", f"--randomly-seed={seed}"]  # shuffled like the parent
        return command

    def _run_module(self, item: pytest.Item) -> None:
        path = item.path
        nodeids = [other.nodeid for other in item.session.items if other.path == path]
        with tempfile.TemporaryDirectory(prefix="own_process_") as tmp:
            reports_path = os.path.join(tmp, "reports.json")
            try:
                result = subprocess.run(
                    self._child_command(nodeids),
                    cwd=self.config.rootpath,
                    env={**os.environ, REPORTS_ENV: reports_path},
                    capture_output=True,
                    text=True,
                    timeout=CHILD_TIMEOUT_S,
                )
                output = result.stdout + result.stderr
            except subprocess.TimeoutExpired as error:
                output = f"child pytest timed out after {CHILD_TIMEOUT_S} s\n{error.stdout or ''}{error.stderr or ''}"
            records = json.loads(Path(reports_path).read_text()) if os.path.exists(reports_path) else []
        by_nodeid: dict[str, list] = {}
        collection_errors = []
        for record in records:
            report = self.config.hook.pytest_report_from_serializable(config=self.config, data=record)
            if isinstance(report, pytest.CollectReport):
                collection_errors.append(report.longreprtext)
            else:
                by_nodeid.setdefault(report.nodeid, []).append(report)
        self.reports[path] = by_nodeid
        self.failures[path] = "\n".join(collection_errors) + "\n" + "\n".join(output.splitlines()[-60:])

    def run_item(self, item: pytest.Item) -> None:
        """Log ``item``'s reports from its module's child run (started on the module's first due test)."""
        if item.path not in self.reports:
            self._run_module(item)
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        reports = self.reports[item.path].get(item.nodeid)
        if not reports:
            keywords = {name: 1 for name in item.keywords}
            why = f"no report from its own-process child run of {item.path.name}:\n{self.failures[item.path]}"
            reports = [
                pytest.TestReport(item.nodeid, item.location, keywords, "passed", None, "setup"),
                pytest.TestReport(item.nodeid, item.location, keywords, "failed", why, "call"),
                pytest.TestReport(item.nodeid, item.location, keywords, "passed", None, "teardown"),
            ]
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        if item.get_closest_marker(MARKER) is None:
            return None
        self.run_item(item)
        # Nothing was set up here for ``item``, but the test before it may have left set up the
        # collectors it shares with ``item`` (its folder): tear down what ``nextitem`` does not need, as
        # pytest's own teardown step does (its SetupState; the teardown hook itself would also run the
        # logging and capture wrappers of a test that never ran here). Without this, a test in another
        # folder after an own-process module failed its setup ("previous item was not torn down properly").
        item.session._setupstate.teardown_exact(nextitem)
        return True


def configure(config: pytest.Config) -> None:
    """Register the marker and the parent's or the child's plugin (call from ``pytest_configure``)."""
    config.addinivalue_line("markers", MARKER_HELP)
    if in_child():
        config.pluginmanager.register(ChildReportRecorder(config, os.environ[REPORTS_ENV]), "own_process_child")
    else:
        config.pluginmanager.register(OwnProcessRunner(config), "own_process_runner")
