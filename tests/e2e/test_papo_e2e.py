"""End to end through ``python -m recipe.papo.main_papo`` on CPU: verl's real v1 trainer, Ray,
TransferQueue, the CPU backend's HF rollout (the SMOKE runs cover vLLM), the FSDP2 engine and the
PAPO worker and trainer.

Two launches (each ~40 s of Ray start-up plus a few seconds per step):

* PAPO-G, annealed gamma, 3 steps, checkpoint every step, on a dataset mixing image rows,
  text-only rows and rows with pre-computed ``images_aug``;
* the same run resumed from its step-2 checkpoint (gamma_t must continue the schedule).

PAPO-D (dynamic sampling) with the masked branch recomputed with gradient runs as a SMOKE run of the
PAPO-D script (``tests/scripts/test_smoke_e2e.py``).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from memory_slots import memory_slot
from PIL import Image

from papo_tools.demo.run_demo import demo_command, read_metrics
from papo_tools.demo.task import make_rows, write_parquet
from recipe.papo.masking import mask_image_patches

pytestmark = pytest.mark.e2e

TOTAL_STEPS = 3
ANNEAL = ("papo.schedule=annealing", "papo.kl_prcp_coef=0.04", "papo.anneal_start=0.04", "papo.anneal_end=0.01")


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


def run_papo(tmp: Path, model_dir: Path, name: str, steps: int, *overrides: str, data: tuple[Path, Path]) -> list[dict]:
    """Run main_papo on CPU; return the per-step metric records of verl's file logger."""
    from papo_tools.cpu.launch import cpu_env

    tmp.mkdir(parents=True, exist_ok=True)
    metrics = tmp / f"{name}.jsonl"
    # The trainer's mechanics (steps, checkpoints, resume): the HF rollout, no vLLM start-up per launch.
    command = demo_command(model_dir, data[0], data[1], tmp, steps, overrides, rollout="hf")
    env = {**os.environ, **cpu_env(file_logger_path=metrics)}
    log = tmp / f"{name}.log"
    with log.open("w") as handle, memory_slot("hf"):
        result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=600, cwd=tmp)
    assert result.returncode == 0, f"{name} failed; last log lines:\n" + "\n".join(log.read_text().splitlines()[-40:])
    return [r for r in read_metrics(metrics) if "training/global_step" in r["data"]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model_dir) -> Path:
    tmp = tmp_path_factory.mktemp("papo_e2e")
    write_parquet(mixed_rows(32, "train"), tmp / "data" / "train.parquet")
    write_parquet(mixed_rows(8, "val"), tmp / "data" / "val.parquet")
    return tmp


@pytest.fixture(scope="module")
def data(workdir) -> tuple[Path, Path]:
    return workdir / "data" / "train.parquet", workdir / "data" / "val.parquet"


@pytest.fixture(scope="module")
def papo_g_run(workdir, tiny_model_dir, data):
    records = run_papo(workdir, tiny_model_dir, "papo_g", TOTAL_STEPS, *ANNEAL, "trainer.save_freq=1", data=data)
    return records


def test_papo_g_steps_complete_with_positive_finite_perception_kl(papo_g_run):
    assert [r["step"] for r in papo_g_run] == [1, 2, 3]
    for record in papo_g_run:
        kl = record["data"]["papo/kl_prcp"]
        assert math.isfinite(kl) and kl > 0
        for key in ("papo/entropy_ori", "papo/entropy_aug", "papo/kl_prcp_clipfrac", "papo/logprob_gap", "papo/loss"):
            assert math.isfinite(record["data"][key]), key


def test_gamma_follows_the_annealing_schedule(papo_g_run):
    for record in papo_g_run:
        assert record["data"]["papo/gamma"] == pytest.approx(expected_gamma(record["step"]))
        # the demo's entropy coefficients (0.05) are scaled by gamma_t / kl_prcp_coef
        scale = expected_gamma(record["step"]) / 0.04
        assert record["data"]["papo/entropy_ori_coef"] == pytest.approx(0.05 * scale)
        assert record["data"]["papo/entropy_aug_coef"] == pytest.approx(0.05 * scale)


def test_text_only_rows_are_skipped_and_counted(papo_g_run):
    """Every 4th prompt has no image: PAPO terms skip those rows and the count is logged."""
    counts = [r["data"]["papo/rows_without_image"] for r in papo_g_run]
    assert sum(counts) > 0
    assert all(count == int(count) for count in counts)


def test_actor_weights_change(workdir, tiny_model_dir, papo_g_run):
    """The saved actor differs from the initial weights (same parameter names and shapes)."""
    from papo_tools.demo.tiny_model import load_tiny_qwen2_5_vl

    initial = load_tiny_qwen2_5_vl(tiny_model_dir)[0].state_dict()  # names as the engine sees them
    trained = torch.load(
        workdir / "checkpoints" / f"global_step_{TOTAL_STEPS}" / "actor" / "model_world_size_1_rank_0.pt",
        map_location="cpu",
        weights_only=False,
    )
    trained = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in trained.items()}
    assert set(trained) == set(initial)
    changed = [name for name in trained if not torch.equal(initial[name].float(), trained[name].float())]
    assert changed, "no parameter changed after 3 PAPO steps"
    assert any(name.startswith("model.visual") for name in changed), "the vision tower is trained too"


def test_resume_continues_the_gamma_schedule(workdir, tiny_model_dir, data, papo_g_run):
    """Drop the step-3 checkpoint, resume from step 2: step 3 gets the uninterrupted run's gamma_t."""
    checkpoints = workdir / "checkpoints"
    resumed_dir = workdir / "resumed"
    shutil.copytree(checkpoints / "global_step_2", resumed_dir / "checkpoints" / "global_step_2")
    (resumed_dir / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("2")
    records = run_papo(
        resumed_dir, tiny_model_dir, "resumed", TOTAL_STEPS, *ANNEAL, "trainer.resume_mode=auto", data=data
    )
    log = (resumed_dir / "resumed.log").read_text()
    step_2 = resumed_dir / "checkpoints" / "global_step_2"
    assert f"Loaded model from {step_2}" in log
    # What verl restores besides the weights (docs/training.md, "Resuming"): optimiser, LR scheduler,
    # the actor process's RNGs, and the dataloader's position (data.pt).
    for restored in ("Loaded optimizer from", "Loaded lr_scheduler from", "Loaded rng from"):
        assert f"{restored} {step_2 / 'actor'}" in log, restored
    assert (step_2 / "data.pt").is_file() and "No dataloader state found" not in log
    assert [r["step"] for r in records] == [3], "a resumed run trains only the remaining step"
    assert records[0]["data"]["actor/grad_norm"] > 0
    uninterrupted = {r["step"]: r["data"]["papo/gamma"] for r in papo_g_run}
    assert records[0]["data"]["papo/gamma"] == uninterrupted[3] == pytest.approx(expected_gamma(3))
