"""The CPU backend's packed attention equals padded causal attention, computed independently, in float32."""

from __future__ import annotations

import pytest
import torch

from papo_tools.cpu.varlen_attention import dense_attention, varlen_attention

LENGTHS = [5, 1, 9, 3]


def padded_reference(q, k, v, lengths):
    """Explicit softmax attention on a right-padded batch: causal and key-padding masks, GQA by repeat."""
    heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
    longest = max(lengths)
    out = []
    start = 0
    for length in lengths:
        pad = longest - length
        qs, ks, vs = (torch.nn.functional.pad(t[start : start + length], (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        ks, vs = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (ks, vs))
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / dim**0.5
        allowed = torch.ones(longest, longest).tril().bool() & (torch.arange(longest) < length)[None, :]
        scores = scores.masked_fill(~allowed, float("-inf"))
        rows = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vs)
        out.append(rows[:length])
        start += length
    return torch.cat(out)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_attention_equals_padded_attention_in_float32(kv_heads):
    generator = torch.Generator().manual_seed(0)
    total = sum(LENGTHS)
    q = torch.randn(total, 4, 8, generator=generator)
    k, v = (torch.randn(total, kv_heads, 8, generator=generator) for _ in range(2))
    cu_seqlens = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    packed = varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max(LENGTHS), max(LENGTHS), causal=True)
    expected = padded_reference(q, k, v, LENGTHS)
    assert packed.shape == q.shape and packed.dtype == torch.float32
    assert (packed - expected).abs().max().item() < 1e-5
    # one sequence cannot see another: changing sequence 0's values leaves the others unchanged
    v2 = v.clone()
    v2[: LENGTHS[0]] += 1.0
    again = varlen_attention(q, k, v2, cu_seqlens, cu_seqlens, causal=True)
    assert torch.equal(again[LENGTHS[0] :], packed[LENGTHS[0] :]) and not torch.equal(again, packed)


def test_single_sequence_branch_equals_the_packed_kernel():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 7, 4, 8, generator=generator) for _ in range(3))
    dense = dense_attention(q, k, v, None, 7, is_causal=True)
    packed = varlen_attention(q[0], k[0], v[0], torch.tensor([0, 7]), torch.tensor([0, 7]), causal=True)
    assert (dense[0] - packed).abs().max().item() < 1e-6


def test_unsupported_options_fail_clearly():
    x = torch.randn(4, 2, 8)
    bounds = torch.tensor([0, 4])
    with pytest.raises(NotImplementedError, match="sliding windows"):
        varlen_attention(x, x, x, bounds, bounds, causal=True, window_size=(2, 2))


def test_padded_rows_equal_their_unpadded_attention():
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 6, 4, 8, generator=generator) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    out = dense_attention(q, k, v, mask, 6, is_causal=True)
    assert (out[0] - dense_attention(q[:1], k[:1], v[:1], None, 6, is_causal=True)[0]).abs().max() < 1e-6
    alone = dense_attention(q[1:, :4], k[1:, :4], v[1:, :4], None, 4, is_causal=True)[0]
    assert (out[1, :4] - alone).abs().max() < 1e-6 and torch.isfinite(out).all()


@pytest.mark.parametrize("additive", [False, True])
def test_dense_attention_accepts_transformers_4d_masks(additive):
    """A model built after verl patched the attention class passes transformers' (batch, 1, q, k) mask."""
    from papo_tools.cpu.varlen_attention import dense_attention

    torch.manual_seed(0)
    batch, seq, heads, dim = 2, 5, 4, 8
    q, k, v = (torch.randn(batch, seq, heads, dim) for _ in range(3))
    keep = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)  # left padding in row 1
    allowed = keep[:, None, None, :] & torch.ones(seq, seq, dtype=torch.bool).tril()
    mask = allowed
    if additive:
        mask = torch.zeros(batch, 1, seq, seq).masked_fill(~allowed, torch.finfo(torch.float32).min)
    out = dense_attention(q, k, v, mask, seq, is_causal=True)
    two_d = dense_attention(q, k, v, keep.long(), seq, is_causal=True)
    assert out.shape == (batch, seq, heads, dim)
    torch.testing.assert_close(out[:, :], two_d[:, :], rtol=0, atol=1e-6)
