"""Pure-torch stand-ins for the flash-attn kernels verl's remove-padding attention calls.

verl's remove-padding path (``actor_rollout_ref.model.use_remove_padding=True``) packs a
micro-batch into one row of ``total_nnz`` tokens and hands attention the per-token position ids;
its attention forward then calls flash-attn's variable-length kernel with ``cu_seqlens`` (the
sequence boundaries, where the position ids restart at 0). flash-attn does not exist on CPU, so the
CPU backend installs the two functions below in its place (see :mod:`papo_tools.compat.verl_cpu`).
Both compute exact causal softmax attention with ``torch.nn.functional.scaled_dot_product_attention``
(SDPA), one packed sequence at a time, in the dtype they are given.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _reject_unsupported(window_size: Any, softcap: float | None) -> None:
    if window_size not in (None, (-1, -1)) or softcap not in (None, 0.0):
        raise NotImplementedError(
            f"the CPU backend's variable-length attention supports neither sliding windows nor soft-capping "
            f"(got window_size={window_size}, softcap={softcap}); run this model on a GPU with flash-attn"
        )


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, dropout_p: float, scale: float | None):
    """SDPA over ``(..., seq, heads, head_dim)`` inputs; k/v may have fewer heads (GQA)."""
    q, k, v = (t.transpose(-3, -2) for t in (q, k, v))  # (..., heads, seq, head_dim)
    out = F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=k.shape[-3] != q.shape[-3]
    )
    return out.transpose(-3, -2)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: Any = None,
    max_seqlen_k: Any = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Any = (-1, -1),
    softcap: float | None = None,
    deterministic: bool = False,
    **unused: Any,
) -> torch.Tensor:
    """flash-attn's ``flash_attn_varlen_func`` contract, self-attention only.

    Args:
        q: ``(total_q, heads, head_dim)`` packed queries.
        k, v: ``(total_k, kv_heads, head_dim)``; ``heads`` must be a multiple of ``kv_heads``.
        cu_seqlens_q, cu_seqlens_k: ``(num_seqs + 1,)`` int offsets of each sequence (equal: self-attention).
        max_seqlen_q, max_seqlen_k: unused (the kernel's launch hints).
        dropout_p: attention dropout probability.
        softmax_scale: default ``head_dim ** -0.5``.
        causal: causal mask within each sequence.

    Returns:
        ``(total_q, heads, head_dim)``, each token attending only to tokens of its own sequence.
    """
    _reject_unsupported(window_size, softcap)
    if not torch.equal(cu_seqlens_q.cpu(), cu_seqlens_k.cpu()):
        raise NotImplementedError("the CPU backend's variable-length attention supports self-attention only")
    bounds = cu_seqlens_q.tolist()
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:], strict=False):
        if end > start:
            out[start:end] = _sdpa(q[start:end], k[start:end], v[start:end], causal, dropout_p, softmax_scale)
    return out


def dense_attention(
    query_states: torch.Tensor,
    key_states: torch.Tensor,
    value_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    query_length: int,
    is_causal: bool,
    dropout: float = 0.0,
    softmax_scale: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **unused: Any,
) -> torch.Tensor:
    """transformers' ``_flash_attention_forward`` contract: causal attention over whole rows.

    verl's packed attention takes this branch when the packed row holds a single sequence (its
    position ids never restart), with ``attention_mask=None``. A padded batch (verl patches the
    attention class, so a padded model built later in the same process lands here too) passes a
    ``(batch, seq)`` 0/1 mask: padding keys are excluded (padding queries attend to themselves).

    Args:
        query_states: ``(batch, seq, heads, head_dim)``.
        key_states, value_states: ``(batch, seq, kv_heads, head_dim)``.
        attention_mask: None, ``(batch, seq)`` with 1 for real tokens, or a ``(batch, 1, seq, seq)``
            mask as transformers builds it for eager/SDPA attention (bool: True = may attend; float:
            additive, 0 = may attend, a large negative value = may not).
        query_length: ``seq`` (unused beyond the contract).
        is_causal: causal mask over the whole row.

    Returns:
        ``(batch, seq, heads, head_dim)``.
    """
    _reject_unsupported(None if sliding_window is None else (sliding_window, sliding_window), softcap)
    if attention_mask is None:
        return _sdpa(query_states, key_states, value_states, is_causal, dropout, softmax_scale)
    length = query_states.shape[1]
    if attention_mask.dim() == 4:  # (batch, 1, seq, seq) from transformers' mask builders: bool or additive
        if attention_mask.dtype == torch.bool:
            allowed = attention_mask
        else:  # masked entries hold the dtype's minimum (or -inf)
            allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    else:
        allowed = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, seq): real keys
    if is_causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=allowed.device).tril()
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=allowed.device)  # no empty rows
    q, k, v = (t.transpose(1, 2) for t in (query_states, key_states, value_states))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, dropout_p=dropout, scale=softmax_scale, enable_gqa=k.shape[1] != q.shape[1]
    )
    return out.transpose(1, 2)
