"""PAPO end to end through ``make demo``'s command on CPU, its console and log, rerunning and resuming.

``python -m papo_tools.demo.run_demo`` as a user runs it, with pass-through ``key=value`` overrides:
``python -m recipe.papo.main_papo`` through verl's real v1 trainer, Ray, TransferQueue, the FSDP2
engine and the PAPO worker and trainer, on the CPU backend's HF rollout (what is checked is the
trainer's side; the SMOKE runs cover vLLM). Two launches, each ~40 s of Ray start-up plus a few
seconds per step, and a rerun that launches nothing:

* PAPO-G with annealed gamma, 3 steps, a checkpoint every step, on a dataset mixing image rows,
  text-only rows and rows with pre-computed ``images_aug``. Its console is short (phases, one line
  per step, the table) and names its log relative to the working directory; the log holds the run's
  whole output, without TransferQueue's thread-count warnings.
* The same command again: nothing to do, ``metrics.jsonl`` untouched, nothing launched. (verl's file
  logger opens its JSONL with mode ``"wb"``; a relaunch used to empty the demo's metrics even when it
  then trained 0 steps.)
* The run as if interrupted after step 2 (a copy of its folder without step 3's checkpoint and
  records), relaunched with the same command: it resumes from step 2's checkpoint, trains step 3 only
  with the uninterrupted run's gamma_3, and appends to the kept records.

PAPO-D (dynamic sampling) with the masked branch recomputed with gradient runs as a SMOKE run of the
PAPO-D script (``tests/scripts/test_smoke_e2e.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from memory_slots import memory_slot
from PIL import Image
from user_env import user_env

from papo_tools.demo.console import PHASES
from papo_tools.demo.run_demo import read_metrics
from papo_tools.demo.task import make_rows, write_parquet
from recipe.papo.masking import mask_image_patches

pytestmark = pytest.mark.e2e

TOTAL_STEPS = 3
ANNEAL = ("papo.schedule=annealing", "papo.kl_prcp_coef=0.04", "papo.anneal_start=0.04", "papo.anneal_end=0.01")
SAVE_EVERY_STEP = "trainer.save_freq=1"
# issue 32: "make demo prints at most about 60 lines"
MAX_CONSOLE_LINES = 60


def expected_gamma(step: int) -> float:
    """Linear from 0.04 at step 1 to 0.01 at step 1 + 1.0 * TOTAL_STEPS."""
    return 0.04 + (0.01 - 0.04) * min((step - 1) / TOTAL_STEPS, 1.0)


def png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def mixed_rows(num_rows: int, split: str) -> list[dict]:
    """Demo rows; every 4th is text-only, every 4th (offset 1) carries a pre-computed images_aug."""
    rows = make_rows(num_rows, split, seed=1)
    for index, row in enumerate(rows):
        row["images_aug"] = None
        if index % 4 == 0:
            row["images"] = []
            row["prompt"] = [
                {**message, "content": message["content"].replace("<image>", "")} for message in row["prompt"]
            ]
        elif index % 4 == 1:
            rng = np.random.default_rng(index)
            row["images_aug"] = [
                png(mask_image_patches(Image.open(io.BytesIO(i["bytes"])), 0.6, 14, rng)[0]) for i in row["images"]
            ]
    return rows


@dataclass(frozen=True)
class Launch:
    """One ``run_demo`` launch: what it printed and the ``run.log`` it left (a later launch replaces it)."""

    stdout: str
    stderr: str
    log: str


def run_demo(out: Path, data: tuple[Path, Path], slot: str | None = "hf") -> Launch:
    """``python -m papo_tools.demo.run_demo --out <out> --steps 3 --rollout hf`` with the module's overrides.

    ``slot``: the memory slot the launch holds (None for a rerun that must launch nothing).
    """
    command = [sys.executable, "-m", "papo_tools.demo.run_demo", "--out", str(out), "--steps", str(TOTAL_STEPS)]
    command += ["--rollout", "hf", SAVE_EVERY_STEP, *ANNEAL]
    command += [f"data.train_files={data[0]}", f"data.val_files={data[1]}"]
    # A user's environment: the demo sets the CPU backend's environment for its own run.
    with memory_slot(slot) if slot else contextlib.nullcontext():
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=600, cwd=out.parent, env=user_env()
        )
    log = (out / "run.log").read_text(encoding="utf-8") if (out / "run.log").exists() else ""
    assert done.returncode == 0, f"demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{log[-4000:]}"
    return Launch(done.stdout, done.stderr, log)


def training_records(path: Path) -> list[dict]:
    return [record for record in read_metrics(path) if "training/global_step" in record["data"]]


@dataclass(frozen=True)
class FinishedDemo:
    """The first launch: its output folder, data and what it printed and logged."""

    out: Path
    data: tuple[Path, Path]
    launch: Launch
    train: list[dict]


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory) -> FinishedDemo:
    root = tmp_path_factory.mktemp("demo_e2e")
    data = root / "data" / "train.parquet", root / "data" / "val.parquet"
    write_parquet(mixed_rows(32, "train"), data[0])
    write_parquet(mixed_rows(8, "val"), data[1])
    out = root / "demo_output"
    launch = run_demo(out, data)
    assert (out / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == str(TOTAL_STEPS)
    return FinishedDemo(out, data, launch, training_records(out / "metrics.jsonl"))


def test_console_is_short_and_the_log_holds_the_whole_run(finished_demo):
    launch = finished_demo.launch
    console = (launch.stdout + launch.stderr).splitlines()
    assert len(console) <= MAX_CONSOLE_LINES, "\n".join(console)
    said = "\n".join(console)
    for _, phase in PHASES:
        assert phase in said
    assert f"s  step 1/{TOTAL_STEPS}: reward " in said and ", papo/kl_prcp " in said
    assert "[demo] full log: demo_output/run.log" in console  # relative to the working directory
    assert str(finished_demo.out.parent) not in said  # no absolute path of this machine
    assert "Traceback" not in said
    log = launch.log.splitlines()
    assert len(log) > 10 * len(console)
    assert log[0].startswith("[demo] running: ") and "-m recipe.papo.main_papo" in log[0]
    for whole_run in (
        "Started a local Ray instance",  # Ray's driver output
        "'actor_rollout_ref': {",  # verl's config dump in the TaskRunner actor
        "(WorkerDict pid=",  # a training worker's lines, forwarded by Ray
        " step:1 - global_seqlen",  # verl's console logger (the TaskRunner's line for step 1)
        *(marker for marker, _ in PHASES),
    ):
        assert any(whole_run in line for line in log), whole_run
    assert not [line for line in log if "target_num_threads" in line]  # TransferQueue's warning, prevented


def test_papo_g_steps_complete_with_positive_finite_perception_kl(finished_demo):
    assert [r["step"] for r in finished_demo.train] == [1, 2, 3]
    for record in finished_demo.train:
        kl = record["data"]["papo/kl_prcp"]
        assert math.isfinite(kl) and kl > 0
        for key in ("papo/entropy_ori", "papo/entropy_aug", "papo/kl_prcp_clipfrac", "papo/logprob_gap", "papo/loss"):
            assert math.isfinite(record["data"][key]), key


def test_gamma_follows_the_annealing_schedule(finished_demo):
    for record in finished_demo.train:
        assert record["data"]["papo/gamma"] == pytest.approx(expected_gamma(record["step"]))
        # the demo's entropy coefficients (0.05) are scaled by gamma_t / kl_prcp_coef
        scale = expected_gamma(record["step"]) / 0.04
        assert record["data"]["papo/entropy_ori_coef"] == pytest.approx(0.05 * scale)
        assert record["data"]["papo/entropy_aug_coef"] == pytest.approx(0.05 * scale)


def test_text_only_rows_are_skipped_and_counted(finished_demo):
    """Every 4th prompt has no image: PAPO terms skip those rows and the count is logged."""
    counts = [r["data"]["papo/rows_without_image"] for r in finished_demo.train]
    assert sum(counts) > 0
    assert all(count == int(count) for count in counts)


def test_actor_weights_change(finished_demo):
    """The saved actor differs from the demo's initial weights (same parameter names and shapes)."""
    from papo_tools.demo.tiny_model import load_tiny_qwen2_5_vl

    out = finished_demo.out
    initial = load_tiny_qwen2_5_vl(out / "tiny_qwen2_5_vl")[0].state_dict()  # names as the engine sees them
    trained = torch.load(
        out / "checkpoints" / f"global_step_{TOTAL_STEPS}" / "actor" / "model_world_size_1_rank_0.pt",
        map_location="cpu",
        weights_only=False,
    )
    trained = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in trained.items()}
    assert set(trained) == set(initial)
    changed = [name for name in trained if not torch.equal(initial[name].float(), trained[name].float())]
    assert changed, f"no parameter changed after {TOTAL_STEPS} PAPO steps"
    assert any(name.startswith("model.visual") for name in changed), "the vision tower is trained too"


def test_rerun_of_a_finished_run_says_so_and_keeps_its_metrics(finished_demo):
    out = finished_demo.out
    metrics = out / "metrics.jsonl"
    before = metrics.read_bytes()
    started = time.monotonic()
    done = run_demo(out, finished_demo.data, slot=None)  # no slot: a wait for one would count in the time
    assert "nothing to do" in done.stdout
    assert f"--steps {TOTAL_STEPS + 1}" in done.stdout  # says how to train further
    assert metrics.read_bytes() == before
    assert time.monotonic() - started < 60, "a finished run must not start Ray again"


def metrics_lines(path: Path) -> list[str]:
    """The record lines of a ``metrics.jsonl``, split at "\n" only, as ``run_demo.read_jsonl`` does
    (decoded responses may hold U+2028)."""
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def interrupted_after(out: Path, step: int, copy: Path) -> list[str]:
    """Copy ``out`` as a run stopped after ``step``'s checkpoint; returns the kept ``metrics.jsonl`` lines."""
    shutil.copytree(out, copy, ignore=lambda folder, names: [n for n in names if n.startswith("global_step_")])
    shutil.copytree(out / "checkpoints" / f"global_step_{step}", copy / "checkpoints" / f"global_step_{step}")
    (copy / "checkpoints" / "latest_checkpointed_iteration.txt").write_text(str(step))
    kept = [line for line in metrics_lines(out / "metrics.jsonl") if json.loads(line)["step"] <= step]
    (copy / "metrics.jsonl").write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return kept


def test_relaunch_after_an_interruption_resumes_and_continues_the_gamma_schedule(finished_demo):
    """Resumed from step 2: step 3 only, with the uninterrupted run's gamma_t, appended to the kept records."""
    resumed = finished_demo.out.parent / "interrupted" / "demo_output"
    kept = interrupted_after(finished_demo.out, 2, resumed)
    launch = run_demo(resumed, finished_demo.data)
    assert "resuming from the checkpoint of step 2" in launch.stdout
    step_2 = resumed / "checkpoints" / "global_step_2"
    assert f"Loaded model from {step_2}" in launch.log
    # What verl restores besides the weights (docs/training.md, "Resuming"): optimiser, LR scheduler,
    # the actor process's RNGs, and the dataloader's position (data.pt).
    for restored in ("Loaded optimizer from", "Loaded lr_scheduler from", "Loaded rng from"):
        assert f"{restored} {step_2 / 'actor'}" in launch.log, restored
    assert (step_2 / "data.pt").is_file() and "No dataloader state found" not in launch.log
    assert metrics_lines(resumed / "metrics.jsonl")[: len(kept)] == kept  # earlier records byte-for-byte kept
    records = training_records(resumed / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3], "a resumed run trains only the remaining step"
    assert records[-1]["data"]["actor/grad_norm"] > 0
    uninterrupted = {r["step"]: r["data"]["papo/gamma"] for r in finished_demo.train}
    assert records[-1]["data"]["papo/gamma"] == uninterrupted[3] == pytest.approx(expected_gamma(3))
    assert not list(resumed.glob("metrics.launch-*.jsonl"))
