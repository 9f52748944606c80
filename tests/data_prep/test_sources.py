"""Fatal bad input: missing columns and unreadable sources stop with a message naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import data_prep_fixtures as fx
import pytest

from data_prep import geometry3k, mmk12, papo_eval, virl39k
from data_prep.problems import DataPrepError
from data_prep.sources import available_splits, open_table, split_of_parquet


def run(module, argv, capsys) -> tuple[int, str]:
    code = module.main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("layout", ["parquet", "saved", "json"])
def test_missing_column_names_it_and_lists_columns_found(tmp_path, capsys, layout):
    rows, _, _ = fx.problem_rows(with_missing_file=False)
    if layout == "parquet":
        source = fx.write_parquet(tmp_path / "v.parquet", rows, columns=("id", "images", "problem"))
    elif layout == "saved":
        source = tmp_path / "saved"
        fx.write_saved_dataset(source, rows)
        import datasets

        datasets.load_from_disk(str(source)).remove_columns("answer").save_to_disk(str(tmp_path / "saved2"))
        source = tmp_path / "saved2"
    else:
        source = tmp_path / "v.jsonl"
        source.write_text("".join(json.dumps({"images": [], "problem": "q", "solution": "1"}) + "\n" for _ in range(2)))
    code, err = run(virl39k, ["--source", source, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert "missing column 'answer'" in err
    assert str(source) in err
    found = {"parquet": "id, images, problem.", "saved": "id, problem, images.", "json": "images, problem, solution."}[
        layout
    ]
    assert f"Columns found: {found}" in err
    assert not (tmp_path / "out" / "virl39k_train.parquet").exists()


def test_sharegpt_missing_column(tmp_path, capsys):
    (tmp_path / "We_Math.json").write_text(json.dumps([{"conversations": [], "images": []}]))
    code, err = run(papo_eval, ["--source", tmp_path, "--out", tmp_path / "out", "--splits", "We_Math"], capsys)
    assert code == 2
    assert "missing column 'messages'" in err and "Columns found: conversations, images" in err


@pytest.mark.parametrize("form", ["absolute", "file-like", "in-existing-folder"])
def test_nonexistent_path(tmp_path, capsys, monkeypatch, form):
    """A missing path is reported as missing, also when it looks like owner/name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    missing = {
        "absolute": tmp_path / "nope" / "train.parquet",
        "file-like": Path("nope/train.parquet"),
        "in-existing-folder": Path("data/virl39k"),
    }[form]
    code, err = run(mmk12, ["--source", missing, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert f"source {str(missing)!r} does not exist" in err


def test_corrupt_parquet_file(tmp_path, capsys):
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"this is not parquet")
    code, err = run(virl39k, ["--source", bad, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert f"cannot read parquet file {bad}" in err


def test_unparseable_json_file(tmp_path, capsys):
    bad = tmp_path / "rows.json"
    bad.write_text("[{not json")
    code, err = run(virl39k, ["--source", bad, "--out", tmp_path / "out"], capsys)
    assert code == 2 and f"cannot read {bad}" in err


def test_directory_without_data(tmp_path, capsys):
    (tmp_path / "README.md").write_text("hi")
    code, err = run(virl39k, ["--source", tmp_path, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert "neither a saved dataset" in err and "README.md" in err


def test_unreadable_zip_archive(tmp_path, capsys):
    fx.write_sharegpt(tmp_path, "We_Math", zipped=False)
    (tmp_path / "We-Math_We-Math_images.zip").write_bytes(b"not a zip")  # the benchmark's archive
    code, err = run(papo_eval, ["--source", tmp_path, "--out", tmp_path / "out", "--splits", "We_Math"], capsys)
    assert code == 2 and f"cannot read zip archive {tmp_path / 'We-Math_We-Math_images.zip'}" in err


def test_hub_id_offline_says_to_pass_a_local_path(tmp_path, capsys, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    code, err = run(virl39k, ["--source", "nobody-xyz/no-such-dataset", "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert "cannot load hub dataset 'nobody-xyz/no-such-dataset'" in err and "--source" in err


def test_split_selection(tmp_path):
    rows, _, _ = fx.problem_rows(with_missing_file=False)
    saved = fx.write_saved_dataset(tmp_path / "dd", {"train": rows[:2], "test": rows[:1]})
    assert available_splits(str(saved)) == ("train", "test")
    assert open_table(str(saved), "test").num_rows == 1
    with pytest.raises(DataPrepError, match="has splits train, test; choose one with --split"):
        open_table(str(saved), None)
    with pytest.raises(DataPrepError, match="has no split 'val'; splits found: train, test"):
        open_table(str(saved), "val")
    single = fx.write_parquet(tmp_path / "one.parquet", rows)
    assert available_splits(str(single)) is None
    with pytest.raises(DataPrepError, match="holds a single split; drop --split train"):
        open_table(str(single), "train")


def test_hub_snapshot_parquet_folder_split_names(tmp_path):
    rows, _, _ = fx.problem_rows()
    for name, part in (
        ("train-00000-of-00002", rows[:3]),
        ("train-00001-of-00002", rows[3:]),
        ("test-00000-of-00001", rows[:2]),
    ):
        fx.write_parquet(tmp_path / "data" / f"{name}.parquet", part)
    assert split_of_parquet(tmp_path / "data" / "train-00001-of-00002.parquet") == "train"
    assert available_splits(str(tmp_path)) == ("test", "train")
    assert open_table(str(tmp_path), "train").num_rows == len(rows)


def test_geometry3k_one_split_source_needs_a_name(tmp_path, capsys):
    rows, _, _ = fx.problem_rows()
    single = fx.write_parquet(tmp_path / "g.parquet", rows)
    code, err = run(geometry3k, ["--source", single, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "name it with exactly one --splits value" in err


def test_mask_flags_need_precompute_masks(tmp_path, capsys):
    rows, _, _ = fx.problem_rows()
    source = fx.write_parquet(tmp_path / "v.parquet", rows)
    code, err = run(virl39k, ["--source", source, "--out", tmp_path / "out", "--mask-ratio", "0.5"], capsys)
    assert code == 2 and "--mask-ratio only apply with --precompute-masks" in err


def test_parquet_reading_memory_stays_flat(tmp_path):
    """Arrow memory while reading stays at a few batches (about 4 MB here), not the file size (16 MB).

    With pyarrow's default pre-buffering it would grow with every row group read (about 20 MB here).
    """
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())])))])
    path = tmp_path / "big.parquet"
    with pq.ParquetWriter(path, schema) as writer:
        for _ in range(16):
            rows = [{"images": [{"bytes": os.urandom(50_000), "path": None}]} for _ in range(20)]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    table = open_table(str(path), None)
    start, peak, rows_read = pa.total_allocated_bytes(), 0, 0
    for batch in table.read_batches(["images"], 20):
        rows_read += len(batch)
        peak = max(peak, pa.total_allocated_bytes() - start)
        del batch
    assert rows_read == 320
    assert peak < 8_000_000, f"peak Arrow allocation {peak} bytes for a 16 MB file read in 1 MB batches"
