"""The shared masked pass at the shipped scripts' proportions: masked pass / forward, PAPO / GRPO step.

On the real ``PapoActorRolloutRefWorker`` (verl 0.9.1's FSDP2 engine, the CPU backend, remove-padding
on, bf16 compute, a reference model as in the PAPO-G scripts), one prompt group at the proportions of
``scripts/run_qwen2_5_vl_7b_*.sh`` scaled down: n = 5 rollouts, one image of ``--visual-tokens``
merged tokens and about ``--text-tokens`` text tokens per prompt, responses of about
``--response-tokens`` tokens (80% to 120% of it across the rollouts).

The tiny Qwen2.5-VL (``papo_tools/demo/tiny_model.py``) is sized so that its vision tower costs the
language model what Qwen2.5-VL-7B's (``--proportions 7b``) or -3B's (``3b``) does: the ratio of
multiply-accumulates per visual token in the vision tower (patch embedding, blocks, 1/4 of the
merger) to those per token in the language model (every weight but the input embedding), counted from
the parameter shapes of the real configurations and of the tiny one (printed), and the same ratio in
CPU time as measured in the run (printed).

Probes, interleaved, medians over rounds (this process's CPU clock):

* ``forward``: one plain no-grad forward of the batch (``compute_log_prob`` without entropy);
* ``masked (full)``: ``compute_masked_log_prob`` with ``papo.share_masked_prompt=false`` (the whole
  masked sequence per rollout: what the pass cost before);
* ``masked (shared)``: ``compute_masked_log_prob`` as shipped (each prompt's masked prompt once);
* ``GRPO step``: old log-probs (with entropy) + reference log-probs + update, every PAPO coefficient 0;
* ``PAPO step``: the same + the shared masked pass, PAPO-G 7B's coefficients.

Goals: masked (shared) / forward <= 0.5; PAPO / GRPO within 5% of 1 + masked (shared) / GRPO step.
The run also splits each masked pass's time into the vision tower, the language model's attention
layers and the rest (module hooks), and prints the same ratio estimated from the FLOPs of the real
model at these token counts (flash-attention's causal block skipping assumed).

    .venv/bin/python benchmarks/bench_shared_masked_pass.py [--proportions 7b|3b] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

GOAL_SHARE = 0.5
GOAL_WITHIN_BOUND = 0.05
PROBES = ("forward", "masked (full)", "masked (shared)", "GRPO step", "PAPO step")
PAPO_COEFS = ("papo.kl_prcp_coef=0.02", "papo.entropy_ori_coef=0.05", "papo.entropy_aug_coef=0.05")
GRPO_COEFS = ("papo.kl_prcp_coef=0", "papo.entropy_ori_coef=0", "papo.entropy_aug_coef=0")
SCRIPTS_PATH = (
    "actor_rollout_ref.model.use_remove_padding=True",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.kl_loss_coef=0.01",
)


# The released configurations (Qwen/Qwen2.5-VL-7B-Instruct, -3B-Instruct config.json): text sizes; their
# vision tower is the same (depth 32, hidden 1280, MLP 3420, 16 heads, 2x2 merge to the text width).
REAL_TEXT = {
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    ),
    "3b": dict(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
}
REAL_TIED = {"7b": False, "3b": True}
REAL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16)
# The tiny model: one language model, a vision tower per proportion (papo_tools/demo/tiny_model.py sizes).
TINY_TEXT = dict(
    hidden_size=512, intermediate_size=2736, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2
)
TINY_VISION_DEPTH = {"7b": 3, "3b": 9}
TINY_VISION = dict(vision_hidden_size=128, vision_intermediate_size=342, vision_num_heads=4)


def real_config(proportions: str):
    """The released Qwen2.5-VL configuration of ``proportions`` (``7b`` or ``3b``)."""
    from transformers import Qwen2_5_VLConfig

    text = {**REAL_TEXT[proportions], "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    vision = {**REAL_VISION, "out_hidden_size": text["hidden_size"]}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=REAL_TIED[proportions])


def tiny_sizes(proportions: str, max_pixels: int):
    """The tiny model's sizes for ``proportions`` (images up to ``max_pixels``)."""
    from papo_tools.demo.tiny_model import TinyQwenSizes

    return TinyQwenSizes(
        **TINY_TEXT,
        **TINY_VISION,
        vision_depth=TINY_VISION_DEPTH[proportions],
        min_pixels=28 * 28 * 4,
        max_pixels=max_pixels,
    )


def macs_per_token(config) -> tuple[float, float]:
    """``(vision MACs per visual token, language-model MACs per token)`` of a Qwen2.5-VL config (meta device)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    visual = model.model.visual
    merge = config.vision_config.spatial_merge_size**2
    per_patch = sum(p.numel() for name, p in visual.named_parameters() if not name.startswith("merger"))
    per_patch += sum(p.numel() for p in visual.merger.parameters()) / merge
    text = model.model.language_model
    lm = (
        sum(p.numel() for name, p in text.named_parameters() if "embed_tokens" not in name)
        + model.lm_head.weight.numel()
    )
    return merge * per_patch, lm


def flop_ratio(config, visual: int, prompt: int, responses: list[int]) -> float:
    """Shared / full masked pass of the real model at these token counts, from multiply-accumulates.

    Linear layers: MACs per token; vision tower: per visual token; attention: 2 * head_dim * heads per
    (query, key) pair in each layer, causal pairs only (flash-attention skips masked blocks).
    """
    vision, lm = macs_per_token(config)
    text = config.text_config
    attention = 2 * text.hidden_size * text.num_hidden_layers

    def causal_pairs(start: int, end: int) -> float:  # queries start..end-1, each sees keys 0..itself
        return sum(range(start + 1, end + 1))

    full = sum(visual * vision + (prompt + r) * lm + attention * causal_pairs(0, prompt + r) for r in responses)
    shared = visual * vision + (prompt - 1) * lm + attention * causal_pairs(0, prompt - 1)
    shared += sum((r + 1) * lm + attention * causal_pairs(prompt - 1, prompt + r) for r in responses)
    return shared / full


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proportions", choices=sorted(REAL_TEXT), default="7b", help="whose proportions (default 7b)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    parser.add_argument("--n", type=int, default=5, help="rollouts per prompt (default 5: every shipped script)")
    parser.add_argument("--visual-tokens", type=int, default=None, help="visual tokens per prompt (default 800)")
    parser.add_argument("--text-tokens", type=int, default=None, help="text tokens per prompt (default 100)")
    parser.add_argument("--response-tokens", type=int, default=None, help="mean response tokens (default 500)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 6; quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1; quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.visual_tokens = args.visual_tokens or (16 if quick else 800)
    args.text_tokens = args.text_tokens or (20 if quick else 100)
    args.response_tokens = args.response_tokens or (20 if quick else 500)
    args.repeats = args.repeats or (1 if quick else 6)
    args.warmup = args.warmup if args.warmup is not None else 1
    return args


class ModuleClock:
    """CPU seconds spent inside the vision tower, the text attention layers and the whole actor module."""

    PARTS = ("vision tower", "LM attention layers", "whole model")

    def __init__(self, module):
        inner = module.model
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self._start: dict[int, float] = {}
        self.on = False
        parts = [("vision tower", inner.visual), ("whole model", module)]
        parts += [("LM attention layers", layer.self_attn) for layer in inner.language_model.layers]
        for part, target in parts:
            target.register_forward_pre_hook(self._enter)
            target.register_forward_hook(lambda m, a, o, part=part: self._leave(m, part))

    def _enter(self, module, args) -> None:
        self._start[id(module)] = time.process_time()

    def _leave(self, module, part: str) -> None:
        if self.on:
            self.seconds[part] += time.process_time() - self._start.pop(id(module))

    def measure(self, call) -> dict[str, float]:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self.on = True
        try:
            call()
        finally:
            self.on = False
        parts = dict(self.seconds)
        parts["rest of the LM"] = parts["whole model"] - parts["vision tower"] - parts["LM attention layers"]
        return parts


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.configure_threads(args.threads)
    bc.activate_cpu_backend()

    import torch

    torch.set_num_threads(args.threads)
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import response_from_nested

    from papo_tools.demo.tiny_model import build_tiny_config, build_tiny_tokenizer, save_tiny_qwen2_5_vl
    from recipe.papo.batch_keys import COEFFICIENTS_KEY, IMAGE_ROW_KEY, KL_WEIGHT_KEY, MASKED_LOG_PROBS_KEY, STEP_KEY
    from recipe.papo.objective import PapoCoefficients

    real = real_config(args.proportions)
    rows = args.n
    token_side = 28  # Qwen2.5-VL: one merged visual token per 28 x 28 pixels
    width_tokens = max(1, round((2 * args.visual_tokens) ** 0.5))  # a 1:2 image
    height_tokens = max(1, args.visual_tokens // width_tokens)
    width, height = width_tokens * token_side, height_tokens * token_side
    with tempfile.TemporaryDirectory(prefix="bench_shared_masked_") as tmp:
        sizes = tiny_sizes(args.proportions, max_pixels=width * height)
        model_dir = save_tiny_qwen2_5_vl(Path(tmp) / "tiny", seed=0, sizes=sizes)

        def config(*overrides):
            return bc.compose_worker_config(
                model_dir,
                prompts=1,
                rollout_n=rows,
                mini_batch_prompts=1,
                micro_batch_rows=rows,
                log_prob_micro_batch_rows=rows,
                overrides=(*SCRIPTS_PATH, *overrides),
            )

        grpo = bc.make_worker(config(*GRPO_COEFS))
        papo = bc.make_worker(config(*PAPO_COEFS))
        full = bc.make_worker(config(*PAPO_COEFS, "papo.share_masked_prompt=false"))
        reference = bc.make_reference_worker(config(*GRPO_COEFS))
        if papo.shared_masked_pass is None or full.shared_masked_pass is not None:
            raise SystemExit("the PAPO worker must run the shared pass and the full-pass worker must not")

        processor, tokenizer = grpo.actor.model_config.processor, grpo.actor.model_config.tokenizer
        question = ("Question: what is the area of the shape in the picture? Answer with a number. " * 8)[
            : max(
                1, args.text_tokens - 21
            )  # the chat template adds 21 tokens around it
        ]
        text = "The area is 12. " * (2 * args.response_tokens // 16 + 2)
        lengths = [args.response_tokens * (8 + k) // 10 for k in range(rows)]  # 80% .. 120% of the mean
        image = bc.random_image(0, width, height)
        samples = [([image], "prompt-0", question, text[: length - 1]) for length in lengths]
        base = bc.build_batch(processor, tokenizer, samples)
        visual = int(base["multi_modal_inputs"][0]["image_grid_thw"].prod()) // 4
        prompt = len(base["input_ids"][0]) - len(base["response_mask"][0])
        responses = [len(m) for m in base["response_mask"].unbind()]

        def call_batch(calculate_entropy: bool, step: int):
            data = base.copy()
            tu.assign_non_tensor(
                data, temperature=1.0, calculate_entropy=calculate_entropy, compute_loss=False, **{STEP_KEY: step}
            )
            return data

        # the two passes must agree (bf16: within the rounding of one log-prob, at most a few 1/64)
        shared_lp = papo.compute_masked_log_prob(call_batch(False, 1))[MASKED_LOG_PROBS_KEY]
        full_lp = full.compute_masked_log_prob(call_batch(False, 1))[MASKED_LOG_PROBS_KEY]
        agreement = max((a - b).abs().max().item() for a, b in zip(shared_lp.unbind(), full_lp.unbind(), strict=True))
        if agreement > 0.25:
            raise SystemExit(f"shared and full masked log-probs differ by {agreement}")

        advantages = torch.nested.as_nested_tensor(
            [(1.0 if i % 2 else -1.0) * torch.ones(n, dtype=torch.float32) for i, n in enumerate(responses)],
            layout=torch.jagged,
        )
        update_meta = bc.update_metadata(grpo.config.actor, mini_batch_rows=rows)

        def step(worker, number: int, masked_seconds: list[float]) -> None:
            """One trainer step's worker calls (PapoTrainer's order); the masked pass's seconds appended."""
            old = worker.compute_log_prob(call_batch(True, number))
            train = base.copy()
            train["old_log_probs"] = response_from_nested(old["log_probs"], base["response_mask"]).float()
            ref = reference.compute_ref_log_prob(call_batch(False, number))
            train["ref_log_prob"] = response_from_nested(ref["log_probs"], base["response_mask"]).float()
            train["advantages"] = advantages
            if worker.papo.enabled:
                start = time.process_time()
                masked = worker.compute_masked_log_prob(call_batch(False, number))
                masked_seconds.append(time.process_time() - start)
                train[MASKED_LOG_PROBS_KEY] = masked[MASKED_LOG_PROBS_KEY]
                train[IMAGE_ROW_KEY] = masked[IMAGE_ROW_KEY]
                train[KL_WEIGHT_KEY] = torch.ones(rows)
                coefs = PapoCoefficients(
                    worker.papo.kl_prcp_coef, worker.papo.entropy_ori_coef, worker.papo.entropy_aug_coef
                )
                tu.assign_non_tensor(train, **{COEFFICIENTS_KEY: coefs, STEP_KEY: number})
            tu.assign_non_tensor(train, **update_meta)
            worker.update_actor(train)

        in_step_masked: list[float] = []
        calls = {
            "forward": lambda n: grpo.compute_log_prob(call_batch(False, n)),
            "masked (full)": lambda n: full.compute_masked_log_prob(call_batch(False, n)),
            "masked (shared)": lambda n: papo.compute_masked_log_prob(call_batch(False, n)),
            "GRPO step": lambda n: step(grpo, n, []),
            "PAPO step": lambda n: step(papo, n, in_step_masked),
        }
        times: dict[str, list[float]] = {name: [] for name in PROBES}
        for round_ in range(args.warmup + args.repeats):
            order = PROBES[round_ % len(PROBES) :] + PROBES[: round_ % len(PROBES)]
            for name in order:
                start = time.process_time()
                calls[name](round_ + 1)
                if round_ >= args.warmup:
                    times[name].append(time.process_time() - start)
            if round_ < args.warmup:
                in_step_masked.clear()
            label = "warm-up" if round_ < args.warmup else f"round {round_ - args.warmup + 1}/{args.repeats}"
            print(f"{label} done", flush=True)

        # where each masked pass spends its time (one more call each, hooks on)
        parts = {}
        for name, worker in (("masked (full)", full), ("masked (shared)", papo)):
            clock = ModuleClock(worker.actor.engine.module)
            parts[name] = clock.measure(lambda worker=worker: worker.compute_masked_log_prob(call_batch(False, 99)))
        forward_clock = ModuleClock(grpo.actor.engine.module)
        forward_parts = forward_clock.measure(lambda: grpo.compute_log_prob(call_batch(False, 99)))

    def paired(numerator: str, denominator: str, values=None) -> float:
        ratios = [a / b for a, b in zip(values or times[numerator], times[denominator], strict=True)]
        return bc.median(ratios)

    share = paired("masked (shared)", "forward")
    share_full = paired("masked (full)", "forward")
    ratio = paired("PAPO step", "GRPO step")
    bound = bc.median([1 + m / g for m, g in zip(in_step_masked, times["GRPO step"], strict=True)])
    excess = ratio / bound - 1
    tiny_vision, tiny_lm = macs_per_token(build_tiny_config(build_tiny_tokenizer(), "qwen2_5_vl", sizes))
    real_vision, real_lm = macs_per_token(real)
    vision_time = forward_parts["vision tower"] / (rows * visual)
    lm_time = (forward_parts["whole model"] - forward_parts["vision tower"]) / (prompt * rows + sum(responses))
    estimate = flop_ratio(real, visual, prompt, responses)

    print()
    print(bc.machine_line())
    print(
        f"proportions: Qwen2.5-VL-{args.proportions.upper()}; batch: 1 prompt x n={rows}, one {width}x{height} image "
        f"({visual} visual tokens), prompt {prompt} tokens, responses {min(responses)}-{max(responses)} tokens; "
        "remove-padding, bf16 compute, reference model on; "
        f"{args.repeats} interleaved rounds after {args.warmup} warm-up, CPU clock, medians of per-round ratios"
    )
    print(
        f"vision tower / language model cost per token: Qwen2.5-VL-{args.proportions.upper()} "
        f"{real_vision / real_lm:.3f} (MACs), tiny model {tiny_vision / tiny_lm:.3f} (MACs), "
        f"{vision_time / lm_time:.3f} (CPU time measured in the forward: {1e3 * vision_time:.3f} ms per visual "
        f"token, {1e3 * lm_time:.3f} ms per LM token)"
    )
    print(f"masked log-probs, shared vs full pass: max |difference| {agreement:.4f} (bf16)")
    print()
    table = [[name, f"{1000 * bc.median(times[name]):.1f}"] for name in PROBES]
    print(bc.format_table(["median ms (cpu)", args.proportions], table))
    print()
    print(
        bc.format_table(
            ["seconds in", "forward", "masked (full)", "masked (shared)", "shared / full"],
            [
                [
                    part,
                    f"{forward_parts[part]:.3f}",
                    f"{parts['masked (full)'][part]:.3f}",
                    f"{parts['masked (shared)'][part]:.3f}",
                    f"{parts['masked (shared)'][part] / max(parts['masked (full)'][part], 1e-9):.3f}",
                ]
                for part in ("vision tower", "LM attention layers", "rest of the LM", "whole model")
            ],
        )
    )
    print()
    print(f"masked (full) / forward = {share_full:.3f}; masked (shared) / forward = {share:.3f}")
    print(
        f"Qwen2.5-VL-{args.proportions.upper()} at these token counts, from MACs: shared / full masked pass = "
        f"{estimate:.3f}"
    )
    print(
        f"PAPO / GRPO step = {ratio:.3f}; bound 1 + masked (shared) / GRPO step = {bound:.3f}; "
        f"excess {100 * excess:+.1f}%"
    )
    verdicts = (
        "met" if share <= GOAL_SHARE else "missed",
        "met" if excess <= GOAL_WITHIN_BOUND else "missed",
    )
    bc.print_ratio(
        "shared_masked_pass",
        f"{args.proportions}: masked (shared) / forward = {share:.3f} (goal <= {GOAL_SHARE}: {verdicts[0]}; full pass "
        f"{share_full:.3f}); PAPO/GRPO = {ratio:.3f}, bound {bound:.3f}, {100 * excess:+.1f}% (goal <= "
        f"+{100 * GOAL_WITHIN_BOUND:.0f}%: {verdicts[1]})",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
