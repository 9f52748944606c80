"""Test time per folder and the slowest modules, printed at the end of a pytest run.

Registered by ``tests/conftest.py`` on the process that reports (the controller under pytest-xdist).
A test's time is its setup, call and teardown together, so a module-scoped fixture (an end-to-end run)
counts in the module of the test that built it. Times are summed over the workers, so with 3 workers
on 2 cores they add up to more than the wall time; docs/develop.md records them per folder.
With ``PAPO_TEST_TIMELINE=<file>`` each module's worker, first start and last stop (seconds after the
first test started) are also written there as tab-separated lines, to find the run's critical path.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

SLOWEST_MODULES = 15


class FolderTimes:
    """Sums ``report.duration`` (seconds) per ``tests/<folder>`` and per module."""

    def __init__(self) -> None:
        self.per_folder: dict[str, float] = defaultdict(float)
        self.per_module: dict[str, float] = defaultdict(float)
        self.span: dict[str, tuple[str, float, float]] = {}  # module -> (worker, first start, last stop)

    def pytest_runtest_logreport(self, report) -> None:
        module = report.nodeid.split("::", 1)[0]
        folder = "/".join(module.split("/")[:2]) if module.count("/") >= 2 else module
        self.per_folder[folder] += report.duration
        self.per_module[module] += report.duration
        start, stop = getattr(report, "start", 0.0), getattr(report, "stop", 0.0)
        worker = getattr(getattr(report, "node", None), "gateway", None)
        worker_id = getattr(worker, "id", "main")
        if module in self.span:
            _, first, last = self.span[module]
            start, stop = min(first, start), max(last, stop)
        self.span[module] = (worker_id, start, stop)

    def write_timeline(self, path: Path) -> None:
        """One line per module, by start: worker, start and stop (s after the first start), module."""
        origin = min(start for _, start, _ in self.span.values())
        lines = [
            f"{worker}\t{start - origin:.0f}\t{stop - origin:.0f}\t{module}"
            for module, (worker, start, stop) in sorted(self.span.items(), key=lambda item: item[1][1])
        ]
        path.write_text("\n".join(lines) + "\n")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.per_folder:
            return
        if os.environ.get("PAPO_TEST_TIMELINE"):
            self.write_timeline(Path(os.environ["PAPO_TEST_TIMELINE"]))
        write = terminalreporter.write_line
        terminalreporter.section("test time per folder (s, summed over workers)")
        for folder, seconds in sorted(self.per_folder.items(), key=lambda item: -item[1]):
            write(f"{seconds:8.0f}  {folder}")
        write(f"{sum(self.per_folder.values()):8.0f}  in all")
        terminalreporter.section(f"the {SLOWEST_MODULES} slowest modules (s)")
        for module, seconds in sorted(self.per_module.items(), key=lambda item: -item[1])[:SLOWEST_MODULES]:
            write(f"{seconds:8.0f}  {module}")
