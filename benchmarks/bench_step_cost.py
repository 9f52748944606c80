"""Step cost of PAPO vs GRPO on the real worker (verl's FSDP2 engine, tiny Qwen2.5-VL, CPU).

Two configurations (``--path``, one per process: verl patches the attention class for remove-padding):

* ``scripts`` (default): what ``scripts/*.sh`` run: remove-padding on (verl's packed path around
  the CPU backend's attention), the reference model on (``use_kl_loss=True``, ``low_var_kl``, coef
  0.01, clip 0.2 / 0.3: the step includes the reference log-prob pass), the scripts' micro-batches
  (update 4 rows, log-prob 16 rows) capped so that every call runs at least 2 micro-batches.
* ``demo``: padded inputs, no reference model, micro-batches of n rows (the configuration of the
  first measurements in ``benchmarks/README.md``).

Three workers of the same class (``PapoActorRolloutRefWorker``) on the same batch:

* ``GRPO``: every PAPO coefficient 0, so the trainer skips the masked pass and the loss is verl's
  ``ppo_loss`` untouched. Step = old log-probs (+ reference log-probs) + update.
* ``PAPO``: ``masked_logprob_mode=precompute`` (the default). Step = old log-probs + masked
  log-probs (masking + one no-grad forward) + update with the PAPO terms.
* ``PAPO-recompute``: the masked forward runs with gradient inside every update micro-batch.
  Step = old log-probs + has-image call (masking only, no forward) + update with two branches.

Each phase calls the worker method the v1 trainer calls (``compute_log_prob``,
``compute_ref_log_prob`` on a ``ref``-role worker shared by the variants, ``compute_masked_log_prob``,
``update_actor``) with the metadata verl's trainer adds. Repeats are interleaved (rotating the
variant order) and reported as medians. Times are this process's CPU time by default (``--clock
cpu``: one intra-op thread, so it equals the wall time on an idle machine and ignores other jobs on
a shared one; the wall clock is reported too). A fourth probe times one plain no-grad forward
(``compute_log_prob`` without entropy) on the same batch: the ideal PAPO step is the GRPO step plus
exactly that, so ``bound = 1 + forward / GRPO step``.

Each variant's code path is checked on the first repeat (PAPO metrics present or absent, where the
masking runs; on the scripts path also ``kl_loss`` in the update, packed ``(1, total_tokens)`` model
inputs and at least 2 micro-batches per call) and the benchmark fails if a variant does not run the
path it names.

    .venv/bin/python benchmarks/bench_step_cost.py [--path scripts|demo] [--clock cpu|wall] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

GOAL_WITHIN_BOUND = 0.05
VARIANTS = ("GRPO", "PAPO", "PAPO-recompute")
CLOCKS = ("cpu", "wall")
# PAPO-G 7B coefficients (arXiv 2507.06448: gamma 0.02, double entropy 0.05): every PAPO term is computed.
PAPO_COEFS = ("papo.kl_prcp_coef=0.02", "papo.entropy_ori_coef=0.05", "papo.entropy_aug_coef=0.05")
GRPO_COEFS = ("papo.kl_prcp_coef=0", "papo.entropy_ori_coef=0", "papo.entropy_aug_coef=0")
# What differs between the two paths (the GRPO settings of scripts/common.sh for the scripts path).
PATH_OVERRIDES = {
    "scripts": (
        "actor_rollout_ref.model.use_remove_padding=True",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.kl_loss_coef=0.01",
        "actor_rollout_ref.actor.clip_ratio_low=0.2",
        "actor_rollout_ref.actor.clip_ratio_high=0.3",
    ),
    "demo": ("actor_rollout_ref.model.use_remove_padding=False", "actor_rollout_ref.actor.use_kl_loss=False"),
}
# scripts/common.sh: ppo_micro_batch_size_per_gpu=4, log_prob_micro_batch_size_per_gpu=16.
SCRIPTS_MICRO_ROWS, SCRIPTS_LOG_PROB_MICRO_ROWS = 4, 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--path",
        choices=sorted(PATH_OVERRIDES),
        default="scripts",
        help="scripts: remove-padding, reference model, scripts' micro-batches (default); "
        "demo: padded, no reference model",
    )
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="cpu",
        help="cpu: this process's CPU time (default; robust on a shared machine); wall: wall clock",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 15; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed repeats first (default 2; quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default 6; quick 2)")
    parser.add_argument("--n", type=int, default=None, help="rollouts per prompt (default 4; quick 2)")
    parser.add_argument("--image-side", type=int, default=None, help="image side in pixels (default 448; quick 56)")
    parser.add_argument("--response-chars", type=int, default=None, help="response length (default 256; quick 16)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats or (2 if quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.prompts = args.prompts or (2 if quick else 6)
    args.n = args.n or (2 if quick else 4)
    args.image_side = args.image_side or (56 if quick else 448)
    args.response_chars = args.response_chars or (16 if quick else 256)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.configure_threads(args.threads)
    bc.activate_cpu_backend()

    import torch

    torch.set_num_threads(args.threads)
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import response_from_nested

    from papo_tools.demo.tiny_model import TinyQwenSizes, save_tiny_qwen2_5_vl
    from recipe.papo.batch_keys import (
        COEFFICIENTS_KEY,
        IMAGE_ROW_KEY,
        KL_WEIGHT_KEY,
        MASKED_LOG_PROBS_KEY,
        STEP_KEY,
    )
    from recipe.papo.objective import PapoCoefficients
    from recipe.papo.policy_loss import METRIC_PREFIX

    rows = args.prompts * args.n
    # Paper: 3 optimiser steps per rollout step (mini-batch = 1/3 of the prompts) when it divides.
    mini_prompts = args.prompts // 3 if args.prompts % 3 == 0 else args.prompts
    scripts_path = args.path == "scripts"
    if scripts_path:  # the scripts' micro-batches, capped so that every call runs >= 2 of them
        micro_rows = max(1, min(SCRIPTS_MICRO_ROWS, mini_prompts * args.n // 2))
        log_prob_rows = max(1, min(SCRIPTS_LOG_PROB_MICRO_ROWS, rows // 2))
    else:
        micro_rows = log_prob_rows = max(1, min(args.n, mini_prompts * args.n))
    side = args.image_side
    with tempfile.TemporaryDirectory(prefix="bench_step_cost_") as tmp:
        sizes = TinyQwenSizes(min_pixels=28 * 28 * 4, max_pixels=max(side * side, 28 * 28 * 4))
        model_dir = save_tiny_qwen2_5_vl(Path(tmp) / "tiny", seed=0, sizes=sizes)

        def config(*overrides):
            return bc.compose_worker_config(
                model_dir,
                prompts=args.prompts,
                rollout_n=args.n,
                mini_batch_prompts=mini_prompts,
                micro_batch_rows=micro_rows,
                log_prob_micro_batch_rows=log_prob_rows,
                overrides=(*PATH_OVERRIDES[args.path], *overrides),
            )

        workers = {
            "GRPO": bc.make_worker(config(*GRPO_COEFS)),
            "PAPO": bc.make_worker(config(*PAPO_COEFS)),
            "PAPO-recompute": bc.make_worker(config(*PAPO_COEFS, "papo.masked_logprob_mode=recompute")),
        }
        assert not workers["GRPO"].papo.enabled and workers["PAPO"].papo.masked_logprob_mode == "precompute"
        # One reference model for all variants (identical weights); each variant's step calls it.
        reference = bc.make_reference_worker(config(*GRPO_COEFS)) if scripts_path else None

        grpo = workers["GRPO"]
        processor, tokenizer = grpo.actor.model_config.processor, grpo.actor.model_config.tokenizer
        text = "The area is 12. " * (args.response_chars // 16 + 1)
        # Rollouts of a prompt differ in length (as sampled responses do): 50% to 100% of the maximum.
        lengths = [args.response_chars * (args.n + k) // (2 * args.n) for k in range(1, args.n + 1)]
        # Every rollout row carries its own copy of its prompt's image inputs, as verl's agent loop makes them.
        samples = [
            (
                [bc.random_image(p, side, side)],
                f"prompt-{p}",
                f"Question {p}: the area{' of the shape' * (p % 3)}?",
                text[:length],
            )
            for p in range(args.prompts)
            for length in lengths
        ]
        base = bc.build_batch(processor, tokenizer, samples)
        image_tokens = int(base["multi_modal_inputs"][0]["image_grid_thw"].prod()) // 4
        seq_len = sum(len(ids) for ids in base["input_ids"].unbind()) // rows

        # Count masking calls per worker (recompute masks inside the update's forward).
        mask_calls = {}
        for name, worker in workers.items():
            builder = worker.masked_input_builder
            original = builder.mask_batch

            def counting(data, step, _original=original, _name=name, **kwargs):
                mask_calls[_name] += 1
                return _original(data, step, **kwargs)

            builder.mask_batch = counting
            mask_calls[name] = 0

        # Record the batch dimension and token count of every actor model forward: packed inputs
        # (remove-padding) are one (1, total_tokens) row; the number of forwards is the micro-batches.
        forwards: dict[str, list[tuple[int, int]]] = {name: [] for name in workers}
        for name, worker in workers.items():

            def record(module, args_, kwargs, _name=name):
                input_ids = kwargs.get("input_ids", args_[0] if args_ else None)
                forwards[_name].append(tuple(input_ids.shape))

            worker.actor.engine.module.register_forward_pre_hook(record, with_kwargs=True)

        advantages = torch.nested.as_nested_tensor(
            [
                (1.0 if i % 2 else -1.0) * torch.ones(len(m), dtype=torch.float32)
                for i, m in enumerate(base["response_mask"].unbind())
            ],
            layout=torch.jagged,
        )
        update_meta = bc.update_metadata(grpo.config.actor, mini_batch_rows=mini_prompts * args.n)

        def log_prob_call(calculate_entropy: bool, step: int):
            """The batch with the metadata the trainer sets for a no-grad log-prob call."""
            data = base.copy()
            tu.assign_non_tensor(
                data, temperature=1.0, calculate_entropy=calculate_entropy, compute_loss=False, **{STEP_KEY: step}
            )
            return data

        def record(times: dict[str, dict[str, float]], phase: str, sw: bc.Stopwatch | None) -> None:
            """Store a phase's seconds on both clocks (0 for a phase the variant does not run)."""
            times["wall"][phase] = sw.seconds if sw else 0.0
            times["cpu"][phase] = sw.cpu_seconds if sw else 0.0

        def run_step(name: str, step: int, check: bool) -> dict[str, dict[str, float]]:
            """One trainer step's worker calls for variant ``name``; returns ``{clock: {phase: seconds}}``."""
            worker = workers[name]
            times = {clock: {} for clock in CLOCKS}
            with bc.Stopwatch() as sw:
                old = worker.compute_log_prob(log_prob_call(True, step))
            record(times, "old log-prob", sw)
            old_forwards = len(forwards[name])
            train = base.copy()
            train["old_log_probs"] = response_from_nested(old["log_probs"], base["response_mask"]).float()
            if reference is not None:  # PPOTrainer._compute_ref_log_prob
                with bc.Stopwatch() as sw:
                    ref = reference.compute_ref_log_prob(log_prob_call(False, step))
                record(times, "ref log-prob", sw)
                train["ref_log_prob"] = response_from_nested(ref["log_probs"], base["response_mask"]).float()
            else:
                record(times, "ref log-prob", None)
            train["advantages"] = advantages
            if worker.papo.enabled:  # what PapoTrainer._compute_old_log_prob / _update_actor add
                with bc.Stopwatch() as sw:
                    masked = worker.compute_masked_log_prob(log_prob_call(False, step))
                record(times, "masked log-prob", sw)
                if MASKED_LOG_PROBS_KEY in masked.keys():
                    train[MASKED_LOG_PROBS_KEY] = masked[MASKED_LOG_PROBS_KEY]
                train[IMAGE_ROW_KEY] = masked[IMAGE_ROW_KEY]
                train[KL_WEIGHT_KEY] = torch.ones(rows)
                coefs = PapoCoefficients(
                    worker.papo.kl_prcp_coef, worker.papo.entropy_ori_coef, worker.papo.entropy_aug_coef
                )
                tu.assign_non_tensor(train, **{COEFFICIENTS_KEY: coefs, STEP_KEY: step})
            else:
                record(times, "masked log-prob", None)
            tu.assign_non_tensor(train, **update_meta)
            calls_before = mask_calls[name]
            forwards_before_update = len(forwards[name])
            with bc.Stopwatch() as sw:
                output = worker.update_actor(train)
            record(times, "update", sw)
            for clock_times in times.values():
                clock_times["step"] = sum(clock_times.values())
            if check:
                check_path(
                    name,
                    masked if worker.papo.enabled else None,
                    output["metrics"],
                    mask_calls[name] - calls_before,
                    forwards[name][:old_forwards],
                    forwards[name][forwards_before_update:],
                )
            return times

        def check_path(name, masked_output, metrics, update_mask_calls, old_shapes, update_shapes):
            """Fail unless variant ``name`` ran the code path it names (and the ``--path`` configuration)."""
            has_papo_metrics = any(key.startswith(METRIC_PREFIX) for key in metrics)  # the PAPO loss ran
            if name == "GRPO":
                ok = not has_papo_metrics and mask_calls[name] == 0
            elif name == "PAPO":
                ok = has_papo_metrics and MASKED_LOG_PROBS_KEY in masked_output.keys() and update_mask_calls == 0
            else:
                ok = has_papo_metrics and MASKED_LOG_PROBS_KEY not in masked_output.keys() and update_mask_calls > 0
            has_kl_loss = any(key.endswith("kl_loss") for key in metrics)
            packed = all(shape[0] == 1 for shape in old_shapes + update_shapes)
            optimizer_steps = args.prompts // mini_prompts
            micro_per_call = (len(old_shapes), len(update_shapes) // optimizer_steps)
            if name == "PAPO-recompute":  # the masked forward runs inside every update micro-batch
                micro_per_call = (micro_per_call[0], micro_per_call[1] // 2)
            if scripts_path:
                ok = ok and has_kl_loss and packed and min(micro_per_call) >= 2
            else:
                ok = ok and not has_kl_loss and not packed
            summary = (
                f"PAPO loss terms: {has_papo_metrics}, masking calls inside the update: {update_mask_calls}, "
                f"kl_loss: {has_kl_loss}, packed (remove-padding) inputs: {packed}, micro-batches per "
                f"old log-prob / per optimiser step: {micro_per_call[0]} / {micro_per_call[1]}"
            )
            if not ok:
                raise SystemExit(f"{name} did not run the {args.path} path: {summary}")
            print(f"path check {name}: ok ({summary})", flush=True)

        def run_forward(step: int) -> dict[str, dict[str, float]]:
            times = {clock: {} for clock in CLOCKS}
            with bc.Stopwatch() as sw:
                grpo.compute_log_prob(log_prob_call(False, step))
            record(times, "forward", sw)
            return times

        probes = [*VARIANTS, "forward"]
        measured: dict[str, dict[str, list[dict[str, float]]]] = {
            clock: {name: [] for name in probes} for clock in CLOCKS
        }
        for repeat in range(args.warmup + args.repeats):
            order = probes[repeat % len(probes) :] + probes[: repeat % len(probes)]
            for name in order:
                step = repeat + 1
                times = run_forward(step) if name == "forward" else run_step(name, step, check=repeat == 0)
                if repeat >= args.warmup:
                    for clock in CLOCKS:
                        measured[clock][name].append(times[clock])
            label = "warm-up" if repeat < args.warmup else f"round {repeat - args.warmup + 1}/{args.repeats}"
            print(f"{label} done", flush=True)

        results = measured[args.clock]
        other_clock = next(clock for clock in CLOCKS if clock != args.clock)

        def med(name: str, phase: str) -> float:
            return bc.median([t[phase] for t in results[name]])

        def paired(function, clock: str = args.clock) -> float:
            """Median over rounds of a ratio of times measured in the same round (drift cancels)."""
            return bc.median([function(*(measured[clock][name][r] for name in probes)) for r in range(args.repeats)])

        def spread(function, clock: str = args.clock) -> str:
            """Quartiles and range over rounds of a per-round quantity, e.g. '[+1.0%, +3.0%] (-2.0%..+6.0%)'."""
            values = sorted(function(*(measured[clock][name][r] for name in probes)) for r in range(args.repeats))
            q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
            return f"[{100 * q1:+.1f}%, {100 * q3:+.1f}%] ({100 * values[0]:+.1f}%..{100 * values[-1]:+.1f}%)"

        ratio = paired(lambda grpo_t, papo_t, rec_t, fwd_t: papo_t["step"] / grpo_t["step"])
        bound = paired(lambda grpo_t, papo_t, rec_t, fwd_t: 1 + fwd_t["forward"] / grpo_t["step"])

        def excess_over_bound(g, p, r, f) -> float:
            return (p["step"] / g["step"]) / (1 + f["forward"] / g["step"]) - 1

        excess = paired(excess_over_bound)
        ratio_recompute = paired(lambda grpo_t, papo_t, rec_t, fwd_t: rec_t["step"] / grpo_t["step"])
        bound_recompute = paired(lambda g, p, r, f: 1 + g["update"] / g["step"])
        masked_vs_forward = paired(lambda g, p, r, f: p["masked log-prob"] / f["forward"])
        update_papo = paired(lambda g, p, r, f: p["update"] / g["update"])
        update_recompute = paired(lambda g, p, r, f: r["update"] / g["update"])

        phases = ("old log-prob", "ref log-prob", "masked log-prob", "update", "step")
        table = [[phase, *(f"{1000 * med(name, phase):.1f}" for name in VARIANTS)] for phase in phases]
        table.append(["step / GRPO step (paired)", "1.000", f"{ratio:.3f}", f"{ratio_recompute:.3f}"])
        table.append(["update / GRPO update (paired)", "1.000", f"{update_papo:.3f}", f"{update_recompute:.3f}"])
        forward = med("forward", "forward")

        print()
        print(bc.machine_line())
        settings = (
            "remove-padding on, reference model on (low_var_kl 0.01)"
            if scripts_path
            else "padded inputs, no reference model"
        )
        print(
            f"path: {args.path} ({settings}); update micro-batch {micro_rows} rows, log-prob micro-batch "
            f"{log_prob_rows} rows"
        )
        print(
            f"batch: {args.prompts} prompts x n={args.n} = {rows} rows, one {side}x{side} image each "
            f"({image_tokens} visual tokens), responses {lengths[0] + 1}-{lengths[-1] + 1} tokens, mean sequence "
            f"{seq_len} tokens; {args.prompts // mini_prompts} optimiser step(s) per step; float32 parameters, "
            f"bf16 compute; {args.repeats} interleaved repeats after {args.warmup} warm-up; times "
            f"({args.clock} clock) are medians, ratios are medians of per-round ratios"
        )
        print()
        print(bc.format_table([f"median ms ({args.clock})", *VARIANTS], table))
        print()
        print(
            f"one no-grad forward (no entropy) on the same batch: {1000 * forward:.1f} ms; "
            f"bound 1 + forward / GRPO step = {bound:.3f}"
        )
        print(
            f"masked log-prob call / no-grad forward = {masked_vs_forward:.3f} (masking + bookkeeping on top "
            "of the forward)"
        )
        print(
            f"recompute: ideal 1 + GRPO update / GRPO step = {bound_recompute:.3f} (one more forward+backward "
            f"per micro-batch), measured {ratio_recompute:.3f}"
        )
        print(
            f"PAPO excess over the bound per round: median {100 * excess:+.1f}%, quartiles and range "
            f"{spread(excess_over_bound)}"
        )
        print(
            f"on the {other_clock} clock: "
            f"PAPO/GRPO = {paired(lambda g, p, r, f: p['step'] / g['step'], other_clock):.3f}, "
            f"PAPO excess over the bound {100 * paired(excess_over_bound, other_clock):+.1f}%, quartiles and range "
            f"{spread(excess_over_bound, other_clock)}"
        )
        verdict = "meets" if excess <= GOAL_WITHIN_BOUND else "misses"
        bc.print_ratio(
            "step_cost",
            f"PAPO/GRPO = {ratio:.3f} ({args.clock} clock), bound 1 + forward share = {bound:.3f}, "
            f"PAPO is {100 * excess:+.1f}% vs "
            f"the bound (goal <= +{100 * GOAL_WITHIN_BOUND:.0f}%: {verdict}); PAPO-recompute/GRPO = "
            f"{ratio_recompute:.3f}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
