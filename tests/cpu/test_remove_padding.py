"""Remove-padding on CPU: verl's packed path around the CPU backend's attention agrees with the padded path.

The real PAPO worker in this process (verl's FSDP2 engine, the tiny Qwen2.5-VL), a batch with
ragged lengths, two image sizes and a text-only row. Compared: old log-probs, masked log-probs
and one update's loss and gradient, in both ``papo.masked_logprob_mode``s.

Precision. verl's remove-padding attention casts float32 attention inputs to bf16
(``fa_peft_integration_check(..., target_dtype=torch.bfloat16)`` in
``verl/models/transformers/qwen2_vl.py``) and hands the bf16 result to ``o_proj``, so it runs only
under bf16 mixed precision (verl's default and every script's; with float32 parameters
``o_proj`` fails on the dtype mismatch, on any device). An fp32-to-fp32 comparison through verl's
path is therefore impossible; the packed attention itself is checked against the padded one to
1e-5 in float32 in ``test_varlen_attention.py``. Here both paths run in bf16 and each is measured
against the exact (float32, padded) result: the remove-padding path must be as close to it as the
padded path under the same bf16 cast (within a factor 1.5 of bf16 rounding noise).
"""

from __future__ import annotations

import papo_inprocess as inprocess
import pytest
import torch

from recipe.papo.objective import PapoCoefficients

# Builds verl workers, whose apply_monkey_patch replaces model class forwards for the rest of the process.
pytestmark = pytest.mark.own_process

FP32 = "++actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"
PATHS = {  # name -> overrides
    "padded_fp32": ("actor_rollout_ref.model.use_remove_padding=False", FP32),
    "padded_bf16": ("actor_rollout_ref.model.use_remove_padding=False",),
    "rmpad_bf16": ("actor_rollout_ref.model.use_remove_padding=True",),
}
NOISE_FACTOR = 1.5
PAPO_G = PapoCoefficients(0.02, 0.05, 0.05)
ADVANTAGES = [1.0, -1.0, 0.5, -0.5]


SAMPLES = [  # (images, uid, question, response): ragged prompts and responses
    ([inprocess.random_image(0, 56)], "a", "How many shapes?", "3 circles"),
    ([], "b", "Say something.", "no image here at all, a longer reply"),
    ([inprocess.random_image(1, 84)], "c", "Count!", "1"),
    ([inprocess.random_image(2, 56)], "d", "How many shapes are in the picture?", "two"),
]


@pytest.fixture(scope="module")
def results(tiny_model_dir):
    """``{(path, mode): {"old", "masked", "loss", "grad"}}``, each path measured right after its worker is built.

    verl's ``apply_monkey_patch`` replaces the attention *class's* forward when a remove-padding
    model is built, so every padded result is taken before the first remove-padding worker exists.
    """
    inprocess.activate_in_process()
    measured = {}
    for name, overrides in PATHS.items():
        for mode in ("precompute", "recompute"):
            worker = inprocess.make_worker(
                inprocess.compose_config(tiny_model_dir, [*overrides, f"papo.masked_logprob_mode={mode}"])
            )
            batch = inprocess.worker_batch(worker, SAMPLES, step=3)
            loss, grad = inprocess.update_loss_and_gradient(
                worker,
                inprocess.worker_batch(worker, SAMPLES, step=3),
                PAPO_G,
                ADVANTAGES,
                micro_batch_size=2,
                use_remove_padding=name.startswith("rmpad"),
                calculate_entropy=True,
            )
            masked = inprocess.masked_response_log_probs(worker, batch) if mode == "precompute" else None
            measured[(name, mode)] = {
                "old": inprocess.response_log_probs(worker, batch).values().float(),
                "masked": None if masked is None else masked.values().float(),
                "loss": loss,
                "grad": grad,
            }
    return measured


def _errors(values: dict[str, torch.Tensor], relative: bool = False) -> tuple[float, float]:
    """(padded bf16, remove-padding bf16) distance to the padded float32 result (max abs or relative L2)."""
    reference = values["padded_fp32"]

    def distance(x):
        if relative:
            return ((x - reference).norm() / reference.norm()).item()
        return (x - reference).abs().max().item()

    return distance(values["padded_bf16"]), distance(values["rmpad_bf16"])


def _assert_within_cast_noise(what: str, padded: float, rmpad: float) -> None:
    print(f"{what}: padded bf16 vs fp32 {padded:.3e}, remove-padding bf16 vs fp32 {rmpad:.3e}")
    assert padded > 0, f"{what}: the bf16 cast left the padded path exact; the comparison would be vacuous"
    assert rmpad <= NOISE_FACTOR * padded, f"{what}: remove-padding {rmpad:.3e} vs bf16 cast noise {padded:.3e}"


def _of(results, mode: str, key: str) -> dict[str, torch.Tensor]:
    return {name: results[(name, mode)][key] for name in PATHS}


@pytest.mark.parametrize("mode", ["precompute", "recompute"])
def test_old_and_masked_log_probs_agree(results, mode):
    _assert_within_cast_noise(f"old log-probs ({mode})", *_errors(_of(results, mode, "old")))
    if mode == "precompute":
        _assert_within_cast_noise("masked log-probs", *_errors(_of(results, mode, "masked")))


@pytest.mark.parametrize("mode", ["precompute", "recompute"])
def test_update_loss_and_gradient_agree(results, mode):
    _assert_within_cast_noise(f"loss ({mode})", *_errors(_of(results, mode, "loss")))
    _assert_within_cast_noise(f"gradient, relative L2 ({mode})", *_errors(_of(results, mode, "grad"), relative=True))
