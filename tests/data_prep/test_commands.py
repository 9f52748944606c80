"""Every command on local fixtures: exact row accounting, outputs, --strict, --max-rows, determinism."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import data_prep_fixtures as fx
import pyarrow.parquet as pq
import pytest
from user_env import user_env

from data_prep import all as prepare_all
from data_prep import geometry3k, mmk12, papo_eval, virl39k
from data_prep.pipeline import RowMapper, RunOptions, convert_split
from data_prep.rows import RawRow, RowSpec
from recipe.papo.prompt import FORMAT_INSTRUCTION

REPO = Path(__file__).resolve().parents[2]


def run(module, argv) -> int:
    return module.main([str(arg) for arg in argv])


def summary(out: Path, stem: str) -> dict:
    return json.loads((out / f"{stem}.summary.json").read_text())


def skipped(out: Path, stem: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{stem}.skipped.jsonl").read_text().splitlines()]


def test_virl39k_from_parquet_accounts_for_every_row(tmp_path, capsys):
    rows, expected, written = fx.problem_rows()
    source = fx.write_parquet(tmp_path / "src" / "virl.parquet", rows)
    out = tmp_path / "out"
    assert run(virl39k, ["--source", source, "--out", out, "--row-group-size", 2]) == 0

    result = summary(out, "virl39k_train")
    assert (result["status"], result["rows_in"], result["rows_written"], result["rows_skipped"]) == ("ok", 9, 4, 5)
    assert result["skipped_by_reason"] == expected
    assert result["row_groups"] == 2
    assert [(s["index"], s["id"], s["reason"]) for s in skipped(out, "virl39k_train")] == [
        (2, "a2", "corrupt_image"),
        (3, "a3", "image_count_mismatch"),
        (4, "a4", "missing_answer"),
        (5, "a5", "missing_answer"),
        (7, "a7", "missing_image_file"),
    ]
    printed = capsys.readouterr().out
    assert "rows in             9" in printed and "written             4" in printed
    assert "missing_image_file           1" in printed

    records = fx.read_parquet(out / "virl39k_train.parquet")
    assert [r["extra_info"]["index"] for r in records] == written
    assert [r["extra_info"]["id"] for r in records] == [rows[i]["id"] for i in written]
    assert {r["data_source"] for r in records} == {"papo/virl39k"}
    assert {r["extra_info"]["split"] for r in records} == {"train"}
    assert records[2]["prompt"] == [{"role": "user", "content": f"<image>Area of the square?\n\n{FORMAT_INSTRUCTION}"}]
    assert records[2]["reward_model"] == {"style": "rule", "ground_truth": "16"}
    for record, index in zip(records, written, strict=True):
        assert [image["bytes"] for image in record["images"]] == [image["bytes"] for image in rows[index]["images"]]
    assert pq.ParquetFile(out / "virl39k_train.parquet").metadata.num_row_groups == 2
    assert "images_aug" not in pq.read_schema(out / "virl39k_train.parquet").names


def test_mmk12_from_saved_dataset_dict(tmp_path):
    rows, expected, written = fx.problem_rows(with_missing_file=False)
    source = fx.write_saved_dataset(tmp_path / "mmk12", {"test": rows})
    out = tmp_path / "out"
    assert run(mmk12, ["--source", source, "--out", out]) == 0
    result = summary(out, "mmk12_val")
    assert (result["rows_in"], result["rows_written"], result["skipped_by_reason"]) == (8, 4, expected)
    records = fx.read_parquet(out / "mmk12_val.parquet")
    assert [r["extra_info"]["index"] for r in records] == written
    assert {(r["data_source"], r["extra_info"]["split"], r["extra_info"]["benchmark"]) for r in records} == {
        ("papo/mmk12", "val", "mmk12")
    }


def test_geometry3k_hub_snapshot_folder(tmp_path):
    rows, _, _ = fx.problem_rows()
    good = [rows[i] for i in (0, 1, 6, 8)]
    for name, part in (
        ("train-00000-of-00002", good[:2]),
        ("train-00001-of-00002", good[2:]),
        ("test-00000-of-00001", good[:1]),
    ):
        fx.write_parquet(tmp_path / "g3k" / "data" / f"{name}.parquet", part)
    out = tmp_path / "out"
    assert run(geometry3k, ["--source", tmp_path / "g3k", "--out", out]) == 0
    train = fx.read_parquet(out / "geometry3k_train.parquet")
    test = fx.read_parquet(out / "geometry3k_test.parquet")
    assert [r["extra_info"]["id"] for r in train] == ["a0", "a1", "a6", "a8"]
    assert [r["extra_info"]["index"] for r in train] == [0, 1, 2, 3]
    assert [r["extra_info"]["split"] for r in test] == ["test"]
    assert {r["data_source"] for r in train + test} == {"papo/geometry3k"}
    assert not (out / "geometry3k_validation.parquet").exists()


def test_geometry3k_saved_dataset_dict_with_splits_flag(tmp_path):
    rows, _, _ = fx.problem_rows(with_missing_file=False)
    source = fx.write_saved_dataset(tmp_path / "g3k", {"train": rows, "validation": rows[:2], "test": rows[:3]})
    out = tmp_path / "out"
    assert run(geometry3k, ["--source", source, "--out", out, "--splits", "validation", "test"]) == 0
    assert summary(out, "geometry3k_validation")["rows_written"] == 2
    assert summary(out, "geometry3k_test")["skipped_by_reason"] == {"corrupt_image": 1}
    assert not (out / "geometry3k_train.parquet").exists()


def test_papo_eval_extracted_folder_and_zip(tmp_path):
    root = tmp_path / "PAPO_eval"
    zipped = fx.write_sharegpt(root, "We_Math", zipped=True)
    folder = fx.write_sharegpt(root, "lscpku_LogicVista", zipped=False, jsonl=True)
    assert not (root / "images" / "We_Math").exists()
    out = tmp_path / "out"
    assert run(papo_eval, ["--source", root, "--out", out, "--splits", "We_Math", "lscpku_LogicVista"]) == 0
    for benchmark, fixture, group in (
        ("We_Math", zipped, "general"),
        ("lscpku_LogicVista", folder, "vision-dependent"),
    ):
        result = summary(out, benchmark)
        assert (result["rows_in"], result["rows_written"]) == (6, 2)
        assert result["skipped_by_reason"] == fixture["expected"]
        records = fx.read_parquet(out / f"{benchmark}.parquet")
        assert [r["extra_info"] for r in records] == [
            {"split": "test", "index": 0, "id": "e0", "benchmark": benchmark, "group": group},
            {"split": "test", "index": 1, "id": "e1", "benchmark": benchmark, "group": group},
        ]
        assert {r["data_source"] for r in records} == {f"papo/{benchmark}"}
        assert [r["reward_model"]["ground_truth"] for r in records] == ["3", "B"]
        assert records[1]["prompt"][0]["content"].startswith("<image> vs <image>: which is larger?\n\n")
        assert [i["bytes"] for i in records[1]["images"]] == [
            fixture["images"][f"{benchmark}/q{k}.png"] for k in (1, 2)
        ]
        assert [i["path"] for i in records[1]["images"]] == [f"images/{benchmark}/q1.png", f"images/{benchmark}/q2.png"]
    assert not (out / "AI4Math_MathVista.parquet").exists()


def test_papo_eval_single_split_file(tmp_path):
    fx.write_sharegpt(tmp_path / "src", "MMMU_MMMU_Pro", zipped=True)
    out = tmp_path / "out"
    assert run(papo_eval, ["--source", tmp_path / "src" / "MMMU_MMMU_Pro.json", "--out", out]) == 0
    assert summary(out, "MMMU_MMMU_Pro")["rows_written"] == 2


def test_json_rows_with_images_inside_a_zip(tmp_path):
    """A JSONL training source whose image paths live in a zipped folder next to it."""
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "pics.zip", "w") as archive:
        archive.writestr("p0.png", fx.png_bytes(11, 7))
    lines = [
        {"problem": "<image>Q0", "answer": "1", "images": ["pics/p0.png"]},
        {"problem": "<image>Q1", "answer": "2", "images": ["pics/p1.png"]},
        "not an object",
    ]
    (src / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken\n")
    out = tmp_path / "out"
    assert run(virl39k, ["--source", src / "train.jsonl", "--out", out]) == 0
    result = summary(out, "virl39k_train")
    assert result["skipped_by_reason"] == {"malformed_row": 2, "missing_image_file": 1}
    assert (result["rows_in"], result["rows_written"]) == (4, 1)
    assert fx.read_parquet(out / "virl39k_train.parquet")[0]["images"] == [
        {"bytes": fx.png_bytes(11, 7), "path": "pics/p0.png"}
    ]
    details = [s["detail"] for s in skipped(out, "virl39k_train")]
    assert "line 3: a JSON str, not an object" in details[1] and "line 4: invalid JSON" in details[2]


def test_strict_fails_and_leaves_no_parquet(tmp_path, capsys):
    rows, expected, _ = fx.problem_rows()
    source = fx.write_parquet(tmp_path / "v.parquet", rows)
    out = tmp_path / "out"
    assert run(virl39k, ["--source", source, "--out", out]) == 0
    assert (out / "virl39k_train.parquet").exists()
    assert run(virl39k, ["--source", source, "--out", out, "--strict"]) == 1
    err = capsys.readouterr().err
    assert "5 row(s) skipped with --strict" in err and "missing_answer=2" in err
    assert not (out / "virl39k_train.parquet").exists(), "a stale parquet from the earlier run must not survive"
    versions = out / ".data_prep" / "virl39k_train"
    assert sorted(p.name for p in versions.iterdir()) == sorted(["current", os.readlink(versions / "current")])
    result = summary(out, "virl39k_train")
    assert result["status"].startswith("failed: --strict") and result["output"] is None
    assert result["skipped_by_reason"] == expected


def test_strict_passes_on_clean_input_and_max_rows(tmp_path):
    rows, _, _ = fx.problem_rows()
    source = fx.write_parquet(tmp_path / "v.parquet", rows)
    out = tmp_path / "out"
    assert run(virl39k, ["--source", source, "--out", out, "--strict", "--max-rows", 2]) == 0
    result = summary(out, "virl39k_train")
    assert (result["rows_in"], result["rows_written"], result["options"]["max_rows"]) == (2, 2, 2)


def test_same_input_gives_byte_identical_output_whatever_num_proc(tmp_path):
    rows, _, _ = fx.problem_rows()
    source = fx.write_parquet(tmp_path / "v.parquet", rows)
    outputs = []
    for attempt, num_proc in enumerate((1, 1, 2)):
        out = tmp_path / f"out{attempt}"
        argv = ["--source", source, "--out", out, "--num-proc", num_proc, "--row-group-size", 4, "--precompute-masks"]
        assert run(virl39k, argv) == 0
        outputs.append([(out / f"virl39k_train.{suffix}").read_bytes() for suffix in ("parquet", "skipped.jsonl")])
    assert outputs[0] == outputs[1] == outputs[2]


def test_rows_are_streamed_in_row_groups(tmp_path):
    """The writer flushes row groups while rows are still being read (memory does not grow with rows)."""
    out = tmp_path / "out"
    group = 3
    sizes_seen = []

    def rows():
        for index in range(4 * group):
            if index % group == 0 and index:  # the parquet this run writes, in its own version folder
                (staged,) = (out / ".data_prep" / "stream").glob("[0-9]*/stream.parquet")
                sizes_seen.append(staged.stat().st_size)
            yield RawRow(index=index, id=None, question="<image>q", answer="1", images=[fx.image(6, 6, index)])

    spec = RowSpec(data_source="papo/x", split="train", benchmark="x", group=None, ability="math")
    options = RunOptions(out_dir=out, row_group_size=group)
    with RowMapper(1) as mapper:
        result = convert_split(
            dataset="x",
            stem="stream",
            source="gen",
            rows=rows(),
            total=4 * group,
            spec=spec,
            options=options,
            mapper=mapper,
        )
    assert result.rows_written == 4 * group and result.row_groups == 4
    assert sizes_seen[0] > 4 and sizes_seen[0] < sizes_seen[1] < sizes_seen[2]


def test_all_runs_every_dataset_and_reports_failures(tmp_path, capsys):
    rows, _, _ = fx.problem_rows()
    train = fx.write_parquet(tmp_path / "virl.parquet", rows)
    val = fx.write_saved_dataset(tmp_path / "mmk12", rows[:3])
    root = tmp_path / "eval"
    for benchmark in ("We_Math", "MMMU_MMMU_Pro"):
        fx.write_sharegpt(root, benchmark, zipped=benchmark == "We_Math")
    out = tmp_path / "out"
    argv = [
        "--out",
        out,
        "--virl39k-source",
        train,
        "--mmk12-source",
        val,
        "--eval-source",
        root,
        "--geometry3k-source",
        tmp_path / "absent",
        "--precompute-masks",
    ]
    # The eval folder holds two of the nine benchmarks: papo_eval fails on the first missing one.
    assert run(prepare_all, argv) == 2
    err = capsys.readouterr().err
    assert "error: papo_eval: no hiyouga_geometry3k.json" in err and "error: geometry3k: source" in err
    assert "images_aug" in pq.read_schema(out / "virl39k_train.parquet").names
    assert "images_aug" not in pq.read_schema(out / "mmk12_val.parquet").names
    combined = json.loads((out / "all.summary.json").read_text())
    assert [(s["dataset"], s["rows_in"]) for s in combined["splits"]] == [("virl39k", 9), ("mmk12", 3)]
    assert sorted(combined["failures"]) == ["geometry3k", "papo_eval"]

    for benchmark in (
        "hiyouga_geometry3k",
        "AI4Math_MathVista",
        "PAPO_MMK12",
        "AI4Math_MathVerse",
        "AI4Math_MathVerse_vision_dependent",
        "BUAADreamer_clevr_count_70k",
        "lscpku_LogicVista",
    ):
        fx.write_sharegpt(root, benchmark, zipped=False)
    g3k = fx.write_saved_dataset(tmp_path / "g3k", {"train": rows[:2], "test": rows[:1]})
    argv[argv.index(tmp_path / "absent")] = g3k
    assert run(prepare_all, argv + ["--only", "papo_eval", "geometry3k"]) == 0
    assert len(list((out / "eval").glob("*.parquet"))) == 9
    assert (out / "geometry3k_train.parquet").exists() and (out / "geometry3k_test.parquet").exists()


def test_module_entry_point(tmp_path):
    rows, _, _ = fx.problem_rows()
    source = fx.write_parquet(tmp_path / "v.parquet", rows)
    completed = subprocess.run(
        [sys.executable, "-m", "data_prep.virl39k", "--source", str(source), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=user_env(),  # as typed in a user's shell, not the test session's environment
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "virl39k [train] from parquet" in completed.stdout and "rows in             9" in completed.stdout


# runpy warns that the module was already imported by this test session; harmless here.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("command", ["virl39k", "mmk12", "papo_eval", "geometry3k", "all"])
def test_every_command_runs_as_a_module(command, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"data_prep.{command}", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module(f"data_prep.{command}", run_name="__main__", alter_sys=True)
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    assert f"python -m data_prep.{command}" in usage and "--out" in usage and "--num-proc" in usage
    assert ("--precompute-masks" in usage) == (command in ("virl39k", "geometry3k", "all"))
