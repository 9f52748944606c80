"""The "hf" rollout server: generation with images, log-probs, suppression, weight sync."""

from __future__ import annotations

import asyncio

import pytest
import torch
from demo_prompts import demo_prompt

from papo_tools.cpu.hf_server import HFRolloutServer, max_new_tokens, vision_placeholder_token_ids

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


def generate(server: HFRolloutServer, prompt_ids, images, **sampling):
    params = {**SAMPLING, **sampling}
    request = server.generate(prompt_ids=prompt_ids, sampling_params=params, request_id="r", image_data=images)
    return asyncio.run(request)


def test_placeholder_ids_are_the_vision_tokens(hf_model_config):
    tokenizer = hf_model_config.tokenizer
    expected = {
        tokenizer.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    assert set(vision_placeholder_token_ids(hf_model_config.hf_config)) == expected
    assert vision_placeholder_token_ids(hf_model_config.hf_config.text_config) == []


def test_token_budget_follows_verl_server_rules():
    assert max_new_tokens({"max_tokens": 5}, prompt_len=10, prompt_length=128, response_length=16) == 5
    assert max_new_tokens({}, prompt_len=10, prompt_length=128, response_length=16) == 16
    assert max_new_tokens({}, prompt_len=140, prompt_length=128, response_length=16) == 4
    assert max_new_tokens({}, prompt_len=200, prompt_length=128, response_length=16) == 1


def test_log_probs_equal_a_teacher_forced_forward(hf_server, hf_model_config, demo_rows):
    """Returned log-probs are what the actor recomputes for the same tokens (temperature 1)."""
    prompt_ids, images = demo_prompt(hf_model_config.processor, demo_rows[0])
    output = generate(hf_server, prompt_ids, images)
    assert 1 <= len(output.token_ids) <= 16 and len(output.log_probs) == len(output.token_ids)
    assert output.stop_reason == "completed"

    vision = hf_server.processor.image_processor(images=images, return_tensors="pt")
    input_ids = torch.tensor([prompt_ids + output.token_ids])
    with torch.no_grad():
        logits = hf_server.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **vision).logits
    response_logits = logits[0, len(prompt_ids) - 1 : -1]
    expected = torch.log_softmax(response_logits.float(), dim=-1).gather(-1, torch.tensor(output.token_ids)[:, None])
    torch.testing.assert_close(torch.tensor(output.log_probs), expected[:, 0], atol=1e-4, rtol=1e-4)


def test_ignore_eos_generates_the_full_budget(hf_server, hf_model_config, demo_rows):
    prompt_ids, images = demo_prompt(hf_model_config.processor, demo_rows[1])
    output = generate(hf_server, prompt_ids, images, ignore_eos=True, max_tokens=24)
    assert len(output.token_ids) == 24


def test_text_only_prompt(hf_server, hf_model_config):
    prompt_ids = hf_model_config.tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    assert len(generate(hf_server, prompt_ids, None, temperature=0).token_ids) >= 1


def rigged_server(hf_model_config, prompt_ids, images, token_id: int, response_length: int) -> HFRolloutServer:
    """A fresh server whose LM head makes ``token_id`` the greedy choice right after ``prompt_ids``."""
    from verl.workers.config import RolloutConfig

    config = RolloutConfig(name="hf", prompt_length=128, response_length=response_length)
    server = HFRolloutServer(config, hf_model_config)
    vision = server.processor.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = server.model(input_ids=torch.tensor([prompt_ids]), output_hidden_states=True, **vision)
        hidden = outputs.hidden_states[-1][0, -1]
        server.model.lm_head.weight.zero_()
        server.model.lm_head.weight[token_id] = 1000 * hidden / hidden.norm()
    return server


def test_vision_placeholders_are_never_generated(hf_model_config, demo_rows):
    """With the LM head rigged to favour <|image_pad|>, plain generate emits it; the server does not."""
    prompt_ids, images = demo_prompt(hf_model_config.processor, demo_rows[0])
    image_pad = hf_model_config.hf_config.image_token_id
    server = rigged_server(hf_model_config, prompt_ids, images, image_pad, response_length=8)

    vision = server.processor.image_processor(images=images, return_tensors="pt")
    plain = server.model.generate(
        input_ids=torch.tensor([prompt_ids]), max_new_tokens=1, do_sample=False, eos_token_id=None, **vision
    )
    assert plain[0, -1].item() == image_pad

    output = generate(server, prompt_ids, images, temperature=0, ignore_eos=True)
    assert len(output.token_ids) == 8 and not set(output.token_ids) & set(server.suppress_token_ids)


def test_update_weights_loads_every_tensor_and_checks_keys(hf_model_config):
    from verl.workers.config import RolloutConfig

    server = HFRolloutServer(RolloutConfig(name="hf", prompt_length=128, response_length=8), hf_model_config)
    new_weights = {name: torch.randn_like(tensor) for name, tensor in server.model.state_dict().items()}
    asyncio.run(server.update_weights(new_weights, global_steps=3))
    for name, tensor in server.model.state_dict().items():
        assert torch.equal(tensor, new_weights[name]), name
    assert server.global_steps == 3

    with pytest.raises(KeyError, match="unexpected"):
        asyncio.run(server.update_weights({**new_weights, "not.a.weight": torch.zeros(1)}))
    partial = {name: torch.zeros_like(tensor) for name, tensor in new_weights.items()}
    partial.pop(next(iter(partial)))
    with pytest.raises(KeyError, match="missing"):
        asyncio.run(server.update_weights(partial))
    for name, tensor in server.model.state_dict().items():  # a rejected sync loads nothing
        assert torch.equal(tensor, new_weights[name]), name


def test_eos_stops_generation_unless_ignored(hf_model_config, demo_rows):
    """With the LM head rigged so <|im_end|> wins the first step, a response is that one token, or the budget."""
    prompt_ids, images = demo_prompt(hf_model_config.processor, demo_rows[0])
    eos = hf_model_config.hf_config.text_config.eos_token_id
    server = rigged_server(hf_model_config, prompt_ids, images, eos, response_length=6)

    assert generate(server, prompt_ids, images, temperature=0).token_ids == [eos]
    forced = generate(server, prompt_ids, images, temperature=0, ignore_eos=True)
    assert len(forced.token_ids) == 6 and forced.token_ids[0] == eos
