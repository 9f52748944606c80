"""Shared helpers of the benchmarks: threads, timing, tables, the in-process CPU worker, batches.

Imported by the benchmark scripts as ``bench_common`` (each script puts its own folder first on
``sys.path``, which ``python benchmarks/<name>.py`` does anyway). Nothing here is a test helper.

Call :func:`configure_threads` before anything imports torch so that ``OMP_NUM_THREADS`` applies.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"

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
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        self.seconds = time.perf_counter() - self.start


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


def run_measured(command: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                 sample_seconds: float = 0.05):
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
# the real PAPO worker in this process, on CPU
# --------------------------------------------------------------------------------------------


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def activate_cpu_backend() -> None:
    """Switch the project's CPU backend on with a world-size-1 gloo environment (idempotent)."""
    os.environ.update(
        VERL_PLATFORM="cpu", WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
    )
    os.environ.setdefault("MASTER_PORT", _free_port())
    import recipe.papo.cpu as cpu_backend

    cpu_backend.activate()


def compose_worker_config(model_dir: Path, *, prompts: int, rollout_n: int, mini_batch_prompts: int,
                          micro_batch_rows: int, overrides: Sequence[str] = ()):
    """``configs/papo_trainer.yaml`` with the CPU overrides, float32, the given batch sizes, ``overrides``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from recipe.papo.cpu.launch import cpu_overrides

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(
            "papo_trainer",
            overrides=[
                *cpu_overrides(model_dir, "unused.parquet", "unused.parquet", batch_size=prompts, rollout_n=rollout_n),
                "actor_rollout_ref.actor.fsdp_config.dtype=float32",
                f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch_prompts}",
                f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch_rows}",
                f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch_rows}",
                *overrides,
            ],
        )
    OmegaConf.resolve(config)
    return config


def make_worker(config):
    """An initialised ``PapoActorRolloutRefWorker`` (role ``actor``) for a composed config."""
    from recipe.papo.worker import PapoActorRolloutRefWorker

    worker = PapoActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    return worker


def build_batch(processor, tokenizer, samples):
    """A batch in the v1 trainer's layout from ``(images, uid, question, response_text)`` samples.

    ``multi_modal_inputs`` and mRoPE ``position_ids`` come from verl's own agent-loop code and the
    rows are stacked with verl's ``list_of_dict_to_tensordict``: what TransferQueue holds.
    """
    import torch

    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    agent_loop = SimpleNamespace(
        processor=processor, tokenizer=tokenizer, _get_mm_processor_kwargs=lambda audios=None: {}
    )
    rows = []
    for images, uid, question, response in samples:
        content = [*({"type": "image", "image": image} for image in images), {"type": "text", "text": question}]
        messages = [{"role": "user", "content": content if images else question}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = processor(text=[text], images=images or None, return_tensors="pt")["input_ids"][0]
        response_ids = torch.tensor(tokenizer.encode(response) + [tokenizer.eos_token_id])
        input_ids = torch.cat([prompt_ids, response_ids])
        output = SimpleNamespace(multi_modal_data={"images": images} if images else {}, mm_processor_kwargs=None)
        inputs = AgentLoopWorker._compute_multi_modal_inputs(agent_loop, output, input_ids)
        ones = torch.ones_like(input_ids)
        position_ids = AgentLoopWorker._compute_position_ids(agent_loop, input_ids[None], ones[None], inputs)
        rows.append(
            dict(
                prompts=prompt_ids, responses=response_ids, response_mask=torch.ones_like(response_ids),
                loss_mask=torch.ones_like(response_ids), input_ids=input_ids, attention_mask=ones,
                position_ids=position_ids.squeeze(0), multi_modal_inputs=inputs, uid=uid,
            )
        )
    batch = list_of_dict_to_tensordict(rows)
    # verl stacks equal-length rows densely; the trainer's batches are jagged (sampled responses
    # differ in length), and verl's padding helpers expect prompts and responses alike.
    for key in SEQUENCE_KEYS:
        if not batch[key].is_nested:
            batch[key] = torch.nested.as_nested_tensor([row[key] for row in rows], layout=torch.jagged)
    return batch


SEQUENCE_KEYS = (
    "prompts", "responses", "response_mask", "loss_mask", "input_ids", "attention_mask", "position_ids"
)
