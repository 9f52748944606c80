"""Peak memory of the PAPO masked pass at two batch sizes: masked inputs per micro-batch vs per batch.

The call is the worker's ``compute_masked_log_prob`` in ``precompute`` mode (masking + one no-grad
forward of the pre-update policy) on the real ``PapoActorRolloutRefWorker`` (verl 0.9.1's FSDP2
engine, the CPU backend, the tiny Qwen2.5-VL, remove-padding on as in ``scripts/*.sh``), at ``--rows``
and 4x ``--rows`` rows (``--n`` rollouts per prompt, one image per prompt), two ways:

* ``per micro-batch`` (this change): ``compute_masked_log_prob`` as it is, ``mask_batch``'s lazy rows:
  a row's masked ``pixel_values`` are built when the engine reads its micro-batch (and, with
  ``papo.share_masked_prompt`` on, the default, the shared pass of ``recipe/papo/shared_pass.py``: each
  prompt's masked prompt once per micro-batch of whole prompt groups, its keys/values kept until the
  prompt's last row);
* ``whole batch`` (the baseline, the code before this change, reproduced here): ``mask_batch`` of
  the whole batch, then ``infer_batch`` on it, so the masked ``pixel_values`` of every prompt exist
  before the forward starts.

and, as the floor, ``plain forward``: ``compute_log_prob`` (no entropy) on the same rows, the same
forward without masking (what GRPO's old log-prob pass costs).

Memory is measured in this process, interleaved, medians over ``--repeats``:

* ``peak extra RSS``: the resident set's high-water mark during the call (Linux ``VmHWM``, reset
  through ``/proc/self/clear_refs`` just before the call) minus the resident set just before it. The
  allocator is set to hand every block of 64 KiB or more straight back to the system when freed
  (``mallopt(M_MMAP_THRESHOLD)``), so the resident set follows the live tensors;
* ``CPU ms``: this process's CPU time of the same call.

(An earlier column, ``tracemalloc``'s peak of Python allocations in a second call, was dropped: twice
in CI a background thread died of SIGSEGV just after a ``tracemalloc.stop()``, the race between
``stop`` and a thread inside tracemalloc's allocation hook of CPython issue 128679, fixed in 3.12.9 and
3.13.2 but not in 3.11. Each call now runs once.)

Goal: from x to 4x rows, the per-micro-batch pass's peak extra RSS grows by at most the plain
forward's growth (verl's own per-row outputs and bookkeeping, paid by any log-prob pass) plus the size
of the log-probs the call returns (float32, full sequence and response tokens, at 4x rows): the
masking adds nothing that grows with the batch. Its time stays that of the whole-batch pass (ratio
~1: same forward, same masks).

    .venv/bin/python benchmarks/bench_masked_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

WAYS = ("plain forward", "whole batch", "per micro-batch")
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 64 * 1024
MIB = 1024 * 1024


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    parser.add_argument("--rows", type=int, default=None, help="rows of the small batch x (default 8; quick 4)")
    parser.add_argument("--n", type=int, default=None, help="rollouts per prompt (default 4; quick 2)")
    parser.add_argument("--micro-batch", type=int, default=None, help="log-prob micro-batch rows (default 4; quick 2)")
    parser.add_argument("--image-side", type=int, default=None, help="image side in pixels (default 448; quick 112)")
    parser.add_argument("--response-chars", type=int, default=None, help="response length (default 256; quick 16)")
    parser.add_argument("--repeats", type=int, default=None, help="measured repeats per case (default 5; quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rows = args.rows or (4 if quick else 8)
    args.n = args.n or (2 if quick else 4)
    args.micro_batch = args.micro_batch or (2 if quick else 4)
    args.image_side = args.image_side or (112 if quick else 448)
    args.response_chars = args.response_chars or (16 if quick else 256)
    args.repeats = args.repeats or (1 if quick else 5)
    if args.rows % args.n or args.rows % args.micro_batch:
        parser.error("--rows must be a multiple of --n and of --micro-batch")
    return args


def return_large_blocks_to_the_system() -> bool:
    """Make glibc serve blocks >= 64 KiB by ``mmap`` (freed at once), so RSS tracks live memory."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(call) -> tuple[float, int]:
    """Run ``call()`` once; return ``(CPU seconds, peak extra RSS bytes)``. The time is this process's CPU
    time (one intra-op thread): on a shared machine it ignores other jobs' hold on the cores."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:  # resets VmHWM to the current RSS
        clear.write("5")
    before = _status_bytes("VmRSS")
    start = time.process_time()
    result = call()
    seconds = time.process_time() - start
    peak = _status_bytes("VmHWM")
    del result
    return seconds, peak - before


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.configure_threads(args.threads)
    bc.activate_cpu_backend()
    allocator_set = return_large_blocks_to_the_system()

    import torch
    from eager_masks import mask_batch_now

    torch.set_num_threads(args.threads)
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import response_from_nested

    from papo_tools.demo.tiny_model import TinyQwenSizes, save_tiny_qwen2_5_vl
    from recipe.papo.batch_keys import MASKED_LOG_PROBS_KEY, STEP_KEY
    from recipe.papo.worker import masking_step

    sizes_rows = (args.rows, 4 * args.rows)
    side = args.image_side
    with tempfile.TemporaryDirectory(prefix="bench_masked_memory_") as tmp:
        sizes = TinyQwenSizes(min_pixels=28 * 28 * 4, max_pixels=max(side * side, 28 * 28 * 4))
        model_dir = save_tiny_qwen2_5_vl(Path(tmp) / "tiny", seed=0, sizes=sizes)
        config = bc.compose_worker_config(
            model_dir,
            prompts=sizes_rows[1] // args.n,
            rollout_n=args.n,
            mini_batch_prompts=sizes_rows[1] // args.n,
            micro_batch_rows=args.micro_batch,
            log_prob_micro_batch_rows=args.micro_batch,
            overrides=("actor_rollout_ref.model.use_remove_padding=True",),
        )
        worker = bc.make_worker(config)
        assert worker.papo.masked_logprob_mode == "precompute"
        processor, tokenizer = worker.actor.model_config.processor, worker.actor.model_config.tokenizer
        text = "The area is 12. " * (args.response_chars // 16 + 1)
        lengths = [args.response_chars * (args.n + k) // (2 * args.n) for k in range(1, args.n + 1)]

        def batch(rows: int):
            samples = [
                ([bc.random_image(p, side, side)], f"prompt-{p}", f"Question {p}: the area?", text[:length])
                for p in range(rows // args.n)
                for length in lengths
            ]
            data = bc.build_batch(processor, tokenizer, samples)
            tu.assign_non_tensor(data, temperature=1.0, calculate_entropy=False, compute_loss=False, **{STEP_KEY: 7})
            return data

        batches = {rows: batch(rows) for rows in sizes_rows}

        def per_micro_batch(data):
            return worker.compute_masked_log_prob(data.copy())[MASKED_LOG_PROBS_KEY]

        def whole_batch(data):
            """``compute_masked_log_prob`` before this change: mask the batch, then one ``infer_batch``."""
            masked, _ = mask_batch_now(worker.masked_input_builder, data, masking_step(data))
            output = worker.actor.infer_batch(masked)
            return response_from_nested(output["log_probs"], data["response_mask"])

        def plain_forward(data):
            return worker.compute_log_prob(data.copy())["log_probs"]

        calls = {"plain forward": plain_forward, "whole batch": whole_batch, "per micro-batch": per_micro_batch}
        # Same masks, same forward: the two ways must agree bit for bit (the full pass, sharing off).
        shared_pass = worker.shared_masked_pass
        for rows, data in batches.items():
            worker.shared_masked_pass = None
            a, b = whole_batch(data.copy()), per_micro_batch(data.copy())
            worker.shared_masked_pass = shared_pass
            if not all(torch.equal(x, y) for x, y in zip(a.unbind(), b.unbind(), strict=True)):
                raise SystemExit(f"the two ways' masked log-probs differ at {rows} rows")

        cases = [(way, rows) for rows in sizes_rows for way in WAYS]
        results: dict[tuple[str, int], list[tuple[float, int]]] = {case: [] for case in cases}
        for repeat in range(args.repeats):
            order = cases[repeat % len(cases) :] + cases[: repeat % len(cases)]
            for way, rows in order:
                results[(way, rows)].append(measure(lambda call=calls[way], data=batches[rows]: call(data.copy())))
            print(f"round {repeat + 1}/{args.repeats} done", flush=True)

        def med(way: str, rows: int, index: int) -> float:
            return bc.median([r[index] for r in results[(way, rows)]])

        def logprob_bytes(rows: int) -> int:
            data = batches[rows]
            full = sum(len(ids) for ids in data["input_ids"].unbind())
            response = sum(len(mask) for mask in data["response_mask"].unbind())
            return 4 * (full + response)

        one_image = tu.get(batches[sizes_rows[0]], "multi_modal_inputs")[0]["pixel_values"]
        image_bytes = one_image.numel() * one_image.element_size()
        bound = logprob_bytes(sizes_rows[1])
        table = []
        growth = {}
        for way in WAYS:
            for rows in sizes_rows:
                table.append(
                    [
                        way,
                        rows,
                        f"{med(way, rows, 1) / MIB:.2f}",
                        f"{1000 * med(way, rows, 0):.1f}",
                    ]
                )
            growth[way] = med(way, sizes_rows[1], 1) - med(way, sizes_rows[0], 1)
        time_ratio = bc.median(
            [
                results[("per micro-batch", rows)][r][0] / results[("whole batch", rows)][r][0]
                for rows in sizes_rows
                for r in range(args.repeats)
            ]
        )

        print()
        print(bc.machine_line())
        print(
            f"batch: x = {sizes_rows[0]} rows and 4x = {sizes_rows[1]} rows, n = {args.n} rollouts per prompt, one "
            f"{side}x{side} image per prompt ({image_bytes / MIB:.2f} MiB of float32 pixel_values each), responses "
            f"{lengths[0] + 1}-{lengths[-1] + 1} tokens; log-prob micro-batch {args.micro_batch} rows, remove-padding "
            f"on; {args.repeats} interleaved repeats, medians; allocator returns blocks >= 64 KiB at once: "
            f"{allocator_set}"
        )
        print()
        print(
            bc.format_table(
                ["way", "rows", "peak extra RSS MiB", "CPU ms"],
                table,
            )
        )
        print()
        for way in WAYS:
            print(
                f"{way}: peak extra RSS grows by {growth[way] / MIB:+.2f} MiB from {sizes_rows[0]} to {sizes_rows[1]} "
                f"rows ({growth[way] / image_bytes:+.1f} images' pixel_values)"
            )
        print(f"log-probs returned at {sizes_rows[1]} rows (float32, full sequence + response): {bound / MIB:.3f} MiB")
        print(f"time per call, per micro-batch / whole batch (median of paired ratios): {time_ratio:.3f}")
        excess = {way: growth[way] - growth["plain forward"] for way in WAYS}
        verdict = "met" if excess["per micro-batch"] <= bound else "missed"
        bc.print_ratio(
            "masked_memory",
            f"growth of peak extra RSS from x to 4x rows beyond the plain forward's: per micro-batch "
            f"{excess['per micro-batch'] / MIB:+.2f} MiB, whole batch {excess['whole batch'] / MIB:+.2f} MiB "
            f"(goal: per micro-batch <= the log-probs' {bound / MIB:.3f} MiB: {verdict}); time per micro-batch / "
            f"whole batch {time_ratio:.3f}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
