"""The shared masked pass: each prompt's masked prompt once, its rollouts' responses against it.

All n rollouts of a prompt share the prompt, its images and its mask (masks are drawn per prompt uid,
:func:`recipe.papo.masking.mask_seed`), and causal attention makes the prompt's hidden states the
same in every rollout. So instead of the whole masked sequence per rollout (vision tower + prompt +
response, n times), :class:`SharedMaskedPass` runs, per micro-batch:

1. a **prompt call**: the micro-batch's new prompt groups, each once: the masked images through the
   vision tower and the prompt tokens but the last through the language model (mRoPE position ids
   and deepstack features as the model's own forward makes them), keeping every attention layer's
   keys/values;
2. a **response call**: every row's last prompt token and response tokens (position ids continuing
   the prompt's) against its prompt's cached keys/values
   (:class:`recipe.papo.prefix_attention.PrefixAttention`), through the engine's own
   ``forward_step``: temperature and log-probs exactly as every log-prob pass. The last prompt token
   is in this call because its logits give the first response token's log-prob, which differs per
   rollout.

Rows are grouped by prompt (:func:`prompt_groups`: verl's ``uid``, checked against the prompt tokens
and image inputs) whatever micro-batch they would have landed in, and planned into micro-batches
of whole groups in group order (:func:`plan_micro_batches`) under the same limit as the engine's
log-prob micro-batches (rows, or tokens with dynamic batch size), so the prompt call holds at most
as many prompts as the micro-batch has rows, and the response call fewer tokens than the full rows.
A group may straddle two micro-batches; its cached keys/values then live until its last row is done.
With several data-parallel ranks every rank makes the same number of model calls (FSDP gathers
parameters in each): a rank with fewer calls makes one-token calls to catch up.

The model-specific hooks (attention routing, the prompt call) are in
:mod:`recipe.papo.compat.shared_prompt`; which runs get this pass, and why not, is decided there
(:func:`recipe.papo.compat.shared_prompt.unsupported_reason`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

from .batch_keys import MULTI_MODAL_INPUTS_KEY, UID_KEY
from .compat.shared_prompt import (
    forward_prompt_call,
    forward_response_log_probs,
    route_text_attention,
    text_attention_layers,
)
from .masked_inputs import row_has_image, same_pixels
from .prefix_attention import PROMPT, RESPONSE, CallLayout, PrefixAttention

# What the engine's forward reads besides the tensors: the packed path, plain log-probs.
CALL_OPTIONS = dict(
    use_remove_padding=True,
    use_fused_kernels=False,
    calculate_entropy=False,
    calculate_sum_pi_squared=False,
    distillation_use_topk=False,
    distillation_only=False,
)


@dataclass(frozen=True)
class PromptGroup:
    """Rows of a batch that share one prompt (tokens, images, mask).

    Attributes:
        rows: batch row indices, in batch order; ``rows[0]`` stands for the group.
        prompt_len: prompt tokens (the prompt call runs ``prompt_len - 1`` of them).
    """

    rows: tuple[int, ...]
    prompt_len: int

    @property
    def prefix_len(self) -> int:
        return self.prompt_len - 1


@dataclass(frozen=True)
class BatchRows:
    """Per-row views of a batch's sequences (all on the batch's device).

    Attributes:
        input_ids: per row ``(len_i,)`` prompt + response tokens.
        position_ids: per row ``(channels, len_i)`` (mRoPE) or ``(len_i,)``.
        response_lens: per row, response tokens.
    """

    input_ids: list[torch.Tensor]
    position_ids: list[torch.Tensor]
    response_lens: list[int]

    @classmethod
    def of(cls, data: TensorDict) -> BatchRows:
        input_ids, position_ids = data["input_ids"], data["position_ids"]
        offsets = input_ids.offsets().tolist()
        ids, positions = input_ids.values(), position_ids.values()
        spans = list(zip(offsets[:-1], offsets[1:], strict=True))
        return cls(
            input_ids=[ids[start:end] for start, end in spans],
            position_ids=[positions[..., start:end] for start, end in spans],
            response_lens=data["response_mask"].offsets().diff().tolist(),
        )

    def prompt_len(self, row: int) -> int:
        return len(self.input_ids[row]) - self.response_lens[row]


def prompt_groups(data: TensorDict, rows: BatchRows) -> list[PromptGroup]:
    """Group a batch's rows by prompt: same ``uid``, same prompt tokens, bitwise equal image inputs.

    verl gives the n rollouts of a prompt one ``uid``; the token and pixel checks keep rows apart that
    share a uid but not a prompt (a row is then its own group). Groups are in order of first row.

    Raises:
        ValueError: a row's prompt is empty.
    """
    uids = [str(uid) for uid in tu.get(data, UID_KEY)]
    inputs = tu.get(data, MULTI_MODAL_INPUTS_KEY) or [None] * len(uids)
    found: dict[tuple[str, int], list[list[int]]] = {}
    order: list[list[int]] = []
    for row, uid in enumerate(uids):
        prompt_len = rows.prompt_len(row)
        if prompt_len < 1:
            raise ValueError(f"row {row} (uid={uid}) has an empty prompt ({rows.response_lens[row]} response tokens)")
        prompt = rows.input_ids[row][:prompt_len]
        for group in found.setdefault((uid, prompt_len), []):
            first = group[0]
            if torch.equal(rows.input_ids[first][:prompt_len], prompt) and _same_image_inputs(
                inputs[first], inputs[row]
            ):
                group.append(row)
                break
        else:
            found[(uid, prompt_len)].append([row])
            order.append(found[(uid, prompt_len)][-1])
    return [PromptGroup(tuple(group), rows.prompt_len(group[0])) for group in order]


def _same_image_inputs(a: Any, b: Any) -> bool:
    a, b = getattr(a, "data", a), getattr(b, "data", b)
    if row_has_image(a) != row_has_image(b):
        return False
    return not row_has_image(a) or same_pixels(a, b)


def plan_micro_batches(
    groups: Sequence[PromptGroup],
    row_tokens: Sequence[int],
    *,
    max_rows: int | None = None,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Rows in group order, cut into micro-batches of at most ``max_rows`` rows or ``max_tokens`` tokens.

    The limits are the engine's log-prob micro-batch (``log_prob_micro_batch_size_per_gpu`` rows, or
    ``log_prob_max_token_len_per_gpu`` tokens of whole rows with dynamic batch size); a row longer
    than ``max_tokens`` is a micro-batch of its own. Each micro-batch is a list of batch rows.
    """
    if (max_rows is None) == (max_tokens is None):
        raise ValueError("give exactly one of max_rows and max_tokens")
    batches: list[list[int]] = [[]]
    tokens = 0
    for row in (row for group in groups for row in group.rows):
        full = len(batches[-1]) >= max_rows if max_rows is not None else tokens + row_tokens[row] > max_tokens
        if batches[-1] and full:
            batches.append([])
            tokens = 0
        batches[-1].append(row)
        tokens += row_tokens[row]
    return [batch for batch in batches if batch]


def order_by_prompt(uids: Sequence[str], lengths: Sequence[int], ranks: int) -> list[int]:
    """A row order that keeps each prompt's rows on one data-parallel rank where it can, tokens balanced.

    verl hands rank ``r`` the ``r``-th of ``ranks`` equal contiguous chunks of a batch, and its trainer
    first orders the batch to balance tokens over ranks, which spreads a prompt's rollouts over
    ranks (the shared pass then shares little). For the masked pass the PAPO trainer dispatches the
    rows in this order instead: prompt groups, largest first, each to the rank with the fewest tokens
    that has room for all of it (when none has, the group fills the ranks with the most room), ranks
    of ``len(uids) / ranks`` rows each.

    Args:
        uids: per row, its prompt uid.
        lengths: per row, its tokens.
        ranks: data-parallel ranks (must divide the rows).

    Returns:
        The row indices, rank 0's first.
    """
    if len(uids) % ranks:
        raise ValueError(f"{len(uids)} rows cannot be split evenly over {ranks} ranks")
    room = len(uids) // ranks
    groups: dict[str, list[int]] = {}
    for row, uid in enumerate(uids):
        groups.setdefault(uid, []).append(row)
    bins: list[list[int]] = [[] for _ in range(ranks)]
    tokens = [0] * ranks
    for rows in sorted(groups.values(), key=lambda rows: -sum(lengths[row] for row in rows)):
        while rows:
            fits = [r for r in range(ranks) if room - len(bins[r]) >= len(rows)]
            rank = min(fits, key=lambda r: tokens[r]) if fits else max(range(ranks), key=lambda r: room - len(bins[r]))
            take, rows = rows[: room - len(bins[rank])], rows[room - len(bins[rank]) :]
            bins[rank].extend(take)
            tokens[rank] += sum(lengths[row] for row in take)
    return [row for rows in bins for row in rows]


class SharedMaskedPass:
    """The shared masked pass on an FSDP engine (see the module docstring).

    Args:
        engine: the actor's verl FSDP engine (``FSDPEngineWithLMHead``).
        kv_heads: the text model's key/value heads.
        use_flash: use flash-attn kernels (the model's own attention does).
    """

    def __init__(self, engine: Any, kv_heads: int, use_flash: bool = False):
        self.engine = engine
        self.kv_heads = kv_heads
        self.use_flash = use_flash
        self.attention_layers = len(text_attention_layers(engine.module))

    def __call__(
        self, data: TensorDict, masked_inputs: Sequence[Any], *, max_rows: int | None, max_tokens: int | None
    ) -> torch.Tensor:
        """Masked log-probs of every row's response tokens.

        Args:
            data: the batch (verl's layout: jagged ``input_ids`` / ``position_ids`` / ``response_mask``,
                ``uid``, ``multi_modal_inputs``, ``temperature``).
            masked_inputs: per row, its masked ``multi_modal_inputs`` (what the model sees).
            max_rows / max_tokens: the micro-batch limit (:func:`plan_micro_batches`).

        Returns:
            Nested ``(batch, response_len_i)`` log-probs on the CPU (the engine's dtype), in batch order: what
            ``response_from_nested`` makes of a full masked forward's log-probs.
        """
        tu.maybe_fix_3d_position_ids(data)
        rows = BatchRows.of(data)
        groups = prompt_groups(data, rows)
        row_tokens = [len(ids) for ids in rows.input_ids]
        plan = plan_micro_batches(groups, row_tokens, max_rows=max_rows, max_tokens=max_tokens)
        group_of = {row: index for index, group in enumerate(groups) for row in group.rows}
        last_batch = {group_of[row]: number for number, batch in enumerate(plan) for row in batch}
        temperature = data["temperature"]
        calls = _new_prompt_groups(plan, group_of, groups)
        own_calls = sum(1 for new in calls if new) + len(plan)
        extra_calls = _calls_to_match_ranks(self.engine, own_calls)

        attention = PrefixAttention(self.kv_heads, use_flash=self.use_flash)
        log_probs: list[torch.Tensor | None] = [None] * len(row_tokens)
        with self.engine.eval_mode(), torch.no_grad(), route_text_attention(self.engine.module, attention):
            for number, batch in enumerate(plan):
                if calls[number]:
                    prompt_batch = self._prompt_batch([groups[g] for g in calls[number]], rows, masked_inputs)
                    self._call(attention, CallLayout(PROMPT, *_layout(calls[number], groups)), prompt_batch)
                keys = tuple(group_of[row] if groups[group_of[row]].prefix_len else None for row in batch)
                lengths = tuple(rows.response_lens[row] + 1 for row in batch)
                response_batch = self._response_batch(batch, rows, temperature)
                output = self._call(attention, CallLayout(RESPONSE, lengths, keys), response_batch)
                values, offsets = output.values().cpu(), output.offsets().tolist()
                for index, row in enumerate(batch):
                    log_probs[row] = values[offsets[index] : offsets[index] + rows.response_lens[row]]
                attention.drop([g for g, last in last_batch.items() if last == number])
            for _ in range(extra_calls):  # keep the ranks' FSDP collectives in step
                self._call(attention, CallLayout(PROMPT, (1,), ("catch-up",)), self._catch_up_batch(rows))
                attention.drop(["catch-up"])
        return torch.nested.as_nested_tensor(log_probs, layout=torch.jagged)

    def _call(self, attention: PrefixAttention, layout: CallLayout, micro_batch: TensorDict) -> torch.Tensor | None:
        attention.begin(layout)
        if layout.phase == PROMPT:
            forward_prompt_call(self.engine, micro_batch)
            output = None
        else:
            output = forward_response_log_probs(self.engine, micro_batch)
        attention.end(self.attention_layers)
        return output

    @staticmethod
    def _prompt_batch(groups: Sequence[PromptGroup], rows: BatchRows, masked_inputs: Sequence[Any]) -> TensorDict:
        """The prompt call's micro-batch: each group's prompt but its last token, with its masked image inputs."""
        first = [group.rows[0] for group in groups]
        data = _sequences(
            [rows.input_ids[row][: group.prefix_len] for row, group in zip(first, groups, strict=True)],
            [rows.position_ids[row][..., : group.prefix_len] for row, group in zip(first, groups, strict=True)],
            temperature=1.0,  # no log-probs are taken
        )
        tu.assign_non_tensor_stack(data, MULTI_MODAL_INPUTS_KEY, [masked_inputs[row] for row in first])
        return data

    @staticmethod
    def _response_batch(batch: Sequence[int], rows: BatchRows, temperature: Any) -> TensorDict:
        """The response call's micro-batch: per row its last prompt token and its response tokens."""
        start = [rows.prompt_len(row) - 1 for row in batch]
        if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:  # per-row temperatures
            temperature = temperature[list(batch)]
        return _sequences(
            [rows.input_ids[row][s:] for row, s in zip(batch, start, strict=True)],
            [rows.position_ids[row][..., s:] for row, s in zip(batch, start, strict=True)],
            temperature=temperature,
        )

    @staticmethod
    def _catch_up_batch(rows: BatchRows) -> TensorDict:
        """A one-token text call (the first token of row 0): a model call for the FSDP collectives only."""
        return _sequences([rows.input_ids[0][:1]], [rows.position_ids[0][..., :1]], temperature=1.0)


def _new_prompt_groups(
    plan: Sequence[Sequence[int]], group_of: dict[int, int], groups: Sequence[PromptGroup]
) -> list[list[int]]:
    """Per micro-batch, the groups (with a prefix) whose first row is in it: its prompt call's groups, in order."""
    seen: set[int] = set()
    calls: list[list[int]] = []
    for batch in plan:
        calls.append([])
        for row in batch:
            group = group_of[row]
            if group not in seen:
                seen.add(group)
                if groups[group].prefix_len > 0:
                    calls[-1].append(group)
    return calls


def _layout(indices: Sequence[int], groups: Sequence[PromptGroup]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(groups[g].prefix_len for g in indices), tuple(indices)


def _sequences(input_ids: list[torch.Tensor], position_ids: list[torch.Tensor], temperature: Any) -> TensorDict:
    """A micro-batch of jagged sequences in verl's layout, with the engine options of :data:`CALL_OPTIONS`."""
    ragged = 2 if position_ids[0].dim() == 2 else 1
    data = TensorDict(
        {
            "input_ids": torch.nested.as_nested_tensor(input_ids, layout=torch.jagged),
            "position_ids": tu.nested_tensor_from_tensor_list(position_ids, ragged_idx=ragged),
        },
        batch_size=[len(input_ids)],
    )
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        data["temperature"] = temperature
    else:
        tu.assign_non_tensor(data, temperature=temperature)
    tu.assign_non_tensor(data, **CALL_OPTIONS)
    return data


def _calls_to_match_ranks(engine: Any, own_calls: int) -> int:
    """How many more model calls this rank makes so that every data-parallel rank makes as many."""
    group = engine.get_data_parallel_group()
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size(group) == 1:
        return 0
    from verl.utils.device import get_device_id

    most = torch.tensor(own_calls, device=get_device_id())
    torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX, group=group)
    return int(most.item()) - own_calls
