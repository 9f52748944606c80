"""Cost of building PAPO's masked images (``I_mask``) for a realistic batch.

The batch: ``--images`` rows (default 64), one image each at the paper's ``max_pixels`` (1003520 =
1280 * 28 * 28): a 1120 x 896 image, grid (1, 64, 80), 5120 ``pixel_values`` rows of 1176 values
(Qwen2.5-VL layout, 24 MB per image in float32). The pixel values come from the real Qwen2-VL
image processor (one processed photo-sized random image, copied per row).

Timed, interleaved, medians:

* ``recipe``: ``MaskedInputBuilder.mask_batch`` (what the PAPO worker calls each step), every row built, with the
  default ``mask_space=pixel_values``, ``mask_ratio=0.6``, ``mask_unit=patch``;
* ``per-patch loop``: a straightforward Python loop over every patch row of the same images,
  blackening the chosen rows one by one (same masks; its output is checked equal to the recipe's);
* ``copy floor``: one ``clone()`` of every image's ``pixel_values``, the memory traffic any
  out-of-place masking needs at least (context, not a goal);
* ``forward``: one no-grad forward of the tiny Qwen2.5-VL (eager attention) over the same rows,
  in micro-batches of ``--micro-batch`` rows (the PAPO masked pass is one such forward);
* ``recipe, n rollouts per prompt`` (context): the same rows, but ``--rollouts`` (5, the paper's
  n) consecutive rows share a prompt uid and hence a mask, as in training;
* ``recipe, image space`` (context): ``mask_space=image``, the authors' order (blacken 14-px cells
  of the raw image, re-run the image processor).

Goals: recipe < 2% of the forward, and >= 50x faster than the per-patch loop.

    .venv/bin/python benchmarks/bench_masking.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

PAPER_MAX_PIXELS = 1280 * 28 * 28
GOAL_SHARE_OF_FORWARD = 0.02
GOAL_LOOP_SPEEDUP = 50.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    parser.add_argument("--images", type=int, default=None, help="rows, one image each (default 64; quick 4)")
    parser.add_argument("--width", type=int, default=None, help="image width px (default 1120; quick 112)")
    parser.add_argument("--height", type=int, default=None, help="image height px (default 896; quick 112)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; quick 2)")
    parser.add_argument("--micro-batch", type=int, default=4, help="rows per forward micro-batch (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rollouts", type=int, default=5, help="rows per prompt uid in the context row (default 5)")
    parser.add_argument("--no-image-space", action="store_true", help="skip the mask_space=image context row")
    args = parser.parse_args(argv)
    args.images = args.images or (4 if args.quick else 64)
    args.width = args.width or (112 if args.quick else 1120)
    args.height = args.height or (112 if args.quick else 896)
    args.repeats = args.repeats or (2 if args.quick else 5)
    return args


def loop_mask(pixel_values, row_mask: list[bool], black):
    """The straightforward way: copy the image's rows, then blacken chosen patch rows one at a time."""
    masked = pixel_values.clone()
    for row, blacken in enumerate(row_mask):
        if blacken:
            masked[row] = black
    return masked


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.configure_threads(args.threads)
    # A CPU benchmark: the CPU backend brings the torchvision-free qwen_vl_utils stand-in that the
    # image-space row needs where torchvision is not installed (it steps aside where it is).
    bc.activate_cpu_backend()

    import torch
    from eager_masks import mask_batch_now
    from tensordict import TensorDict

    torch.set_num_threads(args.threads)
    from verl.utils import tensordict_utils as tu

    from papo_tools.demo.tiny_model import TinyQwenSizes, load_tiny_qwen2_5_vl, save_tiny_qwen2_5_vl
    from recipe.papo.config import PapoConfig
    from recipe.papo.masked_inputs import MaskedInputBuilder
    from recipe.papo.masking import draw_unit_mask, mask_seed, torch_generator

    pixels = args.width * args.height
    with tempfile.TemporaryDirectory(prefix="bench_masking_") as tmp:
        sizes = TinyQwenSizes(min_pixels=28 * 28 * 4, max_pixels=max(pixels, PAPER_MAX_PIXELS))
        model_dir = save_tiny_qwen2_5_vl(Path(tmp) / "tiny", seed=0, sizes=sizes)
        model, _, processor = load_tiny_qwen2_5_vl(model_dir)
    model.eval()

    image = bc.random_image(0, args.width, args.height)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Area?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text += "<think>The shape is a square of side 4.</think> The area is \\boxed{16}.<|im_end|>"
    encoded = processor(text=[text], images=[image], return_tensors="pt")
    pixel_values, grid = encoded["pixel_values"], encoded["image_grid_thw"]
    num_rows, row_width = pixel_values.shape
    seq_len = encoded["input_ids"].shape[1]

    def build(mask_space: str, rollouts: int = 1):
        """The batch as the worker holds it: per-row multi_modal_inputs, prompt uid, raw prompt.

        ``rollouts`` consecutive rows share a prompt uid (and hold equal, separately computed
        pixel values, as verl's agent loop produces them).
        """
        rows = [{"pixel_values": pixel_values.clone(), "image_grid_thw": grid.clone()} for _ in range(args.images)]
        data = TensorDict({"row": torch.arange(args.images)}, batch_size=[args.images])
        tu.assign_non_tensor_stack(data, "multi_modal_inputs", rows)
        tu.assign_non_tensor_stack(data, "uid", [f"prompt-{i // rollouts}" for i in range(args.images)])
        if mask_space == "image":
            tu.assign_non_tensor_stack(data, "raw_prompt", [messages] * args.images)
        return data, rows

    data, rows = build("pixel_values")
    builder = MaskedInputBuilder(PapoConfig(), processor)
    image_builder = MaskedInputBuilder(PapoConfig(mask_space="image"), processor)
    image_data = build("image")[0] if not args.no_image_space else None
    grouped_data = build("pixel_values", rollouts=args.rollouts)[0]
    black = builder.layout.black_row(dtype=pixel_values.dtype)
    step = 7
    # Same draws as the recipe: one generator per prompt uid, one Bernoulli(0.6) per patch row.
    loop_masks = [
        draw_unit_mask(
            num_rows, builder.papo.mask_ratio, torch_generator(mask_seed(builder.papo.mask_seed, step, f"prompt-{i}"))
        ).tolist()
        for i in range(args.images)
    ]

    def run_recipe():
        return mask_batch_now(builder, data, step)

    def run_loop():
        return [loop_mask(row["pixel_values"], mask, black) for row, mask in zip(rows, loop_masks, strict=True)]

    def run_clone():
        return [row["pixel_values"].clone() for row in rows]

    def run_grouped():
        return mask_batch_now(builder, grouped_data, step)

    def run_image_space():
        return mask_batch_now(image_builder, image_data, step)

    micro = args.micro_batch
    input_ids = encoded["input_ids"]

    def run_forward():
        with torch.no_grad():
            for start in range(0, args.images, micro):
                count = min(micro, args.images - start)
                model(
                    input_ids=input_ids.expand(count, -1),
                    attention_mask=torch.ones(count, seq_len, dtype=torch.long),
                    pixel_values=torch.cat([rows[start + i]["pixel_values"] for i in range(count)]),
                    image_grid_thw=grid.repeat(count, 1),
                    use_cache=False,
                )

    # The loop and the recipe must build the same masked rows.
    masked_batch, _ = run_recipe()
    for masked_row, loop_row in zip(tu.get(masked_batch, "multi_modal_inputs"), run_loop(), strict=True):
        assert torch.equal(masked_row["pixel_values"], loop_row), "loop and recipe disagree"
    del masked_batch
    # Rows of one prompt share the masked tensor; it must equal masking each row on its own, and a row
    # whose pixels differ under the same uid must get its own mask.
    grouped, _ = run_grouped()
    grouped_rows = tu.get(grouped, "multi_modal_inputs")
    for index, (inputs, uid) in enumerate(
        zip(tu.get(grouped_data, "multi_modal_inputs"), tu.get(grouped_data, "uid"), strict=True)
    ):
        alone = builder.mask_row(inputs, uid, step)["pixel_values"]
        assert torch.equal(grouped_rows[index]["pixel_values"], alone), "shared mask differs from the row's own"
    if args.rollouts > 1 and args.images > 1:
        assert grouped_rows[0]["pixel_values"] is grouped_rows[1]["pixel_values"], "rollouts of a prompt not shared"
    other = {"pixel_values": pixel_values.clone(), "image_grid_thw": grid.clone()}
    other["pixel_values"][-1, -1] += 1.0
    pair = TensorDict({"row": torch.arange(2)}, batch_size=[2])
    tu.assign_non_tensor_stack(pair, "multi_modal_inputs", [tu.get(grouped_data, "multi_modal_inputs")[0], other])
    tu.assign_non_tensor_stack(pair, "uid", ["prompt-0", "prompt-0"])
    pair_rows = tu.get(mask_batch_now(builder, pair, step)[0], "multi_modal_inputs")
    assert pair_rows[0]["pixel_values"] is not pair_rows[1]["pixel_values"], "differing pixels shared a mask"
    del grouped, grouped_rows, pair

    probes = {
        "recipe: mask_batch, pixel_values space": run_recipe,
        "per-patch Python loop (same output)": run_loop,
        "copy floor: clone of pixel_values": run_clone,
        "no-grad forward of the tiny model": run_forward,
        f"context: recipe, {args.rollouts} rollouts per prompt uid": run_grouped,
    }
    if image_data is not None:
        probes["context: recipe, mask_space=image"] = run_image_space
    names = list(probes)
    times = {name: [] for name in names}
    for name in names:  # warm-up
        probes[name]()
    for repeat in range(args.repeats):
        order = list(names)
        random.Random(repeat).shuffle(order)
        for name in order:
            with bc.Stopwatch() as sw:
                result = probes[name]()
            del result
            times[name].append(sw.seconds)

    med = {name: bc.median(times[name]) for name in names}
    recipe, loop, forward = med[names[0]], med[names[1]], med[names[3]]
    table = [
        [
            name,
            f"{1000 * med[name]:.1f}",
            f"{1000 * med[name] / args.images:.2f}",
            f"{med[name] / recipe:.2f}",
            f"{100 * med[name] / forward:.2f}%",
        ]
        for name in names
    ]
    print()
    print(bc.machine_line())
    print(
        f"batch: {args.images} rows x one {args.width}x{args.height} image = {num_rows} patch rows of {row_width} "
        f"values per image (grid {tuple(grid[0].tolist())}, {num_rows // 4} visual tokens, "
        f"{args.images * pixel_values.numel() * 4 / 2**30:.2f} GiB float32 pixel_values); sequence {seq_len} "
        f"tokens; forward micro-batch {micro}; {args.repeats} interleaved repeats after 1 warm-up, medians"
    )
    print()
    print(bc.format_table(["method", "median ms", "ms / image", "x recipe", "% of forward"], table))
    print()
    share, speedup = recipe / forward, loop / recipe
    verdict_share = "meets" if share < GOAL_SHARE_OF_FORWARD else "misses"
    verdict_loop = "meets" if speedup >= GOAL_LOOP_SPEEDUP else "misses"
    bc.print_ratio(
        "masking",
        f"recipe = {100 * share:.2f}% of one no-grad forward (goal < {100 * GOAL_SHARE_OF_FORWARD:.0f}%: "
        f"{verdict_share}); per-patch loop / recipe = {speedup:.1f}x (goal >= {GOAL_LOOP_SPEEDUP:.0f}x: "
        f"{verdict_loop}); recipe / copy floor = {recipe / med[names[2]]:.2f}x",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
