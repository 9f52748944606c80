"""``python -m papo_tools.experiments.dynamics`` end to end: one arm for 2 steps through main_papo.

The experiment's command line, warm-up, task, one trainer run through Ray, the accuracy read back
from the trainer's rollout dumps, summary and figure. The arm is PAPO-G with VPPO, the one that uses
both the PAPO and the VPPO options (and logs ``vppo/*``); the arms differ only in their options,
which ``test_arm_configs.py`` checks for every arm through the start-up checks without Ray, and
monitor mode (the GRPO arm) is proven bit for bit in ``tests/worker/test_papo_metrics.py``. Cost: a
2-step warm-up plus one 2-step run (about 40 s of Ray/worker start-up), on the experiment's own Ray
cluster, which is stopped afterwards.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from memory_slots import memory_slot
from user_env import user_env

from papo_tools.experiments.arms import ARMS
from papo_tools.experiments.summary import ACCURACY_KEY, REQUIRED_METRICS

pytestmark = pytest.mark.e2e

E2E_ARMS = ("papo_vppo",)


def test_two_steps_of_an_arm_write_a_finite_summary_and_the_figure(tmp_path):
    out = tmp_path / "dynamics"
    # As a user runs it, in a fresh process: the warm-up runs the plain HF model, which verl's
    # engine patches class-wide once any test in this process has built a worker.
    command = [sys.executable, "-m", "papo_tools.experiments.dynamics", "--out", str(out)]
    command += ["--steps", "2", "--seeds", "1", "--warmup-steps", "2", "--arms", ",".join(E2E_ARMS)]
    with memory_slot("hf"):
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=user_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == set(E2E_ARMS)
    assert summary["steps"] == [1, 2]
    for arm in E2E_ARMS:
        for metric in REQUIRED_METRICS:
            values = summary["arms"][arm][metric]
            assert len(values) == 2 and all(math.isfinite(v) for v in values), (arm, metric, values)
        assert summary["per_seed"][arm]["0"]["papo/kl_prcp"] == summary["arms"][arm]["papo/kl_prcp"]
    # The masked pass ran in every arm (KL_prcp of a real model on a 60 % masked image is not 0),
    # and each arm trained with its own coefficients.
    assert all(summary["arms"][arm]["papo/kl_prcp"][0] > 0 for arm in E2E_ARMS)
    arm = next(arm for arm in ARMS if arm.name == E2E_ARMS[0])
    assert summary["run"]["arms"][arm.name]["overrides"] == list(arm.overrides)
    assert (out / "dynamics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # accuracy is a share of 40 rollouts a step; VPPO kept some but not all tokens of a 2-token answer
    assert all(0 <= v <= 1 and v * 40 == round(v * 40) for v in summary["arms"]["papo_vppo"][ACCURACY_KEY])
    assert all(0 < v < 1 for v in summary["arms"]["papo_vppo"]["vppo/kept_frac"])
    start = summary["run"]["warmup"]["start_accuracy"]["0"]
    assert 0 < start < 1
    # The run joined the experiment's own Ray cluster (one head for one arm), which is stopped by now.
    assert sorted(path.name for path in out.glob("ray_head*.log")) == ["ray_head0.log"]
    assert "Connected to Ray cluster" in (out / "seed0" / E2E_ARMS[0] / "train.log").read_text()
    session = re.search(r"(/\S*?)/ray/session_", (out / "ray_head0.log").read_text())
    assert session, "ray start printed no session folder"
    assert not processes_naming(session.group(1))


def processes_naming(text: str) -> list[int]:
    """Live processes other than this one whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found
