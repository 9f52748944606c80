"""The shared masked pass against the full one, on the real worker, per family and layout.

The real ``PapoActorRolloutRefWorker`` (verl's FSDP2 engine) on each family's tiny model, one batch of
5 prompts in a shuffled row order: one image, two images, no image, prompts of different lengths,
1 to 3 rollouts per prompt, so that prompt groups straddle the log-prob micro-batches of 2 rows.
``compute_masked_log_prob`` as shipped (``papo.share_masked_prompt=true``: each prompt's masked prompt
once, :mod:`recipe.papo.shared_pass`) is compared with the full pass (the worker with the shared pass
off, the whole masked sequence per rollout).

Bounds (measured on this machine with the batch below, every family and layout):

* float32 (``param_dtype=fp32``: no autocast): at most 4.8e-7 apart in log-prob; asserted <= 1e-5.
  Padded and remove-padding for Qwen3-VL; padded for Qwen2.5-VL, whose remove-padding attention
  (verl's) runs in bf16 only (``tests/cpu/test_remove_padding.py``).
* bf16 (verl's default mixed precision, the scripts' remove-padding path): the shared pass must stay
  within the spread the full pass itself shows between two micro-batch layouts (2 vs 10 rows per
  micro-batch). Measured: Qwen3-VL's full pass moves by one bf16 step of a log-prob (1/32) between the
  layouts and the shared pass is 1/32 from either; Qwen2.5-VL's packed bf16 path gives bitwise equal
  log-probs in every layout here, full or shared (spread 0, difference 0), so there the shared pass
  must be bitwise equal.

Qwen3.5 (its Gated DeltaNet layers carry recurrent and convolution states, not keys/values) runs the
full pass, and the worker's start-up line says so; so do recompute mode, Ulysses sequence parallelism
and ``papo.share_masked_prompt=false``.
"""

from __future__ import annotations

import dataclasses

import papo_inprocess as inprocess
import pytest
from verl.utils import tensordict_utils as tu

from recipe.papo.batch_keys import IMAGE_ROW_KEY, MASKED_LOG_PROBS_KEY
from recipe.papo.compat.shared_prompt import unsupported_reason
from recipe.papo.objective import PapoCoefficients
from recipe.papo.policy_loss import papo_step_metrics, vppo_step_metrics

# Builds verl workers, whose apply_monkey_patch replaces model class forwards for the rest of the process.
pytestmark = pytest.mark.own_process

FP32 = "++actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"
PADDED = "actor_rollout_ref.model.use_remove_padding=False"
RMPAD = "actor_rollout_ref.model.use_remove_padding=True"
FP32_BOUND = 1e-5
# family -> layouts, padded ones first: building a remove-padding worker patches the attention class.
LAYOUTS = {
    "qwen2_5_vl": (("padded_fp32", (PADDED, FP32)), ("rmpad_bf16", (RMPAD,))),
    "qwen3_vl": (("padded_fp32", (PADDED, FP32)), ("rmpad_fp32", (RMPAD, FP32)), ("rmpad_bf16", (RMPAD,))),
}
# Micro-batch rows of the shared pass: groups straddle micro-batches, and the second one's only new prompt
# is the text-only one (a prompt call without images).
MICRO_ROWS = 2
# The full pass's two layouts (verl needs a divisor of the batch; one text-only row alone in a micro-batch
# would fail in verl 0.9.1's Qwen2.5-VL forward, see recipe/papo/compat/shared_prompt.py).
FULL_ROWS, FULL_OTHER_ROWS = 2, 10
# PAPO-G 7B's coefficients and VPPO's three options (docs/vppo.md), so that every papo/* and vppo/* metric is
# made; learning rate 0, so that the update leaves the weights of the next pass as they are.
PAPO_VPPO = (
    "actor_rollout_ref.actor.optim.lr=0.0",
    "papo.kl_prcp_coef=0.02",
    "papo.entropy_ori_coef=0.05",
    "papo.entropy_aug_coef=0.05",
    "papo.vppo_token_fraction=0.4",
    "papo.vppo_beta_min=0.9",
    "papo.vppo_entropy_coef=0.06",
)


def samples(image_side: int):
    """``(images, uid, question, response)`` rows: 5 prompts, 1-3 rollouts each, rows of a prompt not adjacent."""
    one, two = inprocess.random_image(0, image_side), inprocess.random_image(1, 3 * image_side // 2)
    prompts = {
        "a": ([one], "How many shapes?"),
        "b": ([], "Say something."),
        "c": ([two, one], "Count the shapes in both pictures!"),
        "d": ([two], "How many shapes are in the picture, and which colour is the largest one?"),
        "e": ([one], "Count!"),
    }
    rows = [
        ("a", "3 circles"),
        ("b", "no image here at all, a longer reply"),
        ("c", "1"),
        ("a", "four squares and a triangle"),
        ("d", "two"),
        ("b", "ok"),
        ("a", "7"),
        ("e", "several, maybe nine or ten"),
        ("c", "12 things"),
        ("e", "none"),
    ]
    return [(prompts[uid][0], uid, prompts[uid][1], response) for uid, response in rows]


def with_micro_batches(data, rows: int | None = None, tokens: int | None = None):
    """``data`` with the no-grad micro-batch limit ``infer_batch`` reads: ``rows`` per micro-batch, or ``tokens``."""
    data = data.copy()
    if tokens is None:
        tu.assign_non_tensor(data, use_dynamic_bsz=False, micro_batch_size_per_gpu=rows)
    else:
        tu.assign_non_tensor(data, use_dynamic_bsz=True, max_token_len_per_gpu=tokens)
    return data


def masked(worker, data, shared: bool):
    """Masked response log-probs (list of float tensors) with the shared pass on or off."""
    with inprocess.masked_pass_shared(worker, shared):
        output = worker.compute_masked_log_prob(data.copy())
    return [row.float() for row in output[MASKED_LOG_PROBS_KEY].unbind()], output[IMAGE_ROW_KEY]


def max_difference(a, b) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def results(request, tmp_path_factory):
    """``(family, {layout: measurements})``, each layout measured right after its worker is built."""
    from papo_tools.demo.tiny_model import save_tiny_model
    from recipe.papo.model_families import FAMILIES

    inprocess.activate_in_process()
    family = request.param
    model_dir = save_tiny_model(tmp_path_factory.mktemp(f"shared_{family}"), family, seed=0)
    token_side = FAMILIES[family].patch_size * FAMILIES[family].merge_size
    measured = {}
    for name, overrides in LAYOUTS[family]:
        worker = inprocess.make_worker(
            inprocess.compose_config(model_dir, [*overrides, *PAPO_VPPO], prompts=5, rollout_n=2)
        )
        assert worker.shared_masked_pass is not None, unsupported_reason(worker)
        batch = inprocess.worker_batch(worker, samples(2 * token_side), step=3)
        longest = int(batch["input_ids"].offsets().diff().max())
        entry = {
            "shared": masked(worker, with_micro_batches(batch, MICRO_ROWS), shared=True),
            "shared_dynamic": masked(worker, with_micro_batches(batch, tokens=2 * longest), shared=True)[0],
            "full": masked(worker, with_micro_batches(batch, FULL_ROWS), shared=False)[0],
            "full_other": masked(worker, with_micro_batches(batch, FULL_OTHER_ROWS), shared=False)[0],
            "old": [row.float() for row in inprocess.response_log_probs(worker, batch).unbind()],
        }
        if name == "padded_fp32":
            hot = with_micro_batches(batch, MICRO_ROWS)
            tu.assign_non_tensor(hot, temperature=0.7)
            entry["temperature"] = (masked(worker, hot, shared=True)[0], masked(worker, hot, shared=False)[0])
            entry["metrics"] = update_metrics(worker, batch)
            entry["worker"] = worker
        measured[name] = entry
    return family, measured


def update_metrics(worker, batch) -> dict[str, dict[str, float]]:
    """The step's papo/* and vppo/* metrics of one update, with the masked log-probs of each pass."""
    coefficients = PapoCoefficients(0.02, 0.05, 0.05)
    advantages = [(1.0 if i % 2 else -1.0) * (1 + i / 10) for i in range(len(batch))]
    metrics = {}
    for name, shared in (("shared", True), ("full", False)):
        with inprocess.masked_pass_shared(worker, shared):
            prepared = inprocess.with_trainer_fields(worker, batch, advantages)
        step = inprocess.update_actor_metrics(worker, prepared, coefficients, micro_batch_size=5)
        metrics[name] = {**papo_step_metrics(step), **vppo_step_metrics(step), "actor/pg_loss": step["actor/pg_loss"]}
    return metrics


def test_float32_shared_pass_equals_the_full_pass(results):
    family, measured = results
    for name, entry in measured.items():
        if name.endswith("fp32"):
            (shared, has_image), full = entry["shared"], entry["full"]
            assert has_image.tolist() == [True, False, True, True, True, False, True, True, True, True]
            assert max_difference(shared, full) <= FP32_BOUND, (family, name)
            assert max_difference(entry["shared_dynamic"], full) <= FP32_BOUND, (family, name, "dynamic batch size")
            # text-only rows: the masked pass sees the original inputs
            assert max_difference([shared[1], shared[5]], [entry["old"][1], entry["old"][5]]) <= FP32_BOUND


def test_temperature_is_applied_as_the_engine_does(results):
    """Sampling temperature 0.7 (the log-probs of logits / 0.7): shared and full passes agree (fp32)."""
    family, measured = results
    shared, full = measured["padded_fp32"]["temperature"]
    assert max_difference(shared, full) <= FP32_BOUND, family
    assert max_difference(shared, measured["padded_fp32"]["shared"][0]) > 1e-2  # the temperature did apply


def test_masking_still_changes_image_rows(results):
    """The shared pass is not the unmasked forward: image rows' log-probs move, as in the full pass."""
    _, measured = results
    shared, old = measured["padded_fp32"]["shared"][0], measured["padded_fp32"]["old"]
    for row in (0, 2, 3, 4, 6, 7, 8, 9):
        assert (shared[row] - old[row]).abs().max() > 1e-3, row


def test_bf16_shared_pass_is_within_the_full_pass_spread_between_layouts(results):
    family, measured = results
    entry = measured["rmpad_bf16"]
    spread = max_difference(entry["full"], entry["full_other"])  # Qwen2.5-VL: 0 here (bitwise equal layouts)
    assert max_difference(entry["shared"][0], entry["full"]) <= spread, (family, spread)
    assert max_difference(entry["shared_dynamic"], entry["full"]) <= spread, (family, spread)


def test_papo_and_vppo_metrics_are_the_full_pass_ones(results):
    """One update's papo/* and vppo/* metrics (PAPO-G with VPPO) from the shared pass equal the full pass's (fp32),
    as the trainer logs them (``papo_step_metrics``, ``vppo_step_metrics``)."""
    _, measured = results
    metrics = measured["padded_fp32"]["metrics"]
    assert {"papo/kl_prcp", "papo/entropy_aug", "papo/loss", "vppo/kept_frac", "vppo/weight_max"} <= metrics[
        "full"
    ].keys()
    assert metrics["shared"].keys() == metrics["full"].keys()
    for key, value in metrics["full"].items():
        assert metrics["shared"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_start_up_line_says_shared_or_why_not(results, capsys):
    _, measured = results
    worker = measured["padded_fp32"]["worker"]
    assert worker._shared_masked_pass() is not None
    assert "PAPO masked pass: shared" in capsys.readouterr().out
    papo = worker.papo
    try:
        for change, reason in (
            (dict(masked_logprob_mode="recompute"), "papo.masked_logprob_mode=recompute"),
            (dict(share_masked_prompt=False), "papo.share_masked_prompt=false"),
        ):
            worker.papo = dataclasses.replace(
                papo, **change, vppo_token_fraction=None, vppo_beta_min=None, vppo_entropy_coef=0.0
            )
            assert worker._shared_masked_pass() is None
            assert f"PAPO masked pass: full sequence per rollout, not shared: {reason}" in capsys.readouterr().out
    finally:
        worker.papo = papo
    engine_config = worker.actor.engine_config
    engine_config.ulysses_sequence_parallel_size = 2
    try:
        assert "Ulysses sequence parallelism" in unsupported_reason(worker)
    finally:
        engine_config.ulysses_sequence_parallel_size = 1


def test_qwen3_5_runs_the_full_pass_and_says_why(tmp_path_factory, capsys):
    from papo_tools.demo.tiny_model import save_tiny_model

    inprocess.activate_in_process()
    model_dir = save_tiny_model(tmp_path_factory.mktemp("shared_qwen3_5"), "qwen3_5", seed=0)
    worker = inprocess.make_worker(inprocess.compose_config(model_dir, [RMPAD]))
    assert worker.shared_masked_pass is None
    out = capsys.readouterr().out
    assert "PAPO masked pass: full sequence per rollout, not shared: qwen3_5's linear_attention layers" in out
    batch = inprocess.worker_batch(worker, samples(64)[:4], step=3)
    assert len(inprocess.masked_response_log_probs(worker, batch)) == 4
