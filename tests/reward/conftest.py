"""Fixtures for the reward tests: the tiny byte-level tokenizer and a builder of verl reward inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The project's tiny byte-level tokenizer (Qwen special tokens; pad = ``<|endoftext|>``)."""
    from recipe.papo.demo.tiny_model import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def make_reward_input(tiny_tokenizer) -> Callable[..., Any]:
    """Build the one-sample ``DataProto`` that verl's reward loop hands to ``RewardManager.run_single``.

    Same layout as ``AgentLoopWorker._compute_score``: ``prompts`` / ``responses`` token ids,
    ``attention_mask`` over ``[prompt | response]`` and the parquet columns as non-tensor fields.
    The response ends with ``<|im_end|>`` (stripped by ``skip_special_tokens``) and is right-padded.
    """
    from verl import DataProto

    def build(response: str, ground_truth: str, data_source: str, pad: int = 3) -> DataProto:
        tok = tiny_tokenizer
        prompt_ids = tok.encode("question?", add_special_tokens=False)
        response_ids = tok.encode(response, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
        valid = len(response_ids)
        response_ids = response_ids + [tok.pad_token_id] * pad
        attention_mask = [1] * (len(prompt_ids) + valid) + [0] * pad
        return DataProto.from_dict(
            tensors={
                "prompts": torch.tensor([prompt_ids]),
                "responses": torch.tensor([response_ids]),
                "attention_mask": torch.tensor([attention_mask]),
            },
            non_tensors={
                "data_source": np.array([data_source], dtype=object),
                "reward_model": np.array([{"style": "rule", "ground_truth": ground_truth}], dtype=object),
                "extra_info": np.array([{"index": 0}], dtype=object),
            },
        )

    return build
