"""Fixtures for the evaluation-table tests: metrics files written by verl's own ``file`` logger.

The validation metrics themselves come from ``tests/support/papo_eval_metrics.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def write_with_file_logger(monkeypatch) -> Callable[[Path, Sequence[tuple[int, dict[str, Any]]]], Path]:
    """Log ``[(step, metrics), ...]`` through verl's ``Tracking(default_backend=["file"])`` into ``path``."""

    def write(path: Path, records: Sequence[tuple[int, dict[str, Any]]]) -> Path:
        from verl.utils.tracking import Tracking

        monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
        tracking = Tracking(project_name="papo", experiment_name="eval", default_backend=["file"])
        for step, metrics in records:
            tracking.log(data=metrics, step=step)
        tracking.finish()
        return path

    return write
