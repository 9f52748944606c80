"""Test time per folder and the slowest modules, printed at the end of a pytest run.

Registered by ``tests/conftest.py`` on the process that reports (the controller under pytest-xdist).
A test's time is its setup, call and teardown together, so a module-scoped fixture (an end-to-end run)
counts in the module of the test that built it. Times are summed over the workers, so with 3 workers
on 2 cores they add up to more than the wall time; docs/develop.md records them per folder.
"""

from __future__ import annotations

from collections import defaultdict

SLOWEST_MODULES = 15


class FolderTimes:
    """Sums ``report.duration`` (seconds) per ``tests/<folder>`` and per module."""

    def __init__(self) -> None:
        self.per_folder: dict[str, float] = defaultdict(float)
        self.per_module: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report) -> None:
        module = report.nodeid.split("::", 1)[0]
        folder = "/".join(module.split("/")[:2]) if module.count("/") >= 2 else module
        self.per_folder[folder] += report.duration
        self.per_module[module] += report.duration

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.per_folder:
            return
        write = terminalreporter.write_line
        terminalreporter.section("test time per folder (s, summed over workers)")
        for folder, seconds in sorted(self.per_folder.items(), key=lambda item: -item[1]):
            write(f"{seconds:8.0f}  {folder}")
        write(f"{sum(self.per_folder.values()):8.0f}  in all")
        terminalreporter.section(f"the {SLOWEST_MODULES} slowest modules (s)")
        for module, seconds in sorted(self.per_module.items(), key=lambda item: -item[1])[:SLOWEST_MODULES]:
            write(f"{seconds:8.0f}  {module}")
