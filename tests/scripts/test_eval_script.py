"""``scripts/eval_papo.sh``: its dry run resolves a validation-only avg@8 run over the nine benchmark
parquets, and a (faked) run hands verl's file-logger output to the table builder."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from recipe.papo.prompt import EVAL_BENCHMARKS

EVAL_DIR = "/data/eval"
MODEL = "/models/merged_step200"


def test_dry_run_is_a_validation_only_avg_at_8_run(dry_runs, tmp_path):
    out_dir = tmp_path / "results"
    summary = dry_runs.get("eval_papo.sh", MODEL_PATH=MODEL, EVAL_DIR=EVAL_DIR, OUT_DIR=str(out_dir)).summary
    files = [f"{EVAL_DIR}/{benchmark}.parquet" for benchmark in EVAL_BENCHMARKS]
    assert summary["data.val_files"] == files
    assert summary["data.train_files"] == files[0]  # read once by verl's dataset set-up, never trained on
    assert summary["model.path"] == MODEL
    expected = {
        "trainer.val_only": True,
        "trainer.val_before_train": True,
        "trainer.resume_mode": "disable",
        "rollout.val_kwargs.n": 8,
        "rollout.val_kwargs.temperature": 1.0,
        "rollout.val_kwargs.top_p": 0.99,
        "rollout.val_kwargs.do_sample": True,
        "papo.enabled": False,
        "actor.use_kl_loss": False,
        "data.filter_overlong_prompts": False,
        "data.max_prompt_length": 4096,
        "data.max_response_length": 2048,
        "data.mm_processor_kwargs": {"min_pixels": 200704, "max_pixels": 1003520},
        "reward.custom_reward_function.path": "pkg://recipe.papo.reward",
        "trainer.validation_data_dir": f"{out_dir}/generations",
    }
    assert summary["ray_kwargs.ray_init.runtime_env.env_vars"]["VERL_FILE_LOGGER_PATH"] == f"{out_dir}/metrics.jsonl"
    assert {key: summary[key] for key in expected} == expected
    assert "file" in summary["trainer.logger"]
    assert not out_dir.exists()  # a dry run writes nothing


def test_model_path_is_required(run_bash, tmp_path):
    run = run_bash("eval_papo.sh", cwd=tmp_path, DRY_RUN="1")
    assert run.returncode != 0
    assert "set MODEL_PATH" in run.stderr


LOGGER_PATH_ARG = "++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH="
FAKE_MAIN = f"""
import json, os, sys
# Stands in for `python -m recipe.papo.main_papo`: records what it was given and, like verl's file
# logger in the Ray job whose env_vars carry VERL_FILE_LOGGER_PATH, writes one validation record there.
with open(os.environ["FAKE_RECORD"], "w") as handle:
    json.dump({{"argv": sys.argv[1:], "PAPO_DRY_RUN": os.environ.get("PAPO_DRY_RUN")}}, handle)
if os.environ.get("FAKE_FAIL") == "1":
    sys.exit(1)
(path,) = [arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("{LOGGER_PATH_ARG}")]
with open(path, "w") as handle:
    handle.write(json.dumps({{"step": 0, "data": json.loads(os.environ["FAKE_METRICS"])}}) + "\\n")
"""


@pytest.fixture
def fake_python(tmp_path) -> Path:
    """A ``PYTHON`` that runs :data:`FAKE_MAIN` for ``-m recipe.papo.main_papo`` and the real one otherwise."""
    fake_main = tmp_path / "fake_main_papo.py"
    fake_main.write_text(FAKE_MAIN)
    wrapper = tmp_path / "python"
    wrapper.write_text(
        textwrap.dedent(
            f"""\
            #!/usr/bin/env bash
            if [ "${{1:-}}" = -m ] && [ "${{2:-}}" = recipe.papo.main_papo ]; then
                shift 2
                exec {sys.executable} {fake_main} "$@"
            fi
            exec {sys.executable} "$@"
            """
        )
    )
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture
def faked_eval(run_bash, fake_python, tmp_path):
    """``faked_eval(present, *args, **env) -> (run, eval_dir, record)``: eval_papo.sh with the fake
    ``main_papo`` (records its input to ``record``) and an EVAL_DIR holding ``present`` benchmark files."""

    def run(present, *args: str, **env: str):
        eval_dir = tmp_path / "eval"
        eval_dir.mkdir()
        for benchmark in present:
            (eval_dir / f"{benchmark}.parquet").write_bytes(b"")  # only their presence is checked before verl
        record = tmp_path / "record.json"
        env = dict(PYTHON=str(fake_python), MODEL_PATH=MODEL, EVAL_DIR=str(eval_dir), FAKE_RECORD=str(record)) | env
        return run_bash("eval_papo.sh", *args, cwd=tmp_path, **env), eval_dir, record

    return run


def test_run_builds_the_table_from_the_file_logger(faked_eval, tmp_path):
    benchmarks = ["We_Math", "MMMU_MMMU_Pro"]
    metrics = {"val-core/papo/We_Math/acc/mean@4": 0.5, "val-core/papo/MMMU_MMMU_Pro/acc/mean@4": 0.25}
    run, eval_dir, record = faked_eval(
        benchmarks,
        "trainer.experiment_name=custom",
        BENCHMARKS=" ".join(benchmarks),
        EVAL_N="4",
        OUT_DIR="results",  # relative: resolved against the working directory
        FAKE_METRICS=json.dumps(metrics),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "results"
    seen = json.loads(record.read_text())
    assert seen["PAPO_DRY_RUN"] == "0"
    argv = seen["argv"]
    assert f"{LOGGER_PATH_ARG}{out / 'metrics.jsonl'}" in argv
    files = [f"'{eval_dir}/{benchmark}.parquet'" for benchmark in benchmarks]
    assert f"data.val_files=[{','.join(files)}]" in argv
    assert "actor_rollout_ref.rollout.val_kwargs.n=4" in argv
    assert "trainer.val_only=True" in argv
    assert argv[-1] == "trainer.experiment_name=custom"  # the user's arguments come last

    table = json.loads((out / "eval_table.json").read_text())
    assert table["n"] == 4
    assert table["benchmarks"]["We_Math"]["accuracy"] == 0.5
    assert table["benchmarks"]["MMMU_MMMU_Pro"]["accuracy"] == 0.25
    assert table["averages"]["general"]["accuracy"] == 0.5
    assert table["averages"]["vision-dependent"]["accuracy"] == 0.25
    assert table["averages"]["overall"]["accuracy"] == pytest.approx(0.375)
    assert "| We_Math | general | 50.00 |" in (out / "eval_table.md").read_text()


def test_failed_run_leaves_no_stale_table(faked_eval, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    stale = {"step": 0, "data": {"val-core/papo/We_Math/acc/mean@8": 0.9}}
    (out / "metrics.jsonl").write_text(json.dumps(stale) + "\n")
    run, _, record = faked_eval(EVAL_BENCHMARKS, OUT_DIR=str(out), FAKE_FAIL="1")
    assert record.exists()  # the (fake) evaluation ran and failed
    assert run.returncode != 0
    assert not (out / "metrics.jsonl").exists()
    assert not (out / "eval_table.json").exists()


def test_missing_benchmark_file_fails_before_verl(faked_eval):
    run, eval_dir, record = faked_eval(EVAL_BENCHMARKS[:-1])
    assert run.returncode == 2
    assert f"missing {eval_dir}/{EVAL_BENCHMARKS[-1]}.parquet" in run.stderr
    assert not record.exists()


def test_logger_without_file_is_rejected(run_bash, tmp_path):
    run = run_bash("eval_papo.sh", cwd=tmp_path, MODEL_PATH=MODEL, LOGGER='["console","wandb"]', DRY_RUN="1")
    assert run.returncode == 2
    assert "lacks the file logger" in run.stderr

