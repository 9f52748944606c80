"""Remove-padding on CPU for Qwen3-VL and Qwen3.5: verl's packed path agrees with the padded path.

The real PAPO worker in this process (verl's FSDP2 engine) on each family's tiny model, a batch
with ragged lengths, two image sizes and a text-only row. Compared between
``use_remove_padding=False`` and ``True``: old log-probs, masked log-probs and one update's loss
and gradient, in both ``papo.masked_logprob_mode``s.

What runs. For these families verl 0.9.1 keeps transformers' own attention layers and only
packs the micro-batch into one row of ``total_nnz`` tokens with ``attention_mask=None`` and the
``(4, 1, total_nnz)`` position ids (text channel restarting at 0 per sequence). Under the CPU
overrides' ``attn_implementation=sdpa`` transformers' ``create_causal_mask`` finds the sequence
boundaries in the text position ids and builds a block-diagonal causal mask, and verl hands
Qwen3.5's Gated DeltaNet layers the ``cu_seqlens`` of the pack (its torch fallback then runs the
causal convolution and the delta rule per sequence). No attention input is cast to bf16 on this
path (that cast lives in verl's flash-attn integration, which SDPA does not use), so the paths are
compared in float32 to 1e-5. The bf16 results (verl's default mixed precision) are compared too:
the remove-padding path must be as close to the exact float32 result as the padded path under the
same bf16 cast.
"""

from __future__ import annotations

import papo_inprocess as inprocess
import pytest
import torch

from recipe.papo.objective import PapoCoefficients

# Builds verl workers, whose apply_monkey_patch replaces model class forwards for the rest of the process.
pytestmark = pytest.mark.own_process

FAMILIES = ("qwen3_vl", "qwen3_5")
FP32 = "++actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"
PADDED = "actor_rollout_ref.model.use_remove_padding=False"
RMPAD = "actor_rollout_ref.model.use_remove_padding=True"
FP32_TOLERANCE = 1e-5
NOISE_FACTOR = 1.5
MODES = ("precompute", "recompute")
PAPO_G = PapoCoefficients(0.02, 0.05, 0.05)
ADVANTAGES = [1.0, -1.0, 0.5, -0.5]


SAMPLES = [  # (images, uid, question, response): ragged prompts and responses, 16-px patch images
    ([inprocess.random_image(0, 64)], "a", "How many shapes?", "3 circles"),
    ([], "b", "Say something.", "no image here at all, a longer reply"),
    ([inprocess.random_image(1, 96)], "c", "Count!", "1"),
    ([inprocess.random_image(2, 64)], "d", "How many shapes are in the picture?", "two"),
]


@pytest.fixture(scope="module", params=FAMILIES)
def family_results(request, tmp_path_factory):
    """``(family, {(path, mode): {"old", "masked", "loss", "grad"}})``; padded paths measured first."""
    from papo_tools.demo.tiny_model import save_tiny_model

    inprocess.activate_in_process()
    family = request.param
    model_dir = save_tiny_model(tmp_path_factory.mktemp(f"rmpad_{family}"), family, seed=0)
    measured = {}
    runs = [
        ("padded_fp32", (PADDED, FP32), MODES),
        ("padded_bf16", (PADDED,), ("precompute",)),
        ("rmpad_fp32", (RMPAD, FP32), MODES),
        ("rmpad_bf16", (RMPAD,), ("precompute",)),
    ]
    for name, overrides, modes in runs:
        for mode in modes:
            config = inprocess.compose_config(model_dir, [*overrides, f"papo.masked_logprob_mode={mode}"])
            worker = inprocess.make_worker(config)
            batch = inprocess.worker_batch(worker, SAMPLES, step=3)
            old = inprocess.response_log_probs(worker, batch).values().float()
            masked = inprocess.masked_response_log_probs(worker, batch) if mode == "precompute" else None
            entry = {"old": old, "masked": None if masked is None else masked.values().float()}
            if name.endswith("fp32"):
                entry["loss"], entry["grad"] = inprocess.update_loss_and_gradient(
                    worker,
                    inprocess.worker_batch(worker, SAMPLES, step=3),
                    PAPO_G,
                    ADVANTAGES,
                    micro_batch_size=2,
                    use_remove_padding=name.startswith("rmpad"),
                    calculate_entropy=True,
                )
            measured[(name, mode)] = entry
    return family, measured


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return (a - b).abs().max().item()


@pytest.mark.parametrize("mode", MODES)
def test_float32_log_probs_agree(family_results, mode):
    family, results = family_results
    padded, rmpad = results[("padded_fp32", mode)], results[("rmpad_fp32", mode)]
    error = _max_abs(rmpad["old"], padded["old"])
    print(f"{family} old log-probs ({mode}), fp32 remove-padding vs padded: {error:.3e}")
    assert error < FP32_TOLERANCE
    if mode == "precompute":
        error = _max_abs(rmpad["masked"], padded["masked"])
        print(f"{family} masked log-probs, fp32 remove-padding vs padded: {error:.3e}")
        assert error < FP32_TOLERANCE
        # the masked input changes the image rows: agreement above is not two copies of one forward
        assert _max_abs(padded["masked"], padded["old"]) > 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_float32_update_agrees(family_results, mode):
    family, results = family_results
    padded, rmpad = results[("padded_fp32", mode)], results[("rmpad_fp32", mode)]
    loss_error = _max_abs(rmpad["loss"], padded["loss"])
    grad_error = _max_abs(rmpad["grad"], padded["grad"])
    scale = padded["grad"].abs().max().item()
    print(
        f"{family} update ({mode}), fp32 remove-padding vs padded: loss {loss_error:.3e}, "
        f"gradient {grad_error:.3e} (largest gradient entry {scale:.3e})"
    )
    assert scale > 100 * FP32_TOLERANCE, "gradient too small for the comparison to mean anything"
    assert loss_error < FP32_TOLERANCE and grad_error < FP32_TOLERANCE


def test_bf16_log_probs_within_cast_noise(family_results):
    """Under bf16 mixed precision both paths are as far from the exact (fp32 padded) result."""
    family, results = family_results
    exact = results[("padded_fp32", "precompute")]
    for key in ("old", "masked"):
        padded = _max_abs(results[("padded_bf16", "precompute")][key], exact[key])
        rmpad = _max_abs(results[("rmpad_bf16", "precompute")][key], exact[key])
        print(f"{family} {key} log-probs: padded bf16 vs fp32 {padded:.3e}, remove-padding bf16 vs fp32 {rmpad:.3e}")
        assert padded > 0, "the bf16 cast left the padded path exact; the comparison would be vacuous"
        assert rmpad <= NOISE_FACTOR * padded


@pytest.mark.parametrize(
    "key",
    ["actor_rollout_ref.actor.ulysses_sequence_parallel_size", "actor_rollout_ref.ref.ulysses_sequence_parallel_size"],
)
def test_ulysses_refused_at_start_up_where_cpu_cannot_run_it(family_model_dir, key):
    """SP=2 on the CPU backend: Qwen2.5-VL passes the start-up checks; Qwen3-VL / Qwen3.5 stop, naming the blocker."""
    from recipe.papo.model_families import model_type_of
    from recipe.papo.run_checks import check_papo_run_config

    config = inprocess.compose_config(family_model_dir, [f"{key}=2"])
    model_type = model_type_of(str(family_model_dir))
    if model_type == "qwen2_5_vl":
        check_papo_run_config(config)
        return
    with pytest.raises(ValueError) as error:
        check_papo_run_config(config)
    message = str(error.value)
    assert f"{key}=2" in message and repr(model_type) in message and "_ulysses_flash_attention_forward" in message
    assert ("_build_fla_cp_context" in message) == (model_type == "qwen3_5")
