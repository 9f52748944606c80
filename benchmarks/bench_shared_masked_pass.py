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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Shape:
    """A Qwen2.5-VL's sizes (text and vision), as in its config.json."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie: bool
    vision_depth: int = 32
    vision_hidden: int = 1280
    vision_intermediate: int = 3420
    vision_heads: int = 16


# The released configurations (Qwen/Qwen2.5-VL-7B-Instruct, -3B-Instruct config.json).
REAL = {
    "7b": Shape(3584, 18944, 28, 28, 4, 152064, False),
    "3b": Shape(2048, 11008, 36, 16, 2, 151936, True),
}
# The tiny language model (both proportions) and the vision tower per proportion.
TINY_TEXT = dict(hidden=512, intermediate=2736, layers=2, heads=8, kv_heads=2, vocab=272, tie=False)
TINY_VISION = {"7b": (3, 128, 342, 4), "3b": (9, 128, 342, 4)}  # depth, hidden, intermediate, heads


def tiny_shape(proportions: str) -> Shape:
    depth, hidden, intermediate, heads = TINY_VISION[proportions]
    return Shape(
        **TINY_TEXT, vision_depth=depth, vision_hidden=hidden, vision_intermediate=intermediate, vision_heads=heads
    )


def macs_per_token(shape: Shape) -> tuple[float, float]:
    """``(vision MACs per visual token, language-model MACs per token)`` from the parameter shapes (meta device)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            vocab_size=shape.vocab,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        ),
        vision_config=dict(
            depth=shape.vision_depth,
            hidden_size=shape.vision_hidden,
            intermediate_size=shape.vision_intermediate,
            num_heads=shape.vision_heads,
            out_hidden_size=shape.hidden,
        ),
        tie_word_embeddings=shape.tie,
    )
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


def flop_ratio(shape: Shape, visual: int, prompt: int, responses: list[int]) -> float:
    """Shared / full masked pass of the real model at these token counts, from multiply-accumulates.

    Linear layers: MACs per token; vision tower: per visual token; attention: 2 * head_dim * heads per
    (query, key) pair in each layer, causal pairs only (flash-attention skips masked blocks).
    """
    vision, lm = macs_per_token(shape)
    attention = 2 * shape.hidden * shape.layers

    def causal_pairs(start: int, end: int) -> float:  # queries start..end-1, each sees keys 0..itself
        return sum(range(start + 1, end + 1))

    full = sum(visual * vision + (prompt + r) * lm + attention * causal_pairs(0, prompt + r) for r in responses)
    shared = visual * vision + (prompt - 1) * lm + attention * causal_pairs(0, prompt - 1)
    shared += sum((r + 1) * lm + attention * causal_pairs(prompt - 1, prompt + r) for r in responses)
    return shared / full


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proportions", choices=sorted(REAL), default="7b", help="whose proportions (default 7b)")
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

    from papo_tools.demo.tiny_model import TinyQwenSizes, save_tiny_qwen2_5_vl
    from recipe.papo.batch_keys import COEFFICIENTS_KEY, IMAGE_ROW_KEY, KL_WEIGHT_KEY, MASKED_LOG_PROBS_KEY, STEP_KEY
    from recipe.papo.objective import PapoCoefficients

    tiny = tiny_shape(args.proportions)
    real = REAL[args.proportions]
    rows = args.n
    token_side = 28  # Qwen2.5-VL: one merged visual token per 28 x 28 pixels
    width_tokens = max(1, round((2 * args.visual_tokens) ** 0.5))  # a 1:2 image
    height_tokens = max(1, args.visual_tokens // width_tokens)
    width, height = width_tokens * token_side, height_tokens * token_side
    with tempfile.TemporaryDirectory(prefix="bench_shared_masked_") as tmp:
        sizes = TinyQwenSizes(
            hidden_size=tiny.hidden,
            intermediate_size=tiny.intermediate,
            num_hidden_layers=tiny.layers,
            num_attention_heads=tiny.heads,
            num_key_value_heads=tiny.kv_heads,
            vision_depth=tiny.vision_depth,
            vision_hidden_size=tiny.vision_hidden,
            vision_intermediate_size=tiny.vision_intermediate,
            vision_num_heads=tiny.vision_heads,
            min_pixels=token_side**2 * 4,
            max_pixels=width * height,
        )
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
        actor_cfg = grpo.config.actor
        update_meta = dict(
            calculate_entropy=bool(actor_cfg.calculate_entropy or actor_cfg.entropy_coeff != 0.0),
            distillation_use_topk=False,
            distillation_only=False,
            global_batch_size=rows,
            mini_batch_size=rows,
            epochs=actor_cfg.ppo_epochs,
            seed=actor_cfg.data_loader_seed,
            dataloader_kwargs={"shuffle": actor_cfg.shuffle},
            temperature=1.0,
            compute_loss=True,
        )

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
    tiny_vision, tiny_lm = macs_per_token(tiny)
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
