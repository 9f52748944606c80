"""Shared helpers of the benchmarks: threads, timing, tables, the in-process CPU worker, batches.

Imported by the benchmark scripts as ``bench_common`` (each script puts its own folder first on
``sys.path``, which ``python benchmarks/<name>.py`` does anyway). Nothing here is a test helper.

Call :func:`configure_threads` before anything imports torch so that ``OMP_NUM_THREADS`` applies.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Printed before the one-line result of every benchmark; the smoke tests look for it.
RATIO_PREFIX = "RATIO"


# --------------------------------------------------------------------------------------------
# environment, timing, output
# --------------------------------------------------------------------------------------------


def configure_threads(threads: int) -> None:
    """Pin intra-op threads (OpenMP / MKL / torch) to ``threads``; call before importing torch."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def machine_line(threads: int | None = None) -> str:
    """One line describing where the numbers came from."""
    parts = [f"{os.cpu_count()} CPUs", platform.machine(), f"Python {platform.python_version()}"]
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads)")
    elif threads is not None:
        parts.append(f"{threads} thread(s)")
    return "machine: " + ", ".join(parts)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (wall clock) and ``sw.cpu_seconds``.

    ``cpu_seconds`` is the CPU time of this process (all its threads, user + system) over the block:
    on a machine shared with other jobs it counts only this process's work, while the wall clock
    also counts the time other processes held the cores.
    """

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()
        return self

    def __exit__(self, *exc_info) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable as plain text too) with right-aligned numeric cells."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("| " + " | ".join(padded) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def print_ratio(name: str, text: str) -> None:
    """The final one-line result: ``RATIO <name>: <text>``."""
    print(f"{RATIO_PREFIX} {name}: {text}", flush=True)


def _rss_anon_bytes(pid: int) -> int | None:
    """The current anonymous resident memory of ``pid`` (Linux ``/proc``), or ``None``."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_measured(
    command: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None, sample_seconds: float = 0.05
):
    """Run ``command`` in a child process; return ``(seconds, peak_rss_bytes, peak_anon_bytes, output)``.

    ``peak_rss_bytes`` is the child's own ``ru_maxrss`` from ``wait4`` (its largest resident set,
    including any descendants it waited for), so runs in separate children never contaminate each
    other. It counts file-backed pages too (memory-mapped files the child touched).
    ``peak_anon_bytes`` is the largest anonymous resident memory of the child process itself
    (heap, not mapped files), sampled from ``/proc`` every ``sample_seconds`` (``None`` off Linux).
    """
    import threading

    start = time.perf_counter()
    process = subprocess.Popen(
        list(command), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak_anon = [None]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(sample_seconds):
            value = _rss_anon_bytes(process.pid)
            if value is not None:
                peak_anon[0] = max(peak_anon[0] or 0, value)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read()
    done.set()
    sampler.join()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}:\n{output[-4000:]}")
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return seconds, peak, peak_anon[0], output


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def random_image(seed: int, width: int, height: int):
    """A uniformly random RGB PIL image (incompressible: PNG size ~ 3 * width * height bytes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------------
# the real PAPO worker in this process, on CPU: shared with tests/worker
# --------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import papo_inprocess  # noqa: E402  (after the thread settings above)

# Re-exported for the benchmark scripts (``bc.activate_cpu_backend()`` etc.).
activate_cpu_backend = papo_inprocess.activate_in_process
build_batch = papo_inprocess.build_batch
make_worker = papo_inprocess.make_worker


def compose_worker_config(
    model_dir: Path,
    *,
    prompts: int,
    rollout_n: int,
    mini_batch_prompts: int,
    micro_batch_rows: int,
    log_prob_micro_batch_rows: int | None = None,
    overrides: Sequence[str] = (),
):
    """``configs/papo_trainer.yaml`` with the CPU overrides, float32 parameters, the given batch sizes, ``overrides``.

    ``micro_batch_rows`` is the update's micro-batch (``ppo_micro_batch_size_per_gpu``);
    ``log_prob_micro_batch_rows`` (default: the same) is the no-grad log-prob micro-batch of the actor
    and the reference model (``log_prob_micro_batch_size_per_gpu``).
    """
    log_prob_rows = log_prob_micro_batch_rows or micro_batch_rows
    return papo_inprocess.compose_config(
        model_dir,
        [
            f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch_prompts}",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch_rows}",
            f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={log_prob_rows}",
            f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={log_prob_rows}",
            *overrides,
        ],
        prompts=prompts,
        rollout_n=rollout_n,
    )


def update_metadata(actor_config, *, mini_batch_rows: int) -> dict[str, Any]:
    """What verl's ``PPOTrainer._update_actor`` adds to the batch before ``update_actor`` (temperature 1).

    Args:
        actor_config: the worker's ``actor_rollout_ref.actor`` config.
        mini_batch_rows: rows per optimiser step (the global mini-batch).
    """
    return dict(
        calculate_entropy=bool(actor_config.calculate_entropy or actor_config.entropy_coeff != 0.0),
        distillation_use_topk=False,
        distillation_only=False,
        global_batch_size=mini_batch_rows,
        mini_batch_size=mini_batch_rows,
        epochs=actor_config.ppo_epochs,
        seed=actor_config.data_loader_seed,
        dataloader_kwargs={"shuffle": actor_config.shuffle},
        temperature=1.0,
        compute_loss=True,
    )


def make_reference_worker(config):
    """An initialised ``PapoActorRolloutRefWorker`` in role ``ref``: verl's reference model (FSDP2, offloaded).

    The worker class and role the trainer colocates for ``use_kl_loss=True``; its
    ``compute_ref_log_prob`` is what verl's trainer calls for ``ref_log_prob``.
    """
    from recipe.papo.worker import PapoActorRolloutRefWorker

    worker = PapoActorRolloutRefWorker(config=config.actor_rollout_ref, role="ref")
    worker.init_model()
    return worker
