"""Smoke tests of ``benchmarks/``: each benchmark runs with ``--quick`` and prints its table and ratio.

No timing is asserted: the numbers of a ``--quick`` run on a shared CI machine mean nothing. The
benchmarks themselves (full sizes, results in ``benchmarks/README.md``) are run by hand.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from user_env import user_env

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
TIMEOUT_S = 300

STEP_COST_PHASES = ["old log-prob", "ref log-prob", "masked log-prob", "update", "step"]
# id -> (script and its arguments besides --quick, ratio name, words the table must contain,
#        lines the output must contain)
CASES = {
    # the scripts' path: remove-padding, reference model, >= 2 micro-batches per call (checked by the
    # benchmark itself on its first repeat; it exits non-zero if a variant runs another path)
    "step_cost_scripts_path": (
        ["bench_step_cost.py", "--path", "scripts"],
        "step_cost",
        STEP_COST_PHASES,
        ["path: scripts (remove-padding on, reference model on", "packed (remove-padding) inputs: True"],
    ),
    "step_cost_demo_path": (
        ["bench_step_cost.py", "--path", "demo"],
        "step_cost",
        STEP_COST_PHASES,
        ["path: demo (padded inputs, no reference model)", "packed (remove-padding) inputs: False"],
    ),
    "masking": (
        ["bench_masking.py"],
        "masking",
        ["recipe: mask_batch", "per-patch Python loop", "no-grad forward"],
        [],
    ),
    "data_prep": (["bench_data_prep.py"], "data_prep", ["throughput ours/baseline", "ours peak MiB"], []),
    # the shared masked pass vs the full one and a plain forward, and the PAPO / GRPO step (it exits
    # non-zero if the two passes' masked log-probs differ or a worker runs the other pass)
    "shared_masked_pass": (
        ["bench_shared_masked_pass.py"],
        "shared_masked_pass",
        ["forward", "masked (full)", "masked (shared)", "PAPO step", "vision tower"],
        ["masked (shared) / forward =", "from MACs: shared / full masked pass ="],
    ),
    # the masked pass's peak memory at x and 4x rows, per micro-batch vs whole batch (it exits non-zero
    # if the two ways' masked log-probs differ)
    "masked_memory": (
        ["bench_masked_memory.py"],
        "masked_memory",
        ["plain forward", "whole batch", "per micro-batch", "peak extra RSS MiB"],
        ["per micro-batch: peak extra RSS grows by"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_quick_run_prints_table_and_ratio(case, tmp_path):
    (script, *arguments), ratio_name, table_words, output_lines = CASES[case]
    # A user's environment, not the test session's (no CPU-backend switch): the README's command as typed.
    # faulthandler: a crashed benchmark prints every thread's Python stack
    env = user_env({"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"})
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments, "--quick"],
        cwd=tmp_path,  # the scripts must not depend on the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    # a crash's report starts at faulthandler's "Fatal Python error" line, above its list of modules
    report_at = result.stderr.find("Fatal Python error")
    crash = result.stderr[report_at:][:4000] if result.returncode < 0 and report_at >= 0 else ""
    assert result.returncode == 0, (
        f"{script} --quick failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{crash}"
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]

    table = [line for line in lines if line.startswith("|")]
    assert len(table) >= 3, f"no table in the output of {script}:\n{result.stdout[-3000:]}"
    assert re.fullmatch(r"\|[-|]+\|", table[1]), f"second table line is not a header separator: {table[1]!r}"
    for word in table_words:
        assert any(word in line for line in table), f"{word!r} missing from the table of {script}"

    for expected in output_lines:
        assert any(expected in line for line in lines), f"{expected!r} missing from the output of {script}"

    assert lines[-1].startswith(f"RATIO {ratio_name}: "), f"last line of {script} is not its ratio: {lines[-1]!r}"
    assert re.search(r"\d+\.\d+", lines[-1]), f"ratio line has no number: {lines[-1]!r}"
    assert "goal" in lines[-1]
