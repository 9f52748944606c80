"""A token-in/token-out rollout server running Hugging Face ``generate`` on CPU.

Plugs into verl 0.9.1's server-mode rollout (``verl/workers/rollout/llm_server.py``,
``verl/workers/rollout/replica.py``): ``LLMServerClient.generate`` calls
``server.generate.remote(request_id=, prompt_ids=, sampling_params=, image_data=, video_data=, ...)``
on the handle a ``RolloutReplica`` exposes and expects a ``TokenOutput``; the replica and the
checkpoint manager call ``sleep``/``wake_up``/``abort_all_requests``/``resume_generation``/
``clear_kv_cache``/... on every server. This class answers all of them; it is wrapped in
``ray.remote`` by :mod:`papo_tools.cpu.hf_replica` and fed weights by
:mod:`papo_tools.cpu.hf_adapter`.

What it does, per request: the agent loop sends prompt ids that already contain one
``<|image_pad|>`` per merged visual token plus the raw images; the server runs the model's image
processor on the images (same processor, same kwargs, hence the same grid), calls ``generate`` with
the vision placeholder tokens suppressed, and returns the new token ids with their log-probs.
Requests are served one at a time (no batching, no KV cache between requests); sleep/wake and
abort are no-ops because nothing is held on a device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import PretrainedConfig
from verl.workers.rollout.replica import TokenOutput

if TYPE_CHECKING:
    from verl.workers.config import HFModelConfig, RolloutConfig

# Config attributes holding the ids of tokens that only the processor may place in a sequence.
# A response containing one breaks ``get_rope_index`` (it would be read as an image/video span).
VISION_PLACEHOLDER_ATTRS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def vision_placeholder_token_ids(hf_config: PretrainedConfig) -> list[int]:
    """Ids of the vision placeholder tokens of a VLM config (empty for a text-only model)."""
    ids = {getattr(hf_config, attr, None) for attr in VISION_PLACEHOLDER_ATTRS}
    return sorted(token_id for token_id in ids if isinstance(token_id, int))


def max_new_tokens(sampling_params: dict[str, Any], prompt_len: int, prompt_length: int, response_length: int) -> int:
    """Token budget of one request, as verl's vLLM server computes it (at least 1)."""
    budget = sampling_params.get("max_tokens", sampling_params.get("max_new_tokens"))
    if budget is None:
        budget = min(response_length, prompt_length + response_length - prompt_len)
    return max(1, int(budget))


def sampled_log_probs(logits: tuple[torch.Tensor, ...], token_ids: torch.Tensor, temperature: float) -> list[float]:
    """Log-probs of ``token_ids`` under ``softmax(logits / temperature)`` (raw logits at temperature 0).

    This is the full-vocabulary distribution verl's actor recomputes as ``old_log_probs``; token
    suppression and top-k/top-p only shape sampling.
    """
    scale = temperature if temperature > 0 else 1.0
    steps = torch.stack([step[0] for step in logits]).float() / scale  # (new_tokens, vocab)
    log_probs = torch.log_softmax(steps, dim=-1)
    return log_probs.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1).tolist()


class HFRolloutServer:
    """Ray actor body: one HF model on CPU serving verl's token-in/token-out ``generate``."""

    def __init__(self, config, model_config) -> None:
        """``config``/``model_config``: the rollout and model configs (dataclasses or their DictConfigs)."""
        from verl.utils.config import omega_conf_to_dataclass
        from verl.utils.model import get_hf_auto_model_class

        self.config: RolloutConfig = omega_conf_to_dataclass(config)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config)
        self.processor = self.model_config.processor
        hf_config = self.model_config.hf_config
        auto_class = get_hf_auto_model_class(hf_config=hf_config)
        self.model = auto_class.from_pretrained(
            self.model_config.local_path,
            config=hf_config,
            dtype=torch.float32,
            trust_remote_code=self.model_config.trust_remote_code,
        ).eval()
        self.suppress_token_ids = vision_placeholder_token_ids(hf_config)
        generation_config = self.model.generation_config
        self.eos_token_id = generation_config.eos_token_id
        self.pad_token_id = generation_config.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.model_config.tokenizer.pad_token_id
        self.global_steps: int | None = None

    # ------------------------------------------------------------------ generation
    def _vision_inputs(self, image_data: list | None, mm_processor_kwargs: dict | None) -> dict[str, Any]:
        if not image_data:
            return {}
        if self.processor is None:
            raise ValueError("image_data was sent to a rollout server whose model has no processor")
        kwargs = mm_processor_kwargs or {}
        return dict(self.processor.image_processor(images=image_data, return_tensors="pt", **kwargs))

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Sample one response for ``prompt_ids`` (token ids in, token ids + log-probs out)."""
        if video_data or audio_data:
            raise NotImplementedError("the CPU 'hf' rollout serves text and images only")
        temperature = float(sampling_params.get("temperature", 1.0))
        do_sample = temperature > 0
        top_k = int(sampling_params.get("top_k", -1))
        generate_kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens(
                sampling_params, len(prompt_ids), self.config.prompt_length, self.config.response_length
            ),
            do_sample=do_sample,
            repetition_penalty=float(sampling_params.get("repetition_penalty", 1.0)),
            suppress_tokens=self.suppress_token_ids or None,
            pad_token_id=self.pad_token_id,
            eos_token_id=None if sampling_params.get("ignore_eos", self.config.ignore_eos) else self.eos_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        if do_sample:
            generate_kwargs.update(
                temperature=temperature,
                top_p=float(sampling_params.get("top_p", 1.0)),
                top_k=max(top_k, 0),  # 0 disables top-k (None would mean HF's default of 50)
            )
        input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                **self._vision_inputs(image_data, mm_processor_kwargs),
                **generate_kwargs,
            )
        new_tokens = output.sequences[0, input_ids.shape[1] :]
        log_probs = sampled_log_probs(output.logits, new_tokens, temperature)
        return TokenOutput(
            token_ids=new_tokens.tolist(),
            log_probs=log_probs if sampling_params.get("logprobs", True) else None,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={"global_steps": self.global_steps},
        )

    # ------------------------------------------------------------------ weights
    async def update_weights(self, weights: dict[str, torch.Tensor], global_steps: int | None = None) -> None:
        """Load a full (HF-named) state dict sent by the trainer; every key must match."""
        expected = self.model.state_dict().keys()
        missing, unexpected = sorted(expected - weights.keys()), sorted(weights.keys() - expected)
        if missing or unexpected:  # checked before loading: a failed sync leaves the weights untouched
            raise KeyError(f"weight sync mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
        self.model.load_state_dict(weights, strict=True)
        if global_steps is not None:
            self.global_steps = global_steps

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # ------------------------------------------------------------------ no-op life cycle
    # Nothing lives on a device, so there is no memory to release or restore, and requests are
    # served synchronously, so there is nothing in flight to abort.
    async def sleep(self) -> None:
        return None

    async def wake_up(self, tags: list[str] | None = None) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False, **kwargs: Any) -> dict[str, Any]:
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str) -> dict[str, Any]:
        return {"aborted": False, "request_id": request_id}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None
