"""The shared masked pass's attention and planning, against an independent computation (no model).

:class:`recipe.papo.prefix_attention.PrefixAttention` splits causal attention over ``prompt + response``
into a prompt call (causal within each prompt, keys/values kept) and a response call (each response
against its prompt's keys/values and its own, causally). Checked against plain causal attention over
the whole sequences, computed here as softmax(q k^T / sqrt(d) + causal mask) v, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

from recipe.papo.prefix_attention import (
    PROMPT,
    RESPONSE,
    CallLayout,
    PrefixAttention,
    PrefixAttentionError,
    bottom_right_causal_mask,
)
from recipe.papo.shared_pass import BatchRows, PromptGroup, order_by_prompt, plan_micro_batches, prompt_groups

HEADS, KV_HEADS, DIM = 4, 2, 8


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of one sequence, ``(S, H, D)`` queries and ``(S, H_kv, D)`` keys/values, in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(len(q), len(k), dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def sequences(lengths, heads, generator):
    return [torch.randn(n, heads, DIM, generator=generator) for n in lengths]


@pytest.mark.parametrize("repeated_kv", [False, True], ids=["grouped kv heads", "repeated kv heads (verl's Qwen2-VL)"])
def test_prompt_then_responses_equals_causal_attention_over_the_whole_sequence(repeated_kv):
    gen = torch.Generator().manual_seed(0)
    prompts = {"a": 7, "b": 3}  # prompt-call tokens (each prompt's prefix)
    rows = [("a", 5), ("b", 1), ("a", 9), ("b", 4)]  # (prompt, response-call tokens)
    layers = 2
    state = PrefixAttention(KV_HEADS)

    def kv(t):  # what verl's Qwen2-VL attention hands its kernel: each kv head repeated
        return t.repeat_interleave(HEADS // KV_HEADS, dim=1) if repeated_kv else t

    prompt_q = {p: sequences([n] * layers, HEADS, gen) for p, n in prompts.items()}
    prompt_kv = {p: [sequences([n] * layers, KV_HEADS, gen) for _ in range(2)] for p, n in prompts.items()}
    row_q = [sequences([n] * layers, HEADS, gen) for _, n in rows]
    row_kv = [[sequences([n] * layers, KV_HEADS, gen) for _ in range(2)] for _, n in rows]

    state.begin(CallLayout(PROMPT, tuple(prompts.values()), tuple(prompts)))
    for layer in range(layers):
        q = torch.cat([prompt_q[p][layer] for p in prompts] + [torch.randn(2, HEADS, DIM)])  # 2 padding tokens
        k = kv(torch.cat([prompt_kv[p][0][layer] for p in prompts] + [torch.randn(2, KV_HEADS, DIM)]))
        v = kv(torch.cat([prompt_kv[p][1][layer] for p in prompts] + [torch.randn(2, KV_HEADS, DIM)]))
        out = state.attend(q, k, v)
        assert out.shape == q.shape and torch.equal(out[-2:], torch.zeros(2, HEADS, DIM))
        start = 0
        for p, n in prompts.items():
            expected = reference_attention(prompt_q[p][layer], prompt_kv[p][0][layer], prompt_kv[p][1][layer])
            torch.testing.assert_close(out[start : start + n].double(), expected, rtol=0, atol=1e-5)
            start += n
    state.end(layers)
    assert all(k.shape[1] == KV_HEADS for entries in state.cache.values() for k, _ in entries)

    state.begin(CallLayout(RESPONSE, tuple(n for _, n in rows), tuple(p for p, _ in rows)))
    for layer in range(layers):
        q = torch.cat([row_q[i][layer] for i in range(len(rows))])
        k = kv(torch.cat([row_kv[i][0][layer] for i in range(len(rows))]))
        v = kv(torch.cat([row_kv[i][1][layer] for i in range(len(rows))]))
        out = state.attend(q, k, v)
        start = 0
        for i, (p, n) in enumerate(rows):
            whole_k = torch.cat([prompt_kv[p][0][layer], row_kv[i][0][layer]])
            whole_v = torch.cat([prompt_kv[p][1][layer], row_kv[i][1][layer]])
            whole_q = torch.cat([prompt_q[p][layer], row_q[i][layer]])
            expected = reference_attention(whole_q, whole_k, whole_v)[prompts[p] :]  # the response's queries
            torch.testing.assert_close(out[start : start + n].double(), expected, rtol=0, atol=1e-5)
            start += n
    state.end(layers)


def test_a_row_without_prefix_attends_to_itself_only():
    gen = torch.Generator().manual_seed(1)
    state = PrefixAttention(KV_HEADS)
    q, k, v = sequences([4], HEADS, gen)[0], *sequences([4, 4], KV_HEADS, gen)
    state.begin(CallLayout(RESPONSE, (4,), (None,)))
    torch.testing.assert_close(state.attend(q, k, v).double(), reference_attention(q, k, v), rtol=0, atol=1e-5)
    state.end(1)


def test_bottom_right_mask_lets_each_query_see_the_prefix_and_its_own_past():
    mask = bottom_right_causal_mask(2, 5, torch.device("cpu"))
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_plan_errors_name_the_defect():
    state = PrefixAttention(KV_HEADS)
    with pytest.raises(PrefixAttentionError, match="without a cached prefix"):
        state.begin(CallLayout(RESPONSE, (3,), ("never cached",)))
    state.begin(CallLayout(PROMPT, (3,), ("a",)))
    with pytest.raises(PrefixAttentionError, match="1 attention layer.*expected 2.*share_masked_prompt=false"):
        state.attend(*(torch.randn(3, h, DIM) for h in (HEADS, KV_HEADS, KV_HEADS)))
        state.end(2)
    with pytest.raises(PrefixAttentionError, match="outside a shared-pass model call"):
        state.attend(*(torch.randn(3, h, DIM) for h in (HEADS, KV_HEADS, KV_HEADS)))
    with pytest.raises(ValueError, match="2 lengths but 1 keys"):
        CallLayout(PROMPT, (1, 2), ("a",))


# --- planning ---------------------------------------------------------------------------------------


def batch(rows: list[tuple[str, list[int], int, torch.Tensor | None]]) -> TensorDict:
    """A batch in verl's layout of ``(uid, prompt ids, response length, pixel_values or None)`` rows."""
    input_ids = [torch.tensor(prompt + [9] * response) for _, prompt, response, _ in rows]
    data = TensorDict(
        {
            "input_ids": torch.nested.as_nested_tensor(input_ids, layout=torch.jagged),
            "position_ids": tu.nested_tensor_from_tensor_list(
                [torch.arange(len(ids)).expand(4, -1).clone() for ids in input_ids], ragged_idx=2
            ),
            "response_mask": torch.nested.as_nested_tensor(
                [torch.ones(response, dtype=torch.long) for _, _, response, _ in rows], layout=torch.jagged
            ),
        },
        batch_size=[len(rows)],
    )
    inputs = [
        None if pixels is None else {"pixel_values": pixels, "image_grid_thw": torch.tensor([[1, 2, 2]])}
        for *_, pixels in rows
    ]
    tu.assign_non_tensor(data, uid=[uid for uid, *_ in rows], multi_modal_inputs=inputs)
    return data


def test_rows_group_by_uid_prompt_and_pixels_in_order_of_first_row():
    image, other = torch.ones(4, 6), torch.zeros(4, 6)
    data = batch(
        [
            ("a", [1, 2, 3], 2, image),
            ("b", [1, 2], 1, None),
            ("a", [1, 2, 3], 4, image.clone()),  # equal pixels: same group
            ("a", [1, 2, 4], 2, image),  # same uid, other prompt tokens: its own group
            ("a", [1, 2, 3], 1, other),  # same uid and tokens, other pixels: its own group
            ("b", [1, 2], 3, None),
        ]
    )
    rows = BatchRows.of(data)
    assert rows.response_lens == [2, 1, 4, 2, 1, 3] and rows.prompt_len(2) == 3
    assert rows.position_ids[2].shape == (4, 7) and rows.position_ids[2][0].tolist() == list(range(7))
    groups = prompt_groups(data, rows)
    assert groups == [
        PromptGroup((0, 2), 3),
        PromptGroup((1, 5), 2),
        PromptGroup((3,), 3),
        PromptGroup((4,), 3),
    ]
    assert groups[1].prefix_len == 1


def test_plan_cuts_rows_in_group_order_by_rows_or_tokens():
    groups = [PromptGroup((0, 3, 4), 5), PromptGroup((1,), 5), PromptGroup((2, 5), 5)]
    tokens = [10, 20, 30, 10, 10, 30]
    assert plan_micro_batches(groups, tokens, max_rows=2) == [[0, 3], [4, 1], [2, 5]]
    assert plan_micro_batches(groups, tokens, max_tokens=40) == [[0, 3, 4], [1], [2], [5]]
    assert plan_micro_batches(groups, tokens, max_tokens=5) == [[0], [3], [4], [1], [2], [5]]  # a row alone
    with pytest.raises(ValueError, match="exactly one"):
        plan_micro_batches(groups, tokens)


def test_order_by_prompt_keeps_each_prompt_on_one_rank_with_tokens_balanced():
    # balance_batch's order: each prompt's 4 rollouts spread over both ranks
    uids = ["a", "b", "c", "d"] * 4
    lengths = [100, 10, 60, 40] * 4
    order = order_by_prompt(uids, lengths, ranks=2)
    assert sorted(order) == list(range(16))
    ranks = [order[:8], order[8:]]
    # largest group first, each to the rank with the fewest tokens that has room: a, c, d, then b
    assert [sorted({uids[row] for row in rank}) for rank in ranks] == [["a", "b"], ["c", "d"]]
    assert [sum(lengths[row] for row in rank) for rank in ranks] == [440, 400]
    one_rank = [uids[row] for row in order_by_prompt(uids, lengths, ranks=1)]
    assert one_rank == ["a"] * 4 + ["c"] * 4 + ["d"] * 4 + ["b"] * 4


def test_order_by_prompt_splits_a_group_only_when_no_rank_has_room():
    uids = ["a"] * 3 + ["b"] * 3
    order = order_by_prompt(uids, [1] * 6, ranks=3)  # 2 rows per rank: every group is split once
    assert [sorted({uids[row] for row in order[i : i + 2]}) for i in (0, 2, 4)] == [["a"], ["a", "b"], ["b"]]
    with pytest.raises(ValueError, match="cannot be split evenly"):
        order_by_prompt(uids, [1] * 6, ranks=4)
