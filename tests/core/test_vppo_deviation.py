"""VPPO's advantage shaping and ``s_t``: this recipe's defaults against the published code's, measured.

This recipe's default (``papo.vppo_shaping_stats=global``, :func:`recipe.papo.vppo.shaping_weights`):
min S, max S and mu = mean n_i over the whole global mini-batch (all micro-batches, all data-parallel
ranks). The published code (VPPO-RL, an EasyR1 fork; ``vppo_shaping_stats=micro_batch`` here): min
and max over the mini-batch share of one rank, mu over one micro-batch, so a row's weight depends on
how many GPUs and which micro-batch it lands in. Both give mean weight 1 per unit they average over
and agree with one rank and one micro-batch per mini-batch. ``s_t``: the published code computes
``exp(d) - d - 1`` in float32, this recipe ``expm1(d) - d`` in float64.
``python tests/core/test_vppo_deviation.py`` prints the numbers quoted in docs/vppo.md.
"""

from __future__ import annotations

import numpy as np
import torch

from recipe.papo.vppo import sequence_scores, shaping_weights, top_fraction_token_mask, visual_dependency

BETA_MIN = 0.9


def published_weights(scores: np.ndarray, ranks: int, micro_size: int, beta_min: float = BETA_MIN) -> np.ndarray:
    """The published code's weights, as we read it: per rank min/max, per micro-batch mu (consecutive rows)."""
    weights = np.ones_like(scores)
    for share in np.array_split(np.arange(len(scores)), ranks):
        low, high = scores[share].min(), scores[share].max()
        if high - low <= 1e-6:
            continue
        for start in range(0, len(share), micro_size):
            rows = share[start : start + micro_size]
            norm = np.clip((scores[rows] - low) / (high - low), 0.0, 1.0)
            beta_max = beta_min + (1.0 - beta_min) / (norm.mean() + 1e-8)
            weights[rows] = beta_min + norm * (beta_max - beta_min)
    return weights


def ragged_scores(rng: np.random.Generator, rows: int, max_len: int = 2048) -> np.ndarray:
    """Per-response mean s_t: ragged lengths in [16, max_len], sparse per-token dependency.

    Each response draws its own dependency level (log-normal), and each token is visual (s_t ~
    exponential at that level) with probability 0.2, else ~0: few tokens depend on the image, and
    responses differ in how much, as the paper reports.
    """
    out = np.empty(rows)
    for i in range(rows):
        length = rng.integers(16, max_len + 1)
        level = rng.lognormal(mean=np.log(0.05), sigma=1.0)
        tokens = np.where(rng.random(length) < 0.2, rng.exponential(level, length), rng.exponential(1e-4, length))
        out[i] = np.clip(tokens, 0, 10).mean()
    return out


def measure(ranks: int, micro_size: int, mini_batch: int = 1024, trials: int = 200, seed: int = 0) -> dict:
    """Per-row |w_published - w_here| over ``trials`` ragged global mini-batches; and the largest weights."""
    rng = np.random.default_rng(seed)
    diffs, max_published, max_here = [], [], []
    for _ in range(trials):
        scores = ragged_scores(rng, mini_batch)
        here, _ = shaping_weights(torch.tensor(scores), torch.ones(mini_batch, dtype=torch.bool), BETA_MIN)
        here = here.double().numpy()
        published = published_weights(scores, ranks, micro_size)
        diffs.append(np.abs(published - here))
        max_published.append(published.max())
        max_here.append(here.max())
    diffs = np.concatenate(diffs)
    return {
        "mean_abs_weight_difference": float(diffs.mean()),
        "p99_abs_weight_difference": float(np.quantile(diffs, 0.99)),
        "max_abs_weight_difference": float(diffs.max()),
        "mean_max_weight_published": float(np.mean(max_published)),
        "mean_max_weight_here": float(np.mean(max_here)),
    }


def published_float32_scores(old: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """The published ``s_t``: ``clamp(exp(d) - d - 1, 0, 10)``, ``d = clamp(masked - old, -20, 20)``, in float32."""
    d = (masked - old).clamp(-20.0, 20.0)
    return (d.exp() - d - 1).clamp(0.0, 10.0)


def measure_float32(rows: int = 1024, length: int = 256, sigma: float = 0.03, trials: int = 8, seed: int = 0) -> dict:
    """The published float32 ``s_t`` against :func:`visual_dependency` (float64) on full ``length``-token rows.

    Log-probs in float32 (old uniform in [-3.05, -0.05], masked = old + N(0, sigma)), ``trials``
    mini-batches of ``rows`` rows: the largest absolute error of ``s_t``, its median relative error, the
    largest relative error of ``S_i`` and the share of tokens whose p = 0.4 filter decision changes.
    """
    g = torch.Generator().manual_seed(seed)
    abs_err, rel_err, s_rel, flips, tokens = 0.0, [], 0.0, 0, 0
    mask = torch.ones(rows, length, dtype=torch.bool)
    for _ in range(trials):
        old = -torch.rand(rows, length, generator=g) * 3 - 0.05
        masked = old + sigma * torch.randn(rows, length, generator=g)
        exact = visual_dependency(old, masked)
        published = published_float32_scores(old, masked).double()
        abs_err = max(abs_err, float((published - exact).abs().max()))
        rel_err.append(((published - exact).abs() / exact.clamp(min=1e-30)).flatten())
        s_exact, s_published = sequence_scores(exact, mask), sequence_scores(published, mask)
        s_rel = max(s_rel, float(((s_published - s_exact).abs() / s_exact).max()))
        keep_exact = top_fraction_token_mask(exact, mask, 0.4)
        keep_published = top_fraction_token_mask(published, mask, 0.4)
        flips += int((keep_exact != keep_published).sum())
        tokens += rows * length
    return {
        "median_s_t": float(exact.median()),
        "max_abs_s_t_error": abs_err,
        "median_rel_s_t_error": float(torch.cat(rel_err).median()),
        "max_rel_S_i_error": s_rel,
        "filter_decisions_changed": flips / tokens,
    }


def test_one_rank_one_micro_batch_agrees_with_the_published_weights():
    rng = np.random.default_rng(1)
    scores = ragged_scores(rng, 32)
    here, _ = shaping_weights(torch.tensor(scores), torch.ones(32, dtype=torch.bool), BETA_MIN)
    np.testing.assert_allclose(published_weights(scores, ranks=1, micro_size=32), here.double().numpy(), atol=1e-6)


def test_published_weights_depend_on_the_split_and_ours_do_not():
    rng = np.random.default_rng(2)
    scores = ragged_scores(rng, 32)
    one = published_weights(scores, ranks=1, micro_size=32)
    split = published_weights(scores, ranks=2, micro_size=8)
    assert np.abs(one - split).max() > 1e-2
    numbers = measure(ranks=8, micro_size=16, trials=20)
    assert 1e-3 < numbers["mean_abs_weight_difference"] < 1.0


def test_float32_s_t_cancels_but_stays_within_the_documented_bounds():
    numbers = measure_float32(rows=64, trials=1)
    assert 0 < numbers["max_abs_s_t_error"] < 5e-7
    assert 0 < numbers["max_rel_S_i_error"] < 1e-4


if __name__ == "__main__":
    import json

    settings = {
        "8 GPUs, micro-batch 16, 128 prompts x 8 = 1024 responses (published 7B run)": dict(
            ranks=8, micro_size=16, mini_batch=1024
        ),
        "2 GPUs, micro-batch 8, 128 prompts x 5 = 640 responses (published config.yaml)": dict(
            ranks=2, micro_size=8, mini_batch=640
        ),
        "1 GPU, micro-batch 16, 1024 responses": dict(ranks=1, micro_size=16, mini_batch=1024),
    }
    out = {name: measure(**kwargs) for name, kwargs in settings.items()}
    out["float32 s_t, 1024 rows x 256 tokens, d ~ N(0, 0.03), 8 mini-batches"] = measure_float32()
    print(json.dumps(out, indent=2))
