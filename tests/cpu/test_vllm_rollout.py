"""verl's rollout engine, vLLM (the CPU build), sees the images, and the fidelity check catches it when it does not.

Each Qwen2.5-VL engine starts as verl starts it (``load_format=dummy``: random weights), then gets the tiny
model's transformers weights as verl's weight sync gives them (``verl/workers/rollout/vllm_rollout/utils.py``:
``model.load_weights``, then vLLM's ``process_weights_after_loading``). It then scores one fixed answer
after the same prompt with two different images (``prompt_logprobs``), and transformers scores the same tokens.

- With ``mm_device_do_normalize=False`` (what the recipe sets, ``recipe/papo/vllm_checks.py``) vLLM's
  log-probs equal transformers' for both images, and the two images give different log-probs.
- With vLLM's default (``True``: the start-up guard bypassed) the ``visual.input_norm.*`` buffers keep
  their dummy values, vLLM's log-probs part from transformers', and SMOKE's rollout-fidelity check
  (:func:`papo_tools.smoke.checks.check_rollout_fidelity`, fed verl's own Pearson correlation of
  token probabilities) fails naming the cause.

Qwen3.5 (Gated DeltaNet layers, bf16 only on CPU): one engine loads seed 0 from disk, then verl's sync
writes seed 1 and seed 0 over it. The synced weights equal the fresh load exactly (the short-convolution
weight vLLM packs for its CPU kernel included: ``papo_tools.compat.vllm_cpu.repack_on_load``), and the
engine scores the answer as transformers does.

The module builds vLLM engines in this process (vLLM binds threads): it runs in its own process.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from memory_slots import memory_slot
from PIL import Image

from papo_tools.demo.tiny_model import VLLM_SIZES, save_tiny_model
from papo_tools.smoke.checks import MIN_ROLLOUT_ACTOR_CORR, ROLLOUT_CORR_KEY, check_rollout_fidelity

pytestmark = [pytest.mark.own_process, pytest.mark.e2e]

PROMPT = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many shapes are there?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
ANSWER = "There are 3 shapes."
IMAGE_SIDE = 112  # px: 16 merged visual tokens of 28 x 28 px, the tiny processor's maximum


def images() -> dict[str, Image.Image]:
    """Two images that differ everywhere: random noise and a dark square on white."""
    noise = np.random.default_rng(0).integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    square = np.full((IMAGE_SIDE, IMAGE_SIDE, 3), 255, dtype=np.uint8)
    square[20:80, 30:90] = (10, 40, 200)
    return {"noise": Image.fromarray(noise), "square": Image.fromarray(square)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("vllm") / "tiny_qwen2_5_vl", "qwen2_5_vl", seed=0, sizes=VLLM_SIZES)


def transformers_scores_of(model_dir: Path) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Per image: the prompt+answer token ids and the answer tokens' log-probs under transformers (fp32)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    answer_len = len(processor.tokenizer(ANSWER)["input_ids"])
    scores = {}
    for name, image in images().items():
        inputs = processor(text=[PROMPT + ANSWER], images=[image], return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0].float()
        ids = inputs["input_ids"][0]
        log_probs = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[1:, None])[:, 0]
        scores[name] = (ids.tolist(), log_probs[-answer_len:])
    return scores


@pytest.fixture(scope="module")
def transformers_scores(model_dir) -> dict[str, tuple[list[int], torch.Tensor]]:
    return transformers_scores_of(model_dir)


def sync_like_verl(worker, safetensors_path: str) -> int:
    """Runs in vLLM's worker: verl 0.9.1's weight sync (``update_weights_from_ipc``) of a transformers state dict.

    ``model.load_weights`` with transformers names, then vLLM's ``process_weights_after_loading`` once.
    Returns the number of parameters loaded.
    """
    from safetensors.torch import load_file
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    model = worker.model_runner.model
    loaded = model.load_weights(weights=sorted(load_file(safetensors_path).items()))
    process_weights_after_loading(model, worker.model_runner.model_config, torch.device("cpu"))
    return len(loaded)


def engine_weights(worker) -> dict[str, torch.Tensor]:
    """Runs in vLLM's worker: the model's parameters, buffers and packed convolutions' unpacked copies, fp32."""
    from papo_tools.compat.vllm_cpu import UNPACKED_CONV_WEIGHT

    model = worker.model_runner.model
    weights = {name: tensor.detach().float().clone() for name, tensor in model.named_parameters()}
    weights |= {name: tensor.detach().float().clone() for name, tensor in model.named_buffers()}
    for name, module in model.named_modules():
        if hasattr(module, UNPACKED_CONV_WEIGHT):
            weights[f"{name}.{UNPACKED_CONV_WEIGHT}"] = getattr(module, UNPACKED_CONV_WEIGHT).float().clone()
    return weights


def start_engine(model_dir: Path, dtype: str, load_format: str, device_normalize: bool = False):
    """An in-process vLLM engine on CPU sized for the suite; ``collective_rpc`` may ship this module's functions."""
    import cloudpickle
    from vllm import LLM

    # collective_rpc ships functions of this module to vLLM's worker process: cloudpickled by value (the
    # worker cannot import this test module), which vLLM allows only with this switch.
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return LLM(
        model=str(model_dir),
        dtype=dtype,
        load_format=load_format,  # verl's default is dummy: the real weights arrive by weight sync
        enforce_eager=True,
        max_model_len=512,
        max_num_batched_tokens=512,
        kv_cache_memory_bytes=64 * 2**20,  # else the CPU worker reserves 92% of the machine's memory
        seed=0,
        mm_device_do_normalize=device_normalize,
    )


def score_images(llm, answer_len: int) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Per image: vLLM's prompt token ids and the answer tokens' log-probs."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    scores = {}
    for name, image in images().items():
        output = llm.generate([{"prompt": PROMPT + ANSWER, "multi_modal_data": {"image": image}}], params)[0]
        ids = list(output.prompt_token_ids)
        answer = [
            entry[token][0] if isinstance(entry[token], tuple) else entry[token].logprob
            for token, entry in zip(ids[-answer_len:], output.prompt_logprobs[-answer_len:], strict=True)
        ]
        scores[name] = (ids, torch.tensor(answer, dtype=torch.float32))
    return scores


def vllm_scores(model_dir: Path, device_normalize: bool, answer_len: int) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Per image: vLLM's prompt token ids and the answer tokens' log-probs, after a verl-style weight sync."""
    llm = start_engine(model_dir, "float32", "dummy", device_normalize)
    try:
        loaded = llm.collective_rpc(sync_like_verl, args=(str(model_dir / "model.safetensors"),))
        assert loaded[0] > 0, loaded
        return score_images(llm, answer_len)
    finally:
        del llm
        gc.collect()


def fidelity_metrics(rollout: torch.Tensor, actor: torch.Tensor) -> dict[str, float]:
    """verl's rollout-fidelity metrics over the answer tokens (``verl/utils/debug/metrics.py``)."""
    from verl.utils.debug.metrics import pearson_correlation_coefficient

    mask = torch.ones_like(actor, dtype=torch.bool)
    return {
        ROLLOUT_CORR_KEY: pearson_correlation_coefficient(rollout.exp(), actor.exp(), mask),
        "training/rollout_probs_diff_mean": (rollout.exp() - actor.exp()).abs().mean().item(),
    }


@pytest.fixture(scope="module")
def answer_len(model_dir) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(model_dir)(ANSWER)["input_ids"])


@pytest.fixture(scope="module")
def host_normalised(model_dir, answer_len):
    with memory_slot("engine"):
        return vllm_scores(model_dir, device_normalize=False, answer_len=answer_len)


@pytest.fixture(scope="module")
def device_normalised(model_dir, answer_len, host_normalised):  # after the first engine is gone
    with memory_slot("engine"):
        return vllm_scores(model_dir, device_normalize=True, answer_len=answer_len)


def test_vllm_tokenises_the_image_prompt_as_transformers_does(host_normalised, transformers_scores):
    for name, (ids, _) in host_normalised.items():
        assert ids == transformers_scores[name][0], name  # the same visual token count and placement


def test_vllm_scores_the_answer_as_transformers_does_for_each_image(host_normalised, transformers_scores):
    for name, (_, log_probs) in host_normalised.items():
        torch.testing.assert_close(log_probs, transformers_scores[name][1], atol=2e-4, rtol=0)
        assert check_rollout_fidelity(1, fidelity_metrics(log_probs, transformers_scores[name][1])) == []


def test_the_rollout_sees_the_image(host_normalised):
    noise, square = host_normalised["noise"][1], host_normalised["square"][1]
    assert (noise - square).abs().max().item() > 1e-2, (noise, square)


def test_device_normalisation_left_on_fails_the_fidelity_check(device_normalised, transformers_scores):
    failures = []
    for name, (_, log_probs) in device_normalised.items():
        metrics = fidelity_metrics(log_probs, transformers_scores[name][1])
        assert metrics[ROLLOUT_CORR_KEY] < MIN_ROLLOUT_ACTOR_CORR, (name, metrics)
        failures += check_rollout_fidelity(1, metrics)
    assert len(failures) == 2, failures
    assert all("mm_device_do_normalize" in failure for failure in failures), failures


# vLLM (bf16, its CPU Gated DeltaNet kernels) against transformers (fp32) on the tiny Qwen3.5: largest
# answer-token log-prob difference measured 3.6e-3 over both images (Pearson of probabilities 0.99999).
QWEN3_5_LOGPROB_ATOL = 1e-2


@pytest.fixture(scope="module")
def qwen3_5_dirs(tmp_path_factory) -> dict[int, Path]:
    """The tiny Qwen3.5 with two seeds (same config, different weights)."""
    root = tmp_path_factory.mktemp("vllm_qwen3_5")
    return {seed: save_tiny_model(root / f"seed{seed}", "qwen3_5", seed=seed, sizes=VLLM_SIZES) for seed in (0, 1)}


@pytest.fixture(scope="module")
def qwen3_5_engine(qwen3_5_dirs, answer_len, device_normalised) -> dict:  # after the other engines are gone
    """One engine: fresh load of seed 0, then verl's sync of seed 1 and of seed 0; weights after each, then scores."""
    with memory_slot("engine"):
        llm = start_engine(qwen3_5_dirs[0], "bfloat16", "auto")  # vLLM's CPU Gated DeltaNet runs bf16 only
        try:
            run = {"fresh": llm.collective_rpc(engine_weights)[0]}
            for seed in (1, 0):
                loaded = llm.collective_rpc(sync_like_verl, args=(str(qwen3_5_dirs[seed] / "model.safetensors"),))
                assert loaded[0] > 0, loaded
                run[f"synced seed {seed}"] = llm.collective_rpc(engine_weights)[0]
            run["scores"] = score_images(llm, answer_len)
            return run
        finally:
            del llm
            gc.collect()


def test_qwen3_5_weight_sync_writes_the_gated_deltanet_convolution(qwen3_5_engine):
    fresh, seed1 = qwen3_5_engine["fresh"], qwen3_5_engine["synced seed 1"]
    convolutions = [name for name in fresh if name.endswith("linear_attn.conv1d.weight")]
    assert convolutions, sorted(fresh)
    for name in convolutions:
        assert not torch.equal(seed1[name], fresh[name]), name  # seed 1's weights arrived
    # vLLM packs the weight for its C++ kernel where the CPU has AVX-512 BF16 and keeps it unpacked beside it
    unpacked = [name for name in fresh if name.endswith("_cpu_unpacked_conv_weight")]
    assert len(unpacked) == (len(convolutions) if torch.cpu._is_avx512_bf16_supported() else 0)


def test_qwen3_5_synced_weights_equal_a_fresh_load(qwen3_5_engine):
    fresh, synced = qwen3_5_engine["fresh"], qwen3_5_engine["synced seed 0"]
    assert sorted(synced) == sorted(fresh)
    differing = [name for name in fresh if not torch.equal(synced[name], fresh[name])]
    assert differing == []


def test_qwen3_5_scores_the_answer_as_transformers_does_after_a_sync(qwen3_5_engine, qwen3_5_dirs):
    expected = transformers_scores_of(qwen3_5_dirs[0])
    for name, (ids, log_probs) in qwen3_5_engine["scores"].items():
        assert ids == expected[name][0], name
        torch.testing.assert_close(log_probs, expected[name][1], atol=QWEN3_5_LOGPROB_ATOL, rtol=0)
        assert check_rollout_fidelity(1, fidelity_metrics(log_probs, expected[name][1])) == []
