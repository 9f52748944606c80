"""``SMOKE=1`` on a CUDA machine: PAPO-G and PAPO-D with the scripts' own rollout engine (vLLM).

Run with ``pytest -m gpu`` on a machine with a GPU and vLLM installed (``pip install -e .[gpu]`` or
the verl GPU image); skipped without CUDA. The worker count is the script's (4), capped to the GPUs
present.
"""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf
from script_runs import run_smoke

from papo_tools.demo.run_demo import read_jsonl

pytestmark = pytest.mark.gpu

SMOKE_TIMEOUT_S = 1200


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(cuda_devices() == 0, reason="needs CUDA")
@pytest.mark.parametrize("name", ["run_qwen2_5_vl_7b_papo_g.sh", "run_qwen2_5_vl_7b_papo_d.sh"])
def test_smoke_on_cuda_with_vllm(tmp_path, name):
    run = run_smoke(name, cwd=tmp_path, timeout=SMOKE_TIMEOUT_S)
    folder = tmp_path / "smoke_output" / name.removesuffix(".sh")
    log = (folder / "run.log").read_text()[-6000:] if (folder / "run.log").exists() else ""
    assert run.returncode == 0, f"rc={run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-3000:]}\n{log}"
    config = OmegaConf.load(folder / "config.yaml")
    assert config.actor_rollout_ref.rollout.name == "vllm"
    assert config.trainer.device == "cuda"
    assert config.trainer.n_gpus_per_node == min(4, cuda_devices())
    assert config.actor_rollout_ref.model.use_remove_padding is True
    records = read_jsonl(folder / "metrics.jsonl")
    train = [r for r in records if "training/global_step" in r["data"]]
    assert [r["step"] for r in train] == [1, 2]
    for record in train:
        data = record["data"]
        assert data["papo/kl_prcp"] > 0 and math.isfinite(data["papo/kl_prcp"])
        assert data["papo/loss"] + data["papo/base_loss"] == pytest.approx(data["actor/pg_loss"], rel=1e-4)
