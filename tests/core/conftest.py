"""Fixtures of the core (pure-function) tests; their factories live in ``tests/support/papo_loss_batches.py``."""

from __future__ import annotations

import pytest
from papo_loss_batches import Batch, make_batch


@pytest.fixture
def batch() -> Batch:
    """A fresh random batch (:func:`papo_loss_batches.make_batch` defaults) per test: tests modify it."""
    return make_batch()
