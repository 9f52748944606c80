"""``ImageResolver``: a row's image path finds a zip member or file by its longest matching path
suffix; missing and ambiguous paths are row problems naming the path and the archive searched."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.problems import RowProblem
from data_prep.resolver import ImageResolver
from papo_tools.journey.hub_layout import write_zip


@pytest.fixture
def archive(tmp_path) -> Path:
    return write_zip(
        tmp_path / "bench_images.zip",
        {
            "x/1.png": b"one",
            "x/sub/2.png": b"two",
            "a/dup.png": b"first",
            "b/dup.png": b"second",
            "__MACOSX/x/1.png": b"junk",  # zip-tool metadata: never a candidate
            "x/._1.png": b"junk",
        },
    )


@pytest.mark.parametrize("path", ["images/x/1.png", "x/1.png", "1.png", "./images/x/1.png", "images\\x\\1.png"])
def test_any_prefix_finds_the_member_by_its_longest_suffix(archive, tmp_path, path):
    with ImageResolver(None, [archive]) as resolver:
        assert resolver.find(path) == {"bytes": b"one", "path": path.replace("\\", "/").removeprefix("./")}


def test_longer_suffix_disambiguates(archive):
    with ImageResolver(None, [archive]) as resolver:
        assert resolver.find("images/a/dup.png")["bytes"] == b"first"
        assert resolver.find("b/dup.png")["bytes"] == b"second"
        assert resolver.find("sub/2.png")["bytes"] == b"two"


def test_ambiguous_path_names_the_path_the_candidates_and_the_zip(archive):
    with ImageResolver(None, [archive]) as resolver, pytest.raises(RowProblem) as caught:
        resolver.find("images/dup.png")
    assert caught.value.reason == "ambiguous_image_path"
    detail = caught.value.detail
    assert "'images/dup.png' matches 2 different images" in detail
    assert "bench_images.zip:a/dup.png" in detail and "bench_images.zip:b/dup.png" in detail
    assert str(archive) in detail


def test_missing_path_names_the_path_and_the_zip(archive, tmp_path):
    with ImageResolver(tmp_path / "empty", [archive]) as resolver, pytest.raises(RowProblem) as caught:
        resolver.find("images/x/3.png")
    assert caught.value.reason == "missing_image_file"
    assert (
        f"'images/x/3.png' not found in image files under {tmp_path / 'empty'} and zip {archive}" in caught.value.detail
    )


def test_extracted_copy_next_to_its_zip_is_not_ambiguous(archive, tmp_path):
    root = tmp_path / "repo"
    (root / "images" / "x").mkdir(parents=True)
    (root / "images" / "x" / "1.png").write_bytes(b"one")  # the same image, extracted
    (root / "images" / "y").mkdir()
    (root / "images" / "y" / "2.png").write_bytes(b"other two")
    with ImageResolver(root, [archive]) as resolver:
        assert resolver.find("x/1.png")["bytes"] == b"one"
        with pytest.raises(RowProblem) as caught:  # y/2.png on disk and x/sub/2.png in the zip differ
            resolver.find("2.png")
        assert caught.value.reason == "ambiguous_image_path"
        assert resolver.find("y/2.png")["bytes"] == b"other two"


def test_exact_file_relative_to_the_row_file_wins(tmp_path):
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "p.png").write_bytes(b"next to the rows")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "p.png").write_bytes(b"elsewhere")
    with ImageResolver(tmp_path, []) as resolver:
        assert resolver.find("p.png", tmp_path / "split")["bytes"] == b"next to the rows"
        with pytest.raises(RowProblem):
            resolver.find("p.png", tmp_path)  # two different p.png under the root, neither exact


def test_only_the_given_archives_are_searched(archive, tmp_path):
    write_zip(tmp_path / "other_benchmark.zip", {"x/9.png": b"nine"})
    with ImageResolver(None, [archive]) as resolver, pytest.raises(RowProblem):
        resolver.find("x/9.png")
    with ImageResolver(tmp_path) as resolver:  # no archives given: every zip under the root
        assert resolver.find("x/9.png")["bytes"] == b"nine"
