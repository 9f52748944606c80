"""The one-sample batch verl's reward loop hands a reward manager, for the reward tests.

Test support: importable as ``reward_inputs`` once ``tests/support`` is on ``sys.path``
(``tests/conftest.py`` puts it there).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def reward_input(tokenizer: Any, response: str, ground_truth: str, data_source: str, pad: int = 3):
    """The one-sample ``DataProto`` that verl's reward loop hands to ``RewardManager.run_single``.

    Same layout as ``AgentLoopWorker._compute_score``: ``prompts`` / ``responses`` token ids,
    ``attention_mask`` over ``[prompt | response]`` and the parquet columns as non-tensor fields.
    The response ends with ``<|im_end|>`` (stripped by ``skip_special_tokens``) and is right-padded
    with ``pad`` pad tokens.
    """
    from verl import DataProto

    prompt_ids = tokenizer.encode("question?", add_special_tokens=False)
    response_ids = tokenizer.encode(response, add_special_tokens=False) + [
        tokenizer.convert_tokens_to_ids("<|im_end|>")
    ]
    valid = len(response_ids)
    response_ids = response_ids + [tokenizer.pad_token_id] * pad
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
