"""The shared masked pass against the full one on CUDA, with the scripts' attention implementation (flash-attn).

Run with ``pytest -m gpu`` on a machine with a GPU and flash-attn (the verl GPU image); skipped without
CUDA or flash-attn. Each family runs in a child process with a user's environment
(``tests/support/shared_pass_cuda.py``): the test session itself runs verl's CPU backend. bf16 compute
(the scripts' mixed precision): the shared pass must stay within the spread the full pass shows between
two micro-batch layouts, or within one bf16 step of the largest log-prob where that spread is 0
(flash-attn and cuBLAS may give layout-independent results).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from user_env import user_env

pytestmark = pytest.mark.gpu

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "shared_pass_cuda.py"
TIMEOUT_S = 600


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(cuda_devices() == 0, reason="needs CUDA")
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn (the scripts' attention)")
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_shared_pass_equals_the_full_pass_on_cuda(family, tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), family, str(tmp_path)],
        env=user_env({"CUDA_VISIBLE_DEVICES": "0"}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-4000:]}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["uses_flash"], result
    assert result["shared_vs_full"] <= max(result["full_spread"], result["bf16_step"]), result
