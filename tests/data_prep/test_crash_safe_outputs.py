"""A data_prep run killed with SIGKILL while it swaps its outputs in leaves a consistent set.

Each test runs ``python -m data_prep.virl39k`` as a user would, with the writer's test hook
(``DATA_PREP_TEST_PAUSE=<point>:<marker>``) making the child stop at one point of the swap; the test
waits for the marker, kills the child with SIGKILL (no handler, no cleanup) and checks that
``virl39k_train.{parquet,skipped.jsonl,summary.json}`` are exactly the previous run's complete set or
exactly the new run's (byte for byte against uninterrupted runs of the same input), with the summary's
counts matching the parquet and the skip log. Then a rerun completes and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import data_prep_fixtures as fx
import pyarrow.parquet as pq
import pytest
from user_env import user_env

from data_prep import writer

REPO = Path(__file__).resolve().parents[2]
STEM = "virl39k_train"
KINDS = ("parquet", "skipped.jsonl", "summary.json")
# The summary names the folder it was written to; everything else must be equal byte for byte.
PATH_FIELDS = ("output", "skipped_rows_file")
OLD_ARGS = ()  # the previous run: all 9 fixture rows (4 written, 5 skipped)
NEW_ARGS = ("--max-rows", "7")  # the new run: 7 rows (3 written, 4 skipped)
STRICT_ARGS = ("--strict",)  # a completed --strict failure: summary and log, no parquet


def run_virl39k(source: Path, out: Path, *args: str, pause: str | None = None, marker: Path | None = None):
    """``python -m data_prep.virl39k --source SOURCE --out OUT ARGS``, started, not waited for."""
    extra = {writer.PAUSE_ENV: f"{pause}:{marker}"} if pause else {}
    command = [sys.executable, "-m", "data_prep.virl39k", "--source", str(source), "--out", str(out), *args]
    return subprocess.Popen(
        command, cwd=REPO, env=user_env(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, expected: int = 0) -> None:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == expected, f"exit {process.returncode}:\n{stdout[-2000:]}\n{stderr[-3000:]}"


def kill_at(source: Path, out: Path, args: tuple[str, ...], point: str, tmp_path: Path) -> None:
    """Run with ``args``, wait until the child pauses at ``point``, SIGKILL it."""
    marker = tmp_path / f"paused-at-{point}"
    marker.unlink(missing_ok=True)
    process = run_virl39k(source, out, *args, pause=point, marker=marker)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before pausing at {point}: {process.communicate()}")
        assert time.monotonic() < deadline, f"the run never reached {point}"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def visible_set(out: Path) -> dict[str, object]:
    """The three user-visible outputs as read through their paths (None: no such file), summary
    without its path fields; asserts the set is internally consistent."""
    paths = {kind: out / f"{STEM}.{kind}" for kind in KINDS}
    summary = json.loads(paths["summary.json"].read_text())
    skipped = paths["skipped.jsonl"].read_text().splitlines()
    assert len(skipped) == summary["rows_skipped"], "the skip log is not the summary's"
    if summary["status"] == "ok":
        parquet = pq.ParquetFile(paths["parquet"])
        assert parquet.metadata.num_rows == summary["rows_written"], "the parquet is not the summary's"
        assert parquet.metadata.num_row_groups == summary["row_groups"]
        assert summary["rows_in"] == summary["rows_written"] + summary["rows_skipped"]
    else:
        assert not paths["parquet"].exists(), "a failed --strict run must leave no parquet"
    return {
        "parquet": paths["parquet"].read_bytes() if paths["parquet"].exists() else None,
        "skipped.jsonl": paths["skipped.jsonl"].read_bytes(),
        "summary.json": {key: value for key, value in summary.items() if key not in PATH_FIELDS},
    }


def no_leftovers(out: Path) -> None:
    """Only the current version folder, its link and the three visible links remain."""
    versions = out / writer.STATE_DIR / STEM
    assert sorted(p.name for p in versions.iterdir()) == sorted([writer.CURRENT, os.readlink(versions / "current")])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != writer.STATE_DIR]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The 9 fixture rows of ``fx.problem_rows()`` as a parquet source (built once per module)."""
    rows, _, _ = fx.problem_rows()
    return fx.write_parquet(tmp_path_factory.mktemp("source") / "v.parquet", rows)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> dict[tuple[str, ...], dict]:
    """The outputs of uninterrupted runs of each argument set, each in a fresh folder (once per module)."""
    sets = {}
    for args in (OLD_ARGS, NEW_ARGS, STRICT_ARGS):
        out = tmp_path_factory.mktemp("reference")
        finish(run_virl39k(source, out, *args), expected=1 if args == STRICT_ARGS else 0)
        sets[args] = visible_set(out)
    assert sets[OLD_ARGS] != sets[NEW_ARGS]
    return sets


@pytest.mark.parametrize(
    ("point", "new_args", "survivor"),
    [
        ("before_switch", NEW_ARGS, "old"),  # everything of the new run is on disk; only the switch is left
        ("after_switch", NEW_ARGS, "new"),  # switched; the old version is not deleted yet
        ("before_switch", STRICT_ARGS, "old"),
        ("after_switch", STRICT_ARGS, "new"),  # the parquet link dangles until it is removed
    ],
)
def test_sigkill_during_the_swap_leaves_the_old_or_the_new_complete_set(
    source, reference, tmp_path, point, new_args, survivor
):
    out = tmp_path / "out"
    finish(run_virl39k(source, out, *OLD_ARGS))
    assert visible_set(out) == reference[OLD_ARGS]

    kill_at(source, out, new_args, point, tmp_path)
    assert visible_set(out) == reference[OLD_ARGS if survivor == "old" else new_args]

    # A later run completes and deletes what the killed one left.
    finish(run_virl39k(source, out, *NEW_ARGS))
    assert visible_set(out) == reference[NEW_ARGS]
    no_leftovers(out)


def test_sigkill_while_adopting_plain_files_of_an_earlier_data_prep_keeps_them(source, reference, tmp_path):
    """Outputs written as plain files (data_prep before versioned outputs) stay whole when the first
    versioned run is killed while turning them into links, and when it is killed before its switch."""
    out = tmp_path / "out"
    finish(run_virl39k(source, out, *OLD_ARGS))
    for kind in KINDS:  # the earlier layout: three plain files, nothing else
        path = out / f"{STEM}.{kind}"
        content = path.read_bytes()
        path.unlink()
        path.write_bytes(content)
    for folder in sorted((out / writer.STATE_DIR).rglob("*"), reverse=True):
        folder.unlink() if folder.is_symlink() or folder.is_file() else folder.rmdir()
    (out / writer.STATE_DIR).rmdir()
    assert visible_set(out) == reference[OLD_ARGS]

    kill_at(source, out, NEW_ARGS, "adopting", tmp_path)  # one path is a link by now, two are plain files
    kinds = [(out / f"{STEM}.{kind}").is_symlink() for kind in KINDS]
    assert sorted(kinds) == [False, False, True]
    assert visible_set(out) == reference[OLD_ARGS]

    kill_at(source, out, NEW_ARGS, "before_switch", tmp_path)
    assert all((out / f"{STEM}.{kind}").is_symlink() for kind in KINDS)
    assert visible_set(out) == reference[OLD_ARGS]

    finish(run_virl39k(source, out, *NEW_ARGS))
    assert visible_set(out) == reference[NEW_ARGS]
    no_leftovers(out)


def test_the_visible_parquet_is_what_verl_reads(source, tmp_path):
    """``data.train_files=<out>/virl39k_train.parquet`` is a link; ``datasets`` (verl's reader) follows it."""
    import datasets

    out = tmp_path / "out"
    finish(run_virl39k(source, out))
    assert (out / f"{STEM}.parquet").is_symlink()
    loaded = datasets.load_dataset(
        "parquet", data_files=str(out / f"{STEM}.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert len(loaded) == 4 and loaded[0]["extra_info"]["id"] == "a0"
