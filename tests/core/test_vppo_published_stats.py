"""VPPO's shaping statistics, both options, against the published math computed here independently.

``papo.vppo_shaping_stats=global`` (default): min S, max S and mu over the whole global mini-batch.
``papo.vppo_shaping_stats=micro_batch``: as the published code (VPPO-RL's ``dp_actor.update_policy``,
as we read it): min and max over one rank's share of the mini-batch, mu over each update micro-batch,
``beta_max = beta_min + (1 - beta_min) / (mu + 1e-8)``, no shaping on a rank whose range is at most
1e-6. The reference below is plain Python over lists (float64), written from that description, not
from this recipe's functions. Each option runs the way a step runs it: the worker's
:func:`recipe.papo.worker.assign_vppo_weights` on each rank's share of the mini-batch, verl's own
micro-batch split (``tensordict_utils.chunk_tensordict``, what the engine does without dynamic batch
size), and the loss's :func:`recipe.papo.policy_loss.read_papo_inputs` per micro-batch.
"""

from __future__ import annotations

import math

import pytest
import torch
from papo_loss_batches import make_actor_config
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

from recipe.papo.batch_keys import (
    COEFFICIENTS_KEY,
    IMAGE_ROW_KEY,
    KL_WEIGHT_KEY,
    MASKED_LOG_PROBS_KEY,
    VPPO_NORM_KEY,
    VPPO_WEIGHT_KEY,
)
from recipe.papo.config import PapoConfig, PapoConfigError
from recipe.papo.objective import PapoCoefficients
from recipe.papo.policy_loss import MissingMaskedLogProbsError, read_papo_inputs
from recipe.papo.vppo import micro_batch_weights, rank_normalised_scores
from recipe.papo.worker import assign_vppo_weights

BETA_MIN = 0.9
WIDTH = 12


def ragged_rows(rows: int, seed: int) -> list[dict]:
    """Per row: old and masked log-probs of its response tokens (1 to WIDTH of them), image or not."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(rows):
        n = int(torch.randint(1, WIDTH + 1, (1,), generator=g))
        old = (-torch.rand(n, generator=g) * 2 - 0.01).tolist()
        level = float(torch.rand(1, generator=g)) ** 3  # responses differ in how much they look at the image
        masked = [o - level * float(torch.rand(1, generator=g)) for o in old]
        out.append(dict(old=old, masked=masked, image=True))
    return out


def published_score(row: dict) -> float:
    """S_i = mean over the response tokens of clamp(exp(d) - d - 1, 0, 10), d = clamp(masked - old, -20, 20)."""
    values = []
    for o, m in zip(row["old"], row["masked"], strict=True):
        d = min(max(m - o, -20.0), 20.0)
        values.append(min(max(math.exp(d) - d - 1.0, 0.0), 10.0))
    return sum(values) / len(values)


def published_reference(rows: list[dict], ranks: int, micro: int) -> list[float]:
    """The published weights: consecutive rank shares, min/max per share, mu per consecutive micro-batch."""
    weights = [1.0] * len(rows)
    share_size = len(rows) // ranks
    for r in range(ranks):
        share = list(range(r * share_size, (r + 1) * share_size))
        scores = {i: published_score(rows[i]) for i in share if rows[i]["image"]}
        if len(scores) < 2 or max(scores.values()) - min(scores.values()) <= 1e-6:
            continue
        low, high = min(scores.values()), max(scores.values())
        for start in range(0, len(share), micro):
            members = [i for i in share[start : start + micro] if i in scores]
            if not members:
                continue
            norm = {i: min(max((scores[i] - low) / (high - low), 0.0), 1.0) for i in members}
            mu = sum(norm.values()) / len(members)
            beta_max = BETA_MIN + (1.0 - BETA_MIN) / (mu + 1e-8)
            for i in members:
                weights[i] = BETA_MIN + norm[i] * (beta_max - BETA_MIN)
    return weights


def global_reference(rows: list[dict]) -> list[float]:
    """The published formula with min, max and mu over the whole mini-batch (no epsilon)."""
    scores = {i: published_score(row) for i, row in enumerate(rows) if row["image"]}
    low, high = min(scores.values()), max(scores.values())
    norm = {i: (s - low) / (high - low) for i, s in scores.items()}
    beta_max = BETA_MIN + (1.0 - BETA_MIN) / (sum(norm.values()) / len(norm))
    return [BETA_MIN + norm[i] * (beta_max - BETA_MIN) if i in norm else 1.0 for i in range(len(rows))]


def rank_share(rows: list[dict]) -> TensorDict:
    """One rank's share of an update mini-batch as verl's engine worker holds it (nested per-token fields)."""
    nested = lambda values: torch.nested.as_nested_tensor(  # noqa: E731
        [torch.tensor(v, dtype=torch.float32) for v in values], layout=torch.jagged
    )
    data = TensorDict(
        {
            "old_log_probs": nested([row["old"] for row in rows]),
            MASKED_LOG_PROBS_KEY: nested([row["masked"] for row in rows]),
            "response_mask": nested([[1.0] * len(row["old"]) for row in rows]),
            IMAGE_ROW_KEY: torch.tensor([row["image"] for row in rows]),
            KL_WEIGHT_KEY: torch.ones(len(rows)),
        },
        batch_size=len(rows),
    )
    tu.assign_non_tensor(data, **{COEFFICIENTS_KEY: PapoCoefficients(0.0, 0.0, 0.0)})
    return data


def step_weights(rows: list[dict], ranks: int, micro: int, stats: str) -> list[float]:
    """The weights the loss sees, micro-batch by micro-batch, on every rank (``group=None``: one process)."""
    papo = make_actor_config(kl_prcp_coef=0.0, vppo_beta_min=BETA_MIN, vppo_shaping_stats=stats).policy_loss.papo
    share_size = len(rows) // ranks
    weights = []
    for r in range(ranks):
        data = rank_share(rows[r * share_size : (r + 1) * share_size])
        assign_vppo_weights(data, BETA_MIN, group=None, stats=stats)
        for micro_batch in tu.chunk_tensordict(data, share_size // micro):
            inputs = read_papo_inputs(micro_batch, WIDTH, papo)
            weights += inputs.vppo_weight.tolist()
    return weights


@pytest.mark.parametrize(("ranks", "micro"), [(1, 16), (1, 4), (2, 4), (4, 2), (8, 16)])
def test_micro_batch_statistics_equal_the_published_math(ranks, micro):
    rows = ragged_rows(ranks * micro * 2, seed=ranks * 10 + micro)  # two micro-batches per rank
    expected = published_reference(rows, ranks, micro)
    got = step_weights(rows, ranks, micro, "micro_batch")
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert len({round(w, 4) for w in expected}) > 3  # rows are really shaped


def test_the_published_layout_1024_responses_on_8_ranks_in_micro_batches_of_16():
    """VPPO's 7B run: 128 prompts x n = 8 per mini-batch, 128 rows per GPU, micro-batches of 16."""
    rows = ragged_rows(1024, seed=7)
    got = step_weights(rows, ranks=8, micro=16, stats="micro_batch")
    assert got == pytest.approx(published_reference(rows, ranks=8, micro=16), rel=1e-5, abs=1e-6)
    for start in range(0, 1024, 16):  # the weights average 1 per micro-batch (up to the 1e-8)
        assert sum(got[start : start + 16]) / 16 == pytest.approx(1.0, abs=1e-5)


def test_global_statistics_equal_the_published_formula_over_the_whole_mini_batch_for_any_split():
    rows = ragged_rows(32, seed=3)
    expected = global_reference(rows)
    for micro in (32, 8, 2):
        assert step_weights(rows, ranks=1, micro=micro, stats="global") == pytest.approx(expected, rel=1e-5)
    assert sum(expected) / len(expected) == pytest.approx(1.0)
    # the published statistics differ from these on the same rows as soon as there are micro-batches
    assert step_weights(rows, ranks=1, micro=8, stats="micro_batch") != pytest.approx(expected, rel=1e-3)
    assert step_weights(rows, ranks=1, micro=32, stats="micro_batch") == pytest.approx(expected, rel=1e-5)


def test_text_rows_and_a_flat_rank_are_not_shaped():
    rows = ragged_rows(8, seed=5)
    rows[1]["image"] = rows[6]["image"] = False
    got = step_weights(rows, ranks=1, micro=4, stats="micro_batch")
    assert got[1] == 1.0 and got[6] == 1.0
    assert got == pytest.approx(published_reference(rows, ranks=1, micro=4), rel=1e-5)
    flat = [dict(old=[-1.0, -2.0], masked=[-1.0, -2.0], image=True) for _ in range(4)]  # S_i = 0 everywhere
    assert step_weights(flat, ranks=1, micro=2, stats="micro_batch") == [1.0] * 4


def test_a_micro_batch_of_rows_at_the_ranks_minimum_gets_beta_min():
    """mu = 0: the published 1e-8 keeps beta_max finite and every n_i is 0, so every weight is beta_min."""
    norm, stats = rank_normalised_scores(torch.tensor([0.1, 0.1, 0.5, 0.3], dtype=torch.float64), torch.ones(4).bool())
    assert stats.shapes and norm.tolist() == pytest.approx([0.0, 0.0, 1.0, 0.5])
    assert micro_batch_weights(norm[:2], BETA_MIN).tolist() == pytest.approx([BETA_MIN, BETA_MIN])
    # n = 1, 0.5: mu = 0.75, beta_max = 0.9 + 0.1 / 0.75
    beta_max = BETA_MIN + 0.1 / (0.75 + 1e-8)
    assert micro_batch_weights(norm[2:], BETA_MIN).tolist() == pytest.approx(
        [beta_max, BETA_MIN + 0.5 * (beta_max - BETA_MIN)], rel=1e-6
    )


def test_the_worker_writes_the_field_its_option_reads_and_the_loss_names_a_missing_one():
    rows = ragged_rows(4, seed=2)
    published = rank_share(rows)
    assign_vppo_weights(published, BETA_MIN, stats="micro_batch")
    assert VPPO_NORM_KEY in published.keys() and VPPO_WEIGHT_KEY not in published.keys()
    papo = make_actor_config(kl_prcp_coef=0.0, vppo_beta_min=BETA_MIN).policy_loss.papo  # global
    with pytest.raises(MissingMaskedLogProbsError, match=VPPO_WEIGHT_KEY):
        read_papo_inputs(published, WIDTH, papo)
    with pytest.raises(PapoConfigError, match="papo.vppo_shaping_stats='per_rank'"):
        PapoConfig(vppo_beta_min=0.9, vppo_shaping_stats="per_rank")
