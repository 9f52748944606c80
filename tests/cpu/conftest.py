"""Fixtures of the CPU-backend tests: the demo dataset and an HF rollout server (prompts: ``demo_prompts``)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

PROMPT_LENGTH = 128
RESPONSE_LENGTH = 16


@pytest.fixture
def switch_off_env() -> dict[str, str]:
    """This process's environment with the CPU backend switch removed (for fresh-process probes)."""
    return {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES")}


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> tuple[Path, Path]:
    """``(train.parquet, val.parquet)`` of the demo counting task (8 and 4 rows)."""
    from papo_tools.demo.task import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo_data"), num_train=8, num_val=4, seed=0)


@pytest.fixture(scope="session")
def demo_rows(demo_data) -> list[dict]:
    return pd.read_parquet(demo_data[0]).to_dict("records")


@pytest.fixture(scope="session")
def hf_model_config(tiny_model_dir):
    """verl's ``HFModelConfig`` of the tiny model, as the trainer builds it for a CPU run."""
    from verl.workers.config import HFModelConfig

    return HFModelConfig(path=str(tiny_model_dir), override_config={"attn_implementation": "eager"})


@pytest.fixture(scope="session")
def hf_server(hf_model_config):
    """The "hf" rollout server body (no Ray) on the tiny model."""
    from verl.workers.config import RolloutConfig

    from papo_tools.cpu.hf_server import HFRolloutServer

    config = RolloutConfig(
        name="hf", prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH, tensor_model_parallel_size=1
    )
    return HFRolloutServer(config, hf_model_config)
