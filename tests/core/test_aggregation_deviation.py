"""The one remaining difference in loss aggregation from the authors' implementation, measured.

verl (this recipe): token-mean over the whole mini-batch (``global_batch_info``): every response
token of the mini-batch weighs ``1 / N`` (N = the mini-batch's response tokens, over all ranks),
whatever the micro-batch split. The authors' implementation (an EasyR1 fork): token-mean inside each
micro-batch, then the mean over the M micro-batches (gradient accumulation): a token of micro-batch
k weighs ``1 / (M * N_k)``. The two agree when all micro-batches hold the same number of tokens and
differ on ragged batches. ``python tests/core/test_aggregation_deviation.py`` prints the numbers
quoted in docs/algorithm.md.
"""

from __future__ import annotations

import numpy as np
import pytest


def token_weights(lengths: np.ndarray, micro_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token loss weights ``(verl, authors)``, each ``(sum(lengths),)``, for consecutive micro-batches."""
    total = lengths.sum()
    verl = np.full(total, 1.0 / total)
    micro = [lengths[i : i + micro_size] for i in range(0, len(lengths), micro_size)]
    authors = np.concatenate([np.full(part.sum(), 1.0 / (len(micro) * part.sum())) for part in micro])
    return verl, authors


def measure(seed: int = 0, trials: int = 200, sequences: int = 80, micro_size: int = 4, max_len: int = 2048) -> dict:
    """Ragged responses (lengths uniform in [16, max_len]) of one rank's mini-batch share.

    Returns the mean and max over trials of: the largest and smallest per-token weight ratio
    authors / verl, and the relative loss difference when the per-token loss falls with the length
    (value ``1 / sqrt(length)`` per token, as per-token entropy often does), plus the cosine between
    the two weightings.
    """
    rng = np.random.default_rng(seed)
    ratio_max, ratio_min, loss_diff, cosine = [], [], [], []
    for _ in range(trials):
        lengths = rng.integers(16, max_len + 1, sequences)
        verl, authors = token_weights(lengths, micro_size)
        ratio = authors / verl
        ratio_max.append(ratio.max())
        ratio_min.append(ratio.min())
        values = np.repeat(1.0 / np.sqrt(lengths), lengths)
        loss_verl, loss_authors = (verl * values).sum(), (authors * values).sum()
        loss_diff.append(abs(loss_authors - loss_verl) / abs(loss_verl))
        cosine.append(verl @ authors / np.linalg.norm(verl) / np.linalg.norm(authors))
    summary = lambda xs: {"mean": float(np.mean(xs)), "max": float(np.max(xs)), "min": float(np.min(xs))}  # noqa: E731
    return {
        "weight_ratio_max": summary(ratio_max),
        "weight_ratio_min": summary(ratio_min),
        "relative_loss_difference": summary(loss_diff),
        "weight_cosine": summary(cosine),
    }


def test_equal_micro_batches_give_identical_weights():
    verl, authors = token_weights(np.array([5, 3, 4, 4, 2, 6]), micro_size=2)  # 8 tokens per micro-batch
    np.testing.assert_allclose(authors, verl, rtol=1e-12)


def test_ragged_micro_batches_reweight_tokens_and_verl_does_not_depend_on_the_split():
    lengths = np.array([100, 10, 10, 10])
    verl_2, authors_2 = token_weights(lengths, micro_size=2)
    verl_1, _ = token_weights(lengths, micro_size=1)
    np.testing.assert_array_equal(verl_1, verl_2)
    assert authors_2.sum() == pytest.approx(1.0) and verl_2.sum() == pytest.approx(1.0)
    # micro-batch 1 holds 110 tokens, micro-batch 2 holds 20: a token of the short one weighs 5.5x more
    assert authors_2[-1] / authors_2[0] == pytest.approx(110 / 20)
    assert authors_2[0] / verl_2[0] == pytest.approx(130 / (2 * 110))


def test_measured_difference_on_ragged_batches_is_material_but_bounded():
    numbers = measure(trials=50)
    assert 1.0 < numbers["weight_ratio_max"]["mean"] < 5.0
    assert 0.0 < numbers["relative_loss_difference"]["mean"] < 0.5
    assert 0.5 < numbers["weight_cosine"]["mean"] < 1.0


if __name__ == "__main__":
    import json

    print(json.dumps({"micro_size 4, 80 sequences": measure(), "micro_size 1": measure(micro_size=1)}, indent=2))
