"""eval_table against verl's real validation metrics and its real ``file`` logger output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from papo_eval_metrics import verl_validation_metrics
from user_env import user_env

from recipe.papo.eval_table import main, table_from_metrics
from recipe.papo.prompt import EVAL_BENCHMARKS

# Per benchmark, per question, the accuracy of each of the 8 samples.
SAMPLES = {
    "We_Math": [[1, 1, 1, 0, 0, 0, 0, 0], [1] * 8],  # 3/8 and 8/8 -> 0.6875
    "PAPO_MMK12": [[0] * 8, [1, 0] * 4, [1, 1, 0, 0, 0, 0, 0, 0]],  # 0, 1/2, 1/4 -> 0.25
    # Second question: only 4 of 8 sessions came back (2 correct); verl counts the 4 failures as wrong.
    "MMMU_MMMU_Pro": [[1] * 8, [1, 1, 0, 0]],  # 1 and 2/8 -> 0.625
}
EXPECTED = {"We_Math": 0.6875, "PAPO_MMK12": 0.25, "MMMU_MMMU_Pro": 0.625}


def test_verl_metric_names_and_avg_at_8() -> None:
    metrics = verl_validation_metrics(SAMPLES, n=8)
    # The exact names verl 0.9.1 gives the per-benchmark avg@8 (the table's input).
    for name, value in EXPECTED.items():
        assert metrics[f"val-core/papo/{name}/acc/mean@8"] == value
    # score/format are logged as auxiliary metrics; acc without failed sessions as acc_success_only.
    assert metrics["val-aux/papo/We_Math/format/mean@8"] == 1.0
    assert metrics["val-aux/papo/We_Math/score/mean@8"] == pytest.approx(0.1 + 0.9 * 0.6875)
    assert metrics["val-aux/papo/MMMU_MMMU_Pro/acc_success_only/mean@8"] == 1.0
    assert metrics["val-aux/papo/MMMU_MMMU_Pro/acc_success_only/mean@4"] == 0.5

    table = table_from_metrics(metrics, n=8)
    assert {row.benchmark: row.accuracy for row in table.benchmarks if row.accuracy is not None} == EXPECTED
    assert {average.name: average.accuracy for average in table.averages} == {
        "general": (0.6875 + 0.25) / 2,
        "vision-dependent": 0.625,
        "overall": (0.6875 + 0.25 + 0.625) / 3,
    }


def test_cli_on_verl_file_logger_output(tmp_path, write_with_file_logger, capsys) -> None:
    metrics = verl_validation_metrics(SAMPLES, n=8)
    metrics_file = write_with_file_logger(tmp_path / "eval.jsonl", [(0, metrics)])
    out = tmp_path / "table"

    assert main(["--metrics", str(metrics_file), "--out", str(out)]) == 0

    data = json.loads((out / "eval_table.json").read_text())
    assert data["step"] == 0
    assert data["n"] == 8
    assert {name: row["accuracy"] for name, row in data["benchmarks"].items() if row["accuracy"] is not None} == (
        EXPECTED
    )
    assert data["averages"]["overall"]["accuracy"] == pytest.approx((0.6875 + 0.25 + 0.625) / 3, abs=1e-15)
    assert data["missing"] == [name for name in EVAL_BENCHMARKS if name not in EXPECTED]
    markdown = (out / "eval_table.md").read_text()
    assert "| We_Math | general | 68.75 |" in markdown
    assert "| PAPO_MMK12 | general | 25.00 |" in markdown
    assert "| MMMU_MMMU_Pro | vision-dependent | 62.50 |" in markdown
    assert "| **general** | 2 of 5 benchmarks | **46.88** |" in markdown
    assert "| **overall** | 3 of 9 benchmarks | **52.08** |" in markdown
    assert markdown in capsys.readouterr().out


def test_cli_uses_the_last_validation_of_a_training_log(tmp_path, write_with_file_logger) -> None:
    early = verl_validation_metrics({"We_Math": [[0] * 8]}, n=8)
    late = verl_validation_metrics({"We_Math": [[1] * 8]}, n=8)
    metrics_file = write_with_file_logger(
        tmp_path / "train.jsonl",
        [(0, early), (1, {"training/global_step": 1}), (5, {"training/global_step": 5, **late})],
    )
    assert main(["--metrics", str(metrics_file), "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "eval_table.json").read_text())
    assert (data["step"], data["benchmarks"]["We_Math"]["accuracy"]) == (5, 1.0)


def test_cli_rejects_a_different_n(tmp_path, write_with_file_logger, capsys) -> None:
    metrics_file = write_with_file_logger(tmp_path / "eval.jsonl", [(0, verl_validation_metrics(SAMPLES, n=8))])
    assert main(["--metrics", str(metrics_file), "--out", str(tmp_path / "out"), "--n", "4"]) == 1
    assert "averages 8 samples per question but avg@4 was requested" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_file_logger_default_location(tmp_path, monkeypatch) -> None:
    """Without VERL_FILE_LOGGER_PATH verl writes $VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl."""
    from verl.utils.tracking import Tracking

    monkeypatch.delenv("VERL_FILE_LOGGER_PATH", raising=False)
    monkeypatch.setenv("VERL_FILE_LOGGER_ROOT", str(tmp_path))
    tracking = Tracking(project_name="papo_eval", experiment_name="run1", default_backend=["file"])
    tracking.log(data={"val-core/papo/We_Math/acc/mean@8": 0.5}, step=0)
    tracking.finish()
    lines = (tmp_path / "papo_eval" / "run1.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 0, "data": {"val-core/papo/We_Math/acc/mean@8": 0.5}}]


def test_module_entry_point(tmp_path) -> None:
    metrics_file = tmp_path / "eval.jsonl"
    metrics_file.write_text(json.dumps({"step": 0, "data": {"val-core/papo/We_Math/acc/mean@8": 0.5}}) + "\n")
    completed = subprocess.run(
        [sys.executable, "-m", "recipe.papo.eval_table", "--metrics", str(metrics_file), "--out", str(tmp_path)],
        env=user_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads((tmp_path / "eval_table.json").read_text())["averages"]["overall"]["accuracy"] == 0.5
