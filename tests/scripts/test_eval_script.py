"""``scripts/eval_papo.sh``: its dry run resolves a validation-only avg@8 run over the nine benchmark
parquets, and a (faked) run hands verl's file-logger output to the table builder."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from script_runs import run_script

from recipe.papo.prompt import EVAL_BENCHMARKS

EVAL_DIR = "/data/eval"
MODEL = "/models/merged_step200"


def merged_checkpoint(root: Path, *parts: str) -> Path:
    """A folder ``root/parts...`` holding the ``config.json`` of a merged Qwen2.5-VL checkpoint (the
    start-up checks read its ``model_type``)."""
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    """A folder of merged checkpoints laid out as verl saves and merges them."""
    return tmp_path_factory.mktemp("checkpoints")


def test_dry_run_is_a_validation_only_avg_at_8_run(dry_runs, checkpoints, tmp_path):
    model = merged_checkpoint(checkpoints, "papo", "exp", "global_step_200", "hf")
    out_dir = tmp_path / "results"
    summary = dry_runs.get("eval_papo.sh", MODEL_PATH=str(model), EVAL_DIR=EVAL_DIR, OUT_DIR=str(out_dir)).summary
    files = [f"{EVAL_DIR}/{benchmark}.parquet" for benchmark in EVAL_BENCHMARKS]
    assert summary["data.val_files"] == files
    assert summary["data.train_files"] == files[0]  # read once by verl's dataset set-up, never trained on
    assert summary["model.path"] == str(model)
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


def test_model_path_is_required(tmp_path):
    run = run_script("eval_papo.sh", cwd=tmp_path, DRY_RUN="1")
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
def faked_eval(fake_python, tmp_path):
    """``faked_eval(present, *args, **env) -> (run, eval_dir, record)``: eval_papo.sh with the fake
    ``main_papo`` (records its input to ``record``) and an EVAL_DIR holding ``present`` benchmark files."""

    def run(present, *args: str, **env: str):
        eval_dir = tmp_path / "eval"
        eval_dir.mkdir()
        for benchmark in present:
            (eval_dir / f"{benchmark}.parquet").write_bytes(b"")  # only their presence is checked before verl
        record = tmp_path / "record.json"
        defaults = {"PYTHON": str(fake_python), "MODEL_PATH": MODEL, "EVAL_DIR": str(eval_dir)}
        env = defaults | {"FAKE_RECORD": str(record)} | env
        return run_script("eval_papo.sh", *args, cwd=tmp_path, **env), eval_dir, record

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
    (out / "checkpoint.txt").write_text(MODEL + "\n")  # an earlier evaluation of the same checkpoint
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


def test_logger_without_file_is_rejected(tmp_path):
    run = run_script("eval_papo.sh", cwd=tmp_path, MODEL_PATH=MODEL, LOGGER='["console","wandb"]', DRY_RUN="1")
    assert run.returncode == 2
    assert "lacks the file logger" in run.stderr


def _merged_checkpoint(root: Path, experiment: str, step: int) -> Path:
    """A checkpoint of ``experiment`` merged to ``.../global_step_<step>/actor/hf`` as verl lays it out."""
    return merged_checkpoint(root, "checkpoints", "papo", experiment, f"global_step_{step}", "actor", "hf")


def _metrics(accuracy: float) -> str:
    return json.dumps({f"val-core/papo/{b}/acc/mean@8": accuracy for b in EVAL_BENCHMARKS})


def test_default_results_folder_is_unique_per_checkpoint(faked_eval, tmp_path):
    """Two merged checkpoints whose paths both end in /hf evaluate into two folders, each named
    after its experiment and step, each recording the checkpoint that wrote it."""
    first = _merged_checkpoint(tmp_path, "papo_g_7b", 200)
    second = _merged_checkpoint(tmp_path, "grpo_7b", 200)
    run, _, _ = faked_eval(EVAL_BENCHMARKS, MODEL_PATH=str(first), FAKE_METRICS=_metrics(0.25))
    assert run.returncode == 0, run.stderr[-3000:]
    (tmp_path / "eval").rename(tmp_path / "eval_first")  # faked_eval writes a fresh EVAL_DIR per call
    run, _, _ = faked_eval(EVAL_BENCHMARKS, MODEL_PATH=str(second), FAKE_METRICS=_metrics(0.75))
    assert run.returncode == 0, run.stderr[-3000:]
    results = tmp_path / "eval_results"
    assert sorted(p.name for p in results.iterdir()) == ["grpo_7b__global_step_200", "papo_g_7b__global_step_200"]
    for name, checkpoint, accuracy in (
        ("papo_g_7b__global_step_200", first, 0.25),
        ("grpo_7b__global_step_200", second, 0.75),
    ):
        assert (results / name / "checkpoint.txt").read_text() == f"{checkpoint}\n"
        table = json.loads((results / name / "eval_table.json").read_text())
        assert table["averages"]["overall"]["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize(
    ("model_path", "name"),
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen__Qwen2.5-VL-7B-Instruct"),
        ("papo/exp/global_step_202/hf", "exp__global_step_202"),
        ("papo/exp/global_step_202/actor/huggingface/", "exp__global_step_202"),
        ("models/merged_step200", "models__merged_step200"),
    ],
)
def test_default_results_folder_name(dry_runs, checkpoints, model_path, name):
    if not model_path.startswith("Qwen/"):  # a hub id; the others are local folders
        model_path = f"{merged_checkpoint(checkpoints, *model_path.rstrip('/').split('/'))}/"
    summary = dry_runs.get("eval_papo.sh", MODEL_PATH=model_path, EVAL_DIR=EVAL_DIR).summary
    assert summary["trainer.validation_data_dir"].endswith(f"/eval_results/{name}/generations")
    assert summary["trainer.experiment_name"] == f"eval_{name}"


def test_refuses_to_overwrite_another_checkpoints_results(faked_eval, tmp_path):
    first = _merged_checkpoint(tmp_path, "papo_g_7b", 200)
    second = _merged_checkpoint(tmp_path, "papo_g_7b_seed2", 200)
    out = tmp_path / "shared_results"
    run, _, _ = faked_eval(EVAL_BENCHMARKS, MODEL_PATH=str(first), OUT_DIR=str(out), FAKE_METRICS=_metrics(0.5))
    assert run.returncode == 0, run.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (tmp_path / "eval").rename(tmp_path / "eval_first")
    (tmp_path / "record.json").unlink()
    run, _, record = faked_eval(EVAL_BENCHMARKS, MODEL_PATH=str(second), OUT_DIR=str(out), FAKE_METRICS=_metrics(0.1))
    assert run.returncode == 2
    assert f"OUT_DIR {out} holds the results of MODEL_PATH {first}" in run.stderr
    assert not record.exists()  # refused before verl started
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # The same checkpoint may re-evaluate into its own folder.
    (tmp_path / "eval").rename(tmp_path / "eval_second")
    run, _, _ = faked_eval(EVAL_BENCHMARKS, MODEL_PATH=str(first), OUT_DIR=str(out), FAKE_METRICS=_metrics(0.75))
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / "eval_table.json").read_text())["averages"]["overall"]["accuracy"] == pytest.approx(0.75)


def test_refuses_results_of_an_unknown_checkpoint(faked_eval, tmp_path):
    out = tmp_path / "old_results"
    out.mkdir()
    (out / "eval_table.json").write_text("{}")  # written before folders recorded their checkpoint
    run, _, record = faked_eval(EVAL_BENCHMARKS, OUT_DIR=str(out), FAKE_METRICS=_metrics(0.5))
    assert run.returncode == 2
    assert "without" in run.stderr and "checkpoint.txt" in run.stderr
    assert not record.exists()
    assert (out / "eval_table.json").read_text() == "{}"
