"""``data_prep.papo_eval`` on PAPO_eval as the hub serves it (rows per split through ``datasets``,
images in per-benchmark zips), on a hub id with only the download step replaced, and on the authors'
extracted layout and the JSON layouts: all nine benchmarks converted and every row accounted for."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import papo_eval_fixtures as fixtures
import pyarrow.parquet as pq
import pytest
from user_env import user_env

from data_prep import eval_layouts, papo_eval
from recipe.papo.prompt import EVAL_BENCHMARKS, benchmark_group

REPO = Path(__file__).resolve().parents[2]
HUB_ID = "PAPO-Galaxy/PAPO_eval"


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow cache that ``load_dataset`` writes for local folders inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


def check_outputs(out: Path, content: dict[str, fixtures.Benchmark], with_ids: bool = True) -> None:
    """Every benchmark of ``content`` converted: 6 rows in, 2 written (with their images), 4 skipped."""
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(f"{name}.parquet" for name in content)
    for name, bench in content.items():
        summary = json.loads((out / f"{name}.summary.json").read_text())
        assert (summary["rows_in"], summary["rows_written"]) == (6, 2), name
        assert summary["skipped_by_reason"] == fixtures.EXPECTED_SKIPS, name
        skipped = [json.loads(line) for line in (out / f"{name}.skipped.jsonl").read_text().splitlines()]
        assert sorted(s["index"] for s in skipped) == [2, 3, 4, 5]
        records = pq.read_table(out / f"{name}.parquet").to_pylist()
        for record, index in zip(records, fixtures.WRITTEN, strict=True):
            assert [image["bytes"] for image in record["images"]] == bench.row_images[index]
            assert [image["path"] for image in record["images"]] == bench.row_paths[index]
            assert record["data_source"] == f"papo/{name}"
            assert record["extra_info"]["benchmark"] == name
            assert record["extra_info"]["group"] == benchmark_group(name)
            assert record["extra_info"]["id"] == (str(bench.rows[index]["id"]) if with_ids else None)
        assert [r["reward_model"]["ground_truth"] for r in records] == ["3", "B"]
        details = {s["index"]: s["detail"] for s in skipped}
        assert f"{name}-absent.png" in details[2] and "not found" in details[2]
        assert "'dup.png' matches" in details[3]


def test_zip_table_names_every_benchmark_as_the_hub_does():
    assert eval_layouts.IMAGE_ZIPS == fixtures.HUB_ZIPS
    assert tuple(eval_layouts.IMAGE_ZIPS) == EVAL_BENCHMARKS == fixtures.BENCHMARKS


def test_hub_layout_fixture_is_what_load_dataset_reads(tmp_path):
    """The fixture is a dataset repository to ``datasets``: its README's configs name the nine splits."""
    import datasets

    root = tmp_path / "PAPO_eval"
    content = fixtures.write_hub_layout(root)
    assert datasets.get_dataset_split_names(str(root)) == list(EVAL_BENCHMARKS)
    split = datasets.load_dataset(str(root), split="We_Math")
    assert split.column_names == ["messages", "images", "id"]
    assert split.to_list() == content["We_Math"].rows


def test_hub_layout_folder_all_nine(tmp_path, capsys):
    root = tmp_path / "PAPO_eval"
    content = fixtures.write_hub_layout(root)
    out = tmp_path / "out"
    assert papo_eval.main(["--source", str(root), "--out", str(out)]) == 0
    check_outputs(out, content)
    # The two irregular names are the zips these benchmarks' images came from.
    for name, zip_name in (("We_Math", "We-Math_We-Math_images.zip"), ("PAPO_MMK12", "PAPO_MMK12_test_images.zip")):
        details = [json.loads(line)["detail"] for line in (out / f"{name}.skipped.jsonl").read_text().splitlines()]
        assert any(str(root / zip_name) in detail for detail in details), details


def test_hub_layout_folder_converts_through_the_command_offline(tmp_path):
    """``python -m data_prep.papo_eval --source <hub-layout folder> --out DIR`` with the hub unreachable."""
    root = tmp_path / "PAPO_eval"
    content = fixtures.write_hub_layout(root)
    out = tmp_path / "out"
    env = user_env({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")})
    done = subprocess.run(
        [sys.executable, "-m", "data_prep.papo_eval", "--source", str(root), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check_outputs(out, content)


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """The hub download step replaced by copies from a local hub-layout folder; returns
    ``(content, downloaded file names)``. Everything after the download is the real code."""
    repository = tmp_path / "hub_repository"
    content = fixtures.write_hub_layout(repository)
    cache = tmp_path / "hub_cache"
    downloaded: list[str] = []

    def rows(repo_id: str, split: str):
        assert repo_id == HUB_ID
        return eval_layouts.load_split(str(repository), split)

    def file(repo_id: str, filename: str) -> Path:
        assert repo_id == HUB_ID
        downloaded.append(filename)
        cache.mkdir(exist_ok=True)
        return Path(shutil.copy(repository / filename, cache / filename))

    monkeypatch.setattr(eval_layouts, "hub_rows", rows)
    monkeypatch.setattr(eval_layouts, "hub_file", file)
    return content, downloaded


def test_hub_id_downloads_rows_per_split_and_one_zip_per_benchmark(local_hub, tmp_path):
    content, downloaded = local_hub
    out = tmp_path / "out"
    assert papo_eval.main(["--out", str(out)]) == 0  # default --source is the hub id
    check_outputs(out, content)
    assert sorted(downloaded) == sorted(fixtures.HUB_ZIPS.values())


def test_hub_id_downloads_only_the_chosen_benchmarks_zips(local_hub, tmp_path):
    content, downloaded = local_hub
    out = tmp_path / "out"
    chosen = ["We_Math", "PAPO_MMK12"]
    assert papo_eval.main(["--source", HUB_ID, "--out", str(out), "--splits", *chosen]) == 0
    check_outputs(out, {name: content[name] for name in chosen})
    assert downloaded == ["We-Math_We-Math_images.zip", "PAPO_MMK12_test_images.zip"]


def test_hub_id_failed_download_says_what_to_do_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(eval_layouts, "hub_rows", lambda repo_id, split: fixtures_table(tmp_path, split))

    def offline(repo_id: str, filename: str) -> Path:
        raise OSError("network unreachable")

    monkeypatch.setattr(eval_layouts, "hub_file", offline)
    out = tmp_path / "out"
    assert papo_eval.main(["--out", str(out), "--splits", "We_Math"]) == 2
    err = capsys.readouterr().err
    assert "cannot download We-Math_We-Math_images.zip" in err and "--source" in err
    assert not out.exists() or not list(out.glob("*.parquet"))


def fixtures_table(tmp_path: Path, split: str):
    root = tmp_path / "rows_only"
    if not root.exists():
        fixtures.write_hub_layout(root, names=(split,))
    return eval_layouts.load_split(str(root), split)


def test_authors_extracted_layout_all_nine(tmp_path):
    root = tmp_path / "eval_data"
    content = fixtures.write_authors_layout(root)
    out = tmp_path / "out"
    assert papo_eval.main(["--source", str(root), "--out", str(out)]) == 0
    check_outputs(out, content, with_ids=False)


def test_json_layouts_all_nine(tmp_path):
    root = tmp_path / "json"
    content = fixtures.write_json_layout(root)
    out = tmp_path / "out"
    assert papo_eval.main(["--source", str(root), "--out", str(out)]) == 0
    check_outputs(out, content)


def test_hub_layout_without_a_benchmarks_zip_skips_its_rows_naming_the_zip(tmp_path, capsys):
    root = tmp_path / "PAPO_eval"
    fixtures.write_hub_layout(root, names=("We_Math",))
    (root / "We-Math_We-Math_images.zip").unlink()
    out = tmp_path / "out"
    assert papo_eval.main(["--source", str(root), "--out", str(out), "--splits", "We_Math"]) == 0
    assert "no image zip for We_Math (looked for We-Math_We-Math_images.zip" in capsys.readouterr().err
    summary = json.loads((out / "We_Math.summary.json").read_text())
    assert (summary["rows_written"], summary["skipped_by_reason"]) == (0, {"missing_image_file": 6})
    detail = json.loads((out / "We_Math.skipped.jsonl").read_text().splitlines()[0])["detail"]
    assert "'We_Math-0.png' not found" in detail
    assert f"no zip archive (looked for We-Math_We-Math_images.zip or We_Math.zip under {root})" in detail


def test_hub_layout_folder_missing_split_names_the_splits_found(tmp_path, capsys):
    root = tmp_path / "PAPO_eval"
    fixtures.write_hub_layout(root, names=("We_Math",))
    assert papo_eval.main(["--source", str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot load split 'hiyouga_geometry3k' from the hub-layout folder" in err and "We_Math" in err
    assert not (tmp_path / "out" / "We_Math.parquet").exists()  # nothing written before every split is found
