"""The attention of the shared masked pass: each prompt once, each response against its prompt's keys/values.

The shared masked pass (:mod:`recipe.papo.shared_pass`) runs the model twice per micro-batch, both
times on packed inputs (one row of ``total`` tokens, as verl's remove-padding path packs them):

* the **prompt** call: the prompts of the micro-batch's new prompt groups, each once (all but its
  last token: the prefix). Every text self-attention layer runs causal attention within each prompt
  and keeps that layer's keys and values per prompt (:attr:`PrefixAttention.cache`);
* the **response** call: each row's last prompt token and response tokens. In every layer, a row's
  queries attend to its prompt's cached keys/values followed by its own keys/values, causally:
  query ``i`` of the row sees the whole prefix and the row's tokens ``0..i``.

Causal attention makes a prompt's keys/values independent of what follows it, so this is the same
attention the full sequence gets, minus recomputing the prompt n times. A call's layers are counted
in call order (:attr:`PrefixAttention.layer`): the prompt call's i-th attention layer is the response
call's i-th.

Kernels: flash-attn's variable-length kernel where the model's own attention is flash-attn and the
inputs are on CUDA in fp16/bf16 (causal masks bottom-right aligned, as flash-attn >= 2.1 defines
them); otherwise torch's ``scaled_dot_product_attention`` per sequence (an explicit bottom-right mask
for the response call). Nothing here touches the model: the routing of a model's attention layers
to :meth:`PrefixAttention.attend` lives in :mod:`recipe.papo.compat.shared_prompt`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F

PROMPT, RESPONSE = "prompt", "response"


class PrefixAttentionError(RuntimeError):
    """The shared pass's attention was called inconsistently with its plan (a routing or layout defect)."""


@dataclass(frozen=True)
class CallLayout:
    """The packed query layout of one model call.

    Attributes:
        phase: :data:`PROMPT` or :data:`RESPONSE`.
        lengths: tokens of each sequence, in packing order (the packed row may end with padding).
        keys: per sequence, the prompt group it belongs to (prompt call: the group it caches;
            response call: the group whose cached prefix it attends to, None for no prefix).
    """

    phase: str
    lengths: tuple[int, ...]
    keys: tuple[Hashable, ...]

    def __post_init__(self) -> None:
        if self.phase not in (PROMPT, RESPONSE):
            raise ValueError(f"phase must be {PROMPT!r} or {RESPONSE!r}, got {self.phase!r}")
        if len(self.lengths) != len(self.keys):
            raise ValueError(f"{len(self.lengths)} lengths but {len(self.keys)} keys")

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, mask: torch.Tensor | None):
    """SDPA of one sequence; ``q`` ``(S_q, H, D)``, ``k``/``v`` ``(S_k, H_kv, D)``; causal iff ``mask`` is None."""
    q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # (heads, seq, head_dim)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=k.shape[0] != q.shape[0]
    )
    return out.transpose(0, 1)


def bottom_right_causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """``(queries, keys)`` bool: query ``i`` may see key ``j`` iff ``j <= keys - queries + i``."""
    rows = torch.arange(queries, device=device).unsqueeze(1)
    cols = torch.arange(keys, device=device).unsqueeze(0)
    return cols <= rows + (keys - queries)


def _offsets(lengths: Sequence[int], device: torch.device) -> torch.Tensor:
    """``(len(lengths) + 1,)`` int32 cumulative offsets (flash-attn's ``cu_seqlens``)."""
    return torch.tensor([0, *accumulate(lengths)], dtype=torch.int32, device=device)


class PrefixAttention:
    """State and kernel of one shared masked pass.

    Args:
        kv_heads: the text model's key/value heads; keys/values that arrive with their heads repeated
            (verl's Qwen2-VL attention repeats them before its kernel) are stored un-repeated.
        use_flash: use flash-attn's variable-length kernel for CUDA fp16/bf16 inputs.

    Attributes:
        cache: per prompt group, per attention layer in call order, its ``(keys, values)``
            ``(prefix_len, kv_heads, head_dim)``.
        layer: attention layers called so far in the current call.
    """

    def __init__(self, kv_heads: int, use_flash: bool = False):
        self.kv_heads = kv_heads
        self.use_flash = use_flash
        self.cache: dict[Hashable, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.layout: CallLayout | None = None
        self.layer = 0

    def begin(self, layout: CallLayout) -> None:
        """Start a model call with ``layout``; its attention layers are counted from 0."""
        if layout.phase == RESPONSE:
            missing = {key for key in layout.keys if key is not None and key not in self.cache}
            if missing:
                raise PrefixAttentionError(f"response call for prompt groups without a cached prefix: {missing}")
        self.layout = layout
        self.layer = 0

    def end(self, expected_layers: int) -> None:
        """End the call; raise unless exactly ``expected_layers`` attention layers ran through :meth:`attend`."""
        layout, self.layout = self.layout, None
        if layout is not None and self.layer != expected_layers:
            raise PrefixAttentionError(
                f"{layout.phase} call: {self.layer} attention layer(s) ran through the shared pass's attention, "
                f"expected {expected_layers}: the model's text attention is not routed as "
                "recipe.papo.compat.shared_prompt expects (turn the shared pass off: papo.share_masked_prompt=false)"
            )

    def drop(self, keys: Sequence[Hashable]) -> None:
        """Forget the cached prefixes of ``keys`` (their rows are done)."""
        for key in keys:
            self.cache.pop(key, None)

    def _unrepeat(self, t: torch.Tensor) -> torch.Tensor:
        """``(S, H, D)`` keys/values whose kv heads were repeated -> ``(S, kv_heads, D)``."""
        heads = t.shape[1]
        if heads == self.kv_heads:
            return t
        if heads % self.kv_heads:
            raise PrefixAttentionError(f"{heads} key/value heads is not a multiple of the model's {self.kv_heads}")
        return t.unflatten(1, (self.kv_heads, heads // self.kv_heads))[:, :, 0]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """One attention layer of the current call.

        Args:
            q: ``(total, heads, head_dim)`` packed queries (``total`` >= the layout's tokens; the
                rest is padding and gets zeros).
            k, v: ``(total, kv_heads or heads, head_dim)`` packed keys/values of the same tokens.
            scale: softmax scale (default ``head_dim ** -0.5``).

        Returns:
            ``(total, heads, head_dim)`` in ``q``'s dtype.
        """
        layout = self.layout
        if layout is None:
            raise PrefixAttentionError("attention called outside a shared-pass model call")
        if q.shape[0] < layout.tokens:
            raise PrefixAttentionError(f"{q.shape[0]} packed tokens but the {layout.phase} call holds {layout.tokens}")
        k, v = self._unrepeat(k), self._unrepeat(v)
        out = torch.zeros_like(q)
        starts = [0, *accumulate(layout.lengths)]
        if layout.phase == PROMPT:
            for key, start, end in zip(layout.keys, starts[:-1], starts[1:], strict=True):
                entries = self.cache.setdefault(key, [])
                if len(entries) != self.layer:
                    raise PrefixAttentionError(
                        f"prompt group {key!r} cached {len(entries)} layers at layer {self.layer}"
                    )
                entries.append((k[start:end].contiguous(), v[start:end].contiguous()))
            self._prompt_attention(q, k, v, out, layout, starts, scale)
        else:
            self._response_attention(q, k, v, out, layout, starts, scale)
        self.layer += 1
        return out

    def _flash(self, q: torch.Tensor) -> bool:
        return self.use_flash and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)

    def _prompt_attention(self, q, k, v, out, layout: CallLayout, starts: list[int], scale) -> None:
        if self._flash(q):
            from flash_attn import flash_attn_varlen_func

            n, cu, longest = layout.tokens, _offsets(layout.lengths, q.device), max(layout.lengths)
            out[:n] = flash_attn_varlen_func(
                q[:n], k[:n], v[:n], cu, cu, longest, longest, causal=True, softmax_scale=scale
            )
            return
        for start, end in zip(starts[:-1], starts[1:], strict=True):
            if end > start:
                out[start:end] = _sdpa(q[start:end], k[start:end], v[start:end], scale, None)

    def _response_attention(self, q, k, v, out, layout: CallLayout, starts: list[int], scale) -> None:
        keys, values, key_lengths = [], [], []
        for key, start, end in zip(layout.keys, starts[:-1], starts[1:], strict=True):
            if key is None:  # a one-token prompt: no prefix
                keys.append(k[start:end])
                values.append(v[start:end])
            else:
                entries = self.cache[key]
                if self.layer >= len(entries):
                    raise PrefixAttentionError(
                        f"prompt group {key!r} cached {len(entries)} layers, not {self.layer + 1}"
                    )
                prefix_k, prefix_v = entries[self.layer]
                keys.append(torch.cat([prefix_k, k[start:end]]))
                values.append(torch.cat([prefix_v, v[start:end]]))
            key_lengths.append(keys[-1].shape[0])
        if self._flash(q):
            from flash_attn import flash_attn_varlen_func

            n = layout.tokens
            out[:n] = flash_attn_varlen_func(
                q[:n],
                torch.cat(keys),
                torch.cat(values),
                _offsets(layout.lengths, q.device),
                _offsets(key_lengths, q.device),
                max(layout.lengths),
                max(key_lengths),
                causal=True,  # bottom-right aligned: query i sees the prefix and its tokens 0..i
                softmax_scale=scale,
            )
            return
        for start, end, row_k, row_v in zip(starts[:-1], starts[1:], keys, values, strict=True):
            if end > start:
                mask = bottom_right_causal_mask(end - start, row_k.shape[0], q.device)
                out[start:end] = _sdpa(q[start:end], row_k, row_v, scale, mask)
