"""Data prep throughput and peak memory: ``python -m data_prep.virl39k`` vs plain ``datasets``.

For each size (default 1k, 5k, 20k rows) a synthetic source is written in the layout of
``PAPOGalaxy/PAPO_ViRL39K_train`` (columns ``id``, ``images`` = list of ``{bytes, path}``,
``problem`` with one ``<image>`` placeholder, ``answer``) as a local parquet file. Every image is
a distinct ~100 KB PNG (416 x 312, a gradient with noise; 64 base images, each row's copy made
unique by a PNG text chunk so no encoding can share bytes between rows).

Then, each in its own child process (so runs cannot contaminate each other):

* ``ours``: ``python -m data_prep.virl39k --source <src.parquet> --out <dir>`` (``--num-proc 1``);
* ``baseline``: a plain ``datasets`` conversion doing the same work per row:
  ``Dataset.from_parquet`` -> ``.map`` (decode every image to check it, build the verl record
  with the same prompt format) -> ``.to_parquet``, ``num_proc=1``.

Throughput is rows / wall time of the child (start-up and imports included, as a user runs
it); peak memory is the child's maximum resident set (``ru_maxrss`` from ``wait4``; it counts
pages of memory-mapped files, which ``datasets`` uses for its Arrow cache), and its peak
anonymous resident memory (heap only; sampled from ``/proc`` every 50 ms) is shown next to it. The two
runs of one size alternate which goes first. Outputs and the source are deleted after each size.

Goals: our peak memory flat in the number of rows; our throughput >= the baseline's.

    .venv/bin/python benchmarks/bench_data_prep.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

BASE_IMAGES = 64
QUESTION = (
    "<image>In the figure, ABCD is a parallelogram and E is the midpoint of side BC. The segment AE meets the "
    "diagonal BD at F. If the area of triangle BEF is 3, what is the area of the parallelogram ABCD?"
)
FLAT_GROWTH_LIMIT = 1.10  # "flat": peak at the largest size within 10% of the peak at the smallest


# --------------------------------------------------------------------------------------------
# synthetic source
# --------------------------------------------------------------------------------------------


def base_png(seed: int, width: int, height: int) -> bytes:
    """A gradient with 1-bit noise per channel: about 0.8 byte per pixel as PNG."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    shift = seed * 37
    red, green, blue = (x * 255 // width + shift) % 256, (y * 255 // height) % 256, (x + y) * 255 // (width + height)
    base = np.stack([red, green, blue], -1)
    array = (base + rng.integers(0, 2, (height, width, 3))).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def unique_png(png: bytes, tag: str) -> bytes:
    """``png`` with a ``tEXt`` chunk carrying ``tag`` inserted before ``IEND`` (decodes identically)."""
    data = b"row\x00" + tag.encode()
    chunk = len(data).to_bytes(4, "big") + b"tEXt" + data + zlib.crc32(b"tEXt" + data).to_bytes(4, "big")
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + chunk + png[iend:]


def write_source(path: Path, rows: int, width: int, height: int, batch: int = 256) -> float:
    """Write ``rows`` synthetic rows to ``path`` in row groups of ``batch``; returns the mean image bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    schema = pa.schema([("id", pa.string()), ("images", image_type), ("problem", pa.string()), ("answer", pa.string())])
    bases = [base_png(seed, width, height) for seed in range(BASE_IMAGES)]
    total_bytes = 0
    with pq.ParquetWriter(path, schema, use_dictionary=False) as writer:
        for start in range(0, rows, batch):
            ids = [f"virl-{i:06d}" for i in range(start, min(rows, start + batch))]
            images = [
                [{"bytes": unique_png(bases[i % BASE_IMAGES], row_id), "path": None}]
                for i, row_id in zip(range(start, start + len(ids)), ids, strict=True)
            ]
            total_bytes += sum(len(entry[0]["bytes"]) for entry in images)
            table = pa.Table.from_pydict(
                {"id": ids, "images": images, "problem": [QUESTION] * len(ids), "answer": ["24"] * len(ids)},
                schema=schema,
            )
            writer.write_table(table)
    return total_bytes / rows


# --------------------------------------------------------------------------------------------
# the baseline (runs in a child process)
# --------------------------------------------------------------------------------------------


def baseline_child(source: str, out: str, cache: str) -> None:
    """Plain ``datasets``: from_parquet -> map (validate + build the verl record) -> to_parquet."""
    import datasets
    from PIL import Image

    from recipe.papo.prompt import data_source, format_question

    dataset = datasets.Dataset.from_parquet(source, cache_dir=cache)

    def convert(row, index):
        for entry in row["images"]:
            Image.open(io.BytesIO(entry["bytes"])).load()  # the same validity check as ours: full decode
        return {
            "data_source": data_source("virl39k"),
            "prompt": [{"role": "user", "content": format_question(row["problem"])}],
            "images": [{"bytes": entry["bytes"], "path": entry["path"]} for entry in row["images"]],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(row["answer"]).strip()},
            "extra_info": {"split": "train", "index": index, "id": row["id"], "benchmark": "virl39k", "group": None},
        }

    converted = dataset.map(convert, with_indices=True, remove_columns=dataset.column_names)
    converted.to_parquet(out)


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="row counts (default 1000 5000 20000)")
    parser.add_argument("--width", type=int, default=None, help="image width (default 416: ~100 KB PNG)")
    parser.add_argument("--height", type=int, default=None, help="image height (default 312)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of the children (default 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--baseline-child", nargs=3, metavar=("SOURCE", "OUT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = args.sizes or ([40, 80] if args.quick else [1000, 5000, 20000])
    args.width = args.width or (48 if args.quick else 416)
    args.height = args.height or (36 if args.quick else 312)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.baseline_child:
        baseline_child(*args.baseline_child)
        return 0
    bc.configure_threads(args.threads)
    import pyarrow.parquet as pq

    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(bc.REPO)}
    python = sys.executable
    workdir = Path(tempfile.mkdtemp(prefix="bench_data_prep_", dir=args.workdir))
    results = []
    try:
        for index, rows in enumerate(args.sizes):
            source = workdir / f"source_{rows}.parquet"
            with bc.Stopwatch() as sw:
                image_bytes = write_source(source, rows, args.width, args.height)
            print(
                f"{rows} rows: source {source.stat().st_size / 2**20:.0f} MiB, mean image "
                f"{image_bytes / 1000:.0f} KB, written in {sw.seconds:.1f} s",
                flush=True,
            )
            ours_out, base_out, cache = workdir / "ours", workdir / "baseline.parquet", workdir / "hf_cache"
            commands = {
                "ours": [python, "-m", "data_prep.virl39k", "--source", str(source), "--out", str(ours_out)],
                "baseline": [
                    python,
                    str(Path(__file__).resolve()),
                    "--baseline-child",
                    str(source),
                    str(base_out),
                    str(cache),
                ],
            }
            order = ["ours", "baseline"] if index % 2 == 0 else ["baseline", "ours"]
            measured = {}
            for name in order:
                seconds, peak, anon, _ = bc.run_measured(commands[name], env=env, cwd=bc.REPO)
                measured[name] = (seconds, peak, anon)
                written = pq.ParquetFile(ours_out / "virl39k_train.parquet" if name == "ours" else base_out)
                if written.metadata.num_rows != rows:
                    raise SystemExit(f"{name} wrote {written.metadata.num_rows} rows, expected {rows}")
                print(
                    f"  {name:<8} {seconds:7.1f} s  {rows / seconds:7.1f} rows/s  peak {peak / 2**20:7.0f} MiB "
                    f"(anonymous {mib(anon)} MiB)",
                    flush=True,
                )
                shutil.rmtree(ours_out, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
                base_out.unlink(missing_ok=True)
            source.unlink()
            results.append((rows, measured))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = []
    for rows, measured in results:
        (ours_s, ours_peak, ours_anon), (base_s, base_peak, base_anon) = measured["ours"], measured["baseline"]
        table.append(
            [
                f"{rows}",
                f"{ours_s:.1f}",
                f"{rows / ours_s:.1f}",
                f"{base_s:.1f}",
                f"{rows / base_s:.1f}",
                f"{base_s / ours_s:.2f}",
                f"{ours_peak / 2**20:.0f}",
                mib(ours_anon),
                f"{base_peak / 2**20:.0f}",
                mib(base_anon),
            ]
        )
    print()
    print(bc.machine_line(args.threads))
    print(
        f"rows: one {args.width}x{args.height} PNG each (~{image_bytes / 1000:.0f} KB); both sides num_proc=1; "
        "wall time of the child process (start-up included); peak = child's max RSS (ru_maxrss, includes "
        "file-backed pages of memory-mapped files); anon = peak anonymous RSS (heap), sampled every 50 ms"
    )
    print()
    print(
        bc.format_table(
            [
                "rows",
                "ours s",
                "ours rows/s",
                "baseline s",
                "baseline rows/s",
                "throughput ours/baseline",
                "ours peak MiB",
                "ours anon MiB",
                "baseline peak MiB",
                "baseline anon MiB",
            ],
            table,
        )
    )
    print()
    first, last = results[0], results[-1]
    growth = last[1]["ours"][1] / first[1]["ours"][1]
    base_growth = last[1]["baseline"][1] / first[1]["baseline"][1]
    speed = min(m["baseline"][0] / m["ours"][0] for _, m in results)
    flat = "meets" if growth <= FLAT_GROWTH_LIMIT else "misses"
    fast = "meets" if speed >= 1.0 else "misses"
    bc.print_ratio(
        "data_prep",
        f"ours peak {last[0]}/{first[0]} rows = {growth:.2f}x (goal flat, <= {FLAT_GROWTH_LIMIT:.2f}x: {flat}; "
        f"baseline {base_growth:.2f}x); throughput ours/baseline >= {speed:.2f} at every size (goal >= 1: {fast})",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
