"""Fixtures for the reward tests: the tiny byte-level tokenizer (reward inputs: ``reward_inputs``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The project's tiny byte-level tokenizer (Qwen special tokens; pad = ``<|endoftext|>``)."""
    from papo_tools.demo.tiny_model import build_tiny_tokenizer

    return build_tiny_tokenizer()
