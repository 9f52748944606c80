"""The ``qwen_vl_utils`` stand-in replaces the real package when torchvision is installed but broken.

A CUDA torchvision wheel beside the CPU torch raises ``RuntimeError`` at import (its operators are
not registered), not ``ImportError``; a torchvision whose native library does not load raises
``OSError``. Each case runs in a fresh process whose ``sys.path`` starts with a torchvision package
that raises that error, as the broken wheel does, with the real ``qwen_vl_utils`` installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from user_env import user_env

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from papo_tools.cpu import qwen_vl_stub
assert qwen_vl_stub.install() is True
import qwen_vl_utils
assert qwen_vl_utils is qwen_vl_stub, qwen_vl_utils
print("stand-in:", qwen_vl_utils.__name__)
"""


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("RuntimeError", "operator torchvision::nms does not exist"),
        ("OSError", "libtorchvision.so: cannot open shared object file"),
    ],
)
def test_stand_in_is_registered_when_torchvision_raises_at_import(tmp_path, error, message):
    broken = tmp_path / "torchvision"
    broken.mkdir()
    (broken / "__init__.py").write_text(f"raise {error}({message!r})\n")
    env = user_env({"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])})
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stand-in: papo_tools.cpu.qwen_vl_stub" in done.stdout


def test_the_broken_torchvision_does_break_the_real_package(tmp_path):
    """The premise: with that torchvision first on the path, the real ``qwen_vl_utils`` fails to import."""
    broken = tmp_path / "torchvision"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    env = user_env({"PYTHONPATH": str(tmp_path)})
    done = subprocess.run(
        [sys.executable, "-c", "import qwen_vl_utils"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "RuntimeError: operator torchvision::nms does not exist" in done.stderr
