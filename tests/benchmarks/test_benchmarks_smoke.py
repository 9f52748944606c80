"""Smoke tests of ``benchmarks/``: each benchmark runs with ``--quick`` and prints its table and ratio.

No timing is asserted: the numbers of a ``--quick`` run on a shared CI machine mean nothing. The
benchmarks themselves (full sizes, results in ``benchmarks/README.md``) are run by hand.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
TIMEOUT_S = 300

CASES = {
    "bench_step_cost.py": ("step_cost", ["old log-prob", "masked log-prob", "update", "step"]),
    "bench_masking.py": ("masking", ["recipe: mask_batch", "per-patch Python loop", "no-grad forward"]),
    "bench_data_prep.py": ("data_prep", ["throughput ours/baseline", "ours peak MiB"]),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_quick_run_prints_table_and_ratio(script, tmp_path):
    ratio_name, table_words = CASES[script]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        cwd=tmp_path,  # the scripts must not depend on the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, f"{script} --quick failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    lines = [line for line in result.stdout.splitlines() if line.strip()]

    table = [line for line in lines if line.startswith("|")]
    assert len(table) >= 3, f"no table in the output of {script}:\n{result.stdout[-3000:]}"
    assert re.fullmatch(r"\|[-|]+\|", table[1]), f"second table line is not a header separator: {table[1]!r}"
    for word in table_words:
        assert any(word in line for line in table), f"{word!r} missing from the table of {script}"

    assert lines[-1].startswith(f"RATIO {ratio_name}: "), f"last line of {script} is not its ratio: {lines[-1]!r}"
    assert re.search(r"\d+\.\d+", lines[-1]), f"ratio line has no number: {lines[-1]!r}"
    assert "goal" in lines[-1]
