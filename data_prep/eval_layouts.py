"""Where the rows and the images of each ``PAPO-Galaxy/PAPO_eval`` benchmark are.

The hub repository serves each benchmark as a split that ``datasets.load_dataset(repo, split=...)``
reads (parquet shards under ``data/`` named by the ``configs`` block of its ``README.md``, as
``push_to_hub`` writes them) and its images as one zip per benchmark at the repository root
(:data:`IMAGE_ZIPS`). A ``--source`` is one of:

* a hub id: the rows of each chosen split through ``load_dataset(id, split=<benchmark>)`` and only
  the zips of the chosen benchmarks through ``huggingface_hub.hf_hub_download``;
* a local folder in the hub layout (a copy of the repository: ``README.md`` with a ``configs``
  block, or parquet shards under ``data/``): the same code with the folder in place of the id and
  the zips found in the folder instead of downloaded;
* a local folder with JSON splits: the authors' extracted layout (``papo/<benchmark>.json`` and an
  ``images/`` folder) or ``<benchmark>.json``/``.jsonl`` anywhere under it (or as named by a
  LLaMA-Factory ``dataset_info.json``), images extracted or in the benchmark's zip;
* one split's ``.json``/``.jsonl`` file.

Images are then found by :class:`data_prep.resolver.ImageResolver` among the image files of the
local folder (if any) and the members of the benchmark's zip(s).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from data_prep.problems import DataPrepError
from data_prep.resolver import FolderImages
from data_prep.sharegpt import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, locate_split_file
from data_prep.sources import TableSource, check_local, dataset_table_source, is_hub_id, open_json
from recipe.papo.prompt import EVAL_BENCHMARKS

# The image archive of each benchmark at the root of PAPO-Galaxy/PAPO_eval (names as the authors'
# download tooling uses them; two do not follow the split name).
IMAGE_ZIPS: dict[str, str] = {
    "hiyouga_geometry3k": "hiyouga_geometry3k_images.zip",
    "AI4Math_MathVista": "AI4Math_MathVista_images.zip",
    "We_Math": "We-Math_We-Math_images.zip",
    "PAPO_MMK12": "PAPO_MMK12_test_images.zip",
    "AI4Math_MathVerse": "AI4Math_MathVerse_images.zip",
    "AI4Math_MathVerse_vision_dependent": "AI4Math_MathVerse_vision_dependent_images.zip",
    "BUAADreamer_clevr_count_70k": "BUAADreamer_clevr_count_70k_images.zip",
    "lscpku_LogicVista": "lscpku_LogicVista_images.zip",
    "MMMU_MMMU_Pro": "MMMU_MMMU_Pro_images.zip",
}
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)
OFFLINE_HINT = (
    "Without network access, copy the repository folder on a machine that has it (for example "
    "`hf download PAPO-Galaxy/PAPO_eval --repo-type dataset --local-dir PAPO_eval`) and pass "
    "--source PAPO_eval."
)


def describe_error(error: Exception) -> str:
    """``Type: message`` of ``error``, without a trailing full stop (messages add their own)."""
    return f"{type(error).__name__}: {str(error).rstrip('.')}"


def archive_names(benchmark: str) -> tuple[str, ...]:
    """File names of ``benchmark``'s image zip: the hub's name, then ``<benchmark>.zip``."""
    return (IMAGE_ZIPS[benchmark], f"{benchmark}.zip")


@dataclass(frozen=True)
class BenchmarkSource:
    """One benchmark's rows and where its images are.

    Attributes:
        benchmark: the split name (one of :data:`recipe.papo.prompt.EVAL_BENCHMARKS`).
        table: the rows (``messages``, ``images``, optionally ``id``).
        image_root: local folder whose image files are searched, or ``None`` (hub download).
        archives: the benchmark's zip files (empty when none was found).
        folder: shared :class:`FolderImages` of ``image_root``.
    """

    benchmark: str
    table: TableSource
    image_root: Path | None
    archives: tuple[Path, ...]
    folder: FolderImages | None


def load_split(location: str, split: str) -> TableSource:
    """Rows of ``split`` from a hub id or a local folder in the hub layout, via ``datasets.load_dataset``."""
    import datasets

    dataset = datasets.load_dataset(location, split=split)
    return dataset_table_source(dataset, f"{location} (split {split})")


def hub_rows(repo_id: str, split: str) -> TableSource:
    """Download step: split ``split`` of hub dataset ``repo_id`` (cached by ``datasets``)."""
    return load_split(repo_id, split)


def hub_file(repo_id: str, filename: str) -> Path:
    """Download step: file ``filename`` of hub dataset ``repo_id`` (cached by ``huggingface_hub``)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset"))


class HubDownloads:
    """A hub source: each chosen split's rows and each chosen benchmark's zip, downloaded."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id

    def rows(self, benchmark: str) -> TableSource:
        try:
            return hub_rows(self.repo_id, benchmark)
        except Exception as error:
            raise DataPrepError(
                f"cannot load split {benchmark!r} of hub dataset {self.repo_id!r}: {describe_error(error)}. "
                + OFFLINE_HINT
            ) from None

    def archive(self, benchmark: str) -> Path | None:
        name = IMAGE_ZIPS[benchmark]
        print(f"papo_eval: downloading {name} from {self.repo_id}", file=sys.stderr)
        try:
            return hub_file(self.repo_id, name)
        except Exception as error:
            raise DataPrepError(
                f"cannot download {name} (the images of {benchmark}) from hub dataset {self.repo_id!r}: "
                f"{describe_error(error)}. " + OFFLINE_HINT
            ) from None


class FolderFiles:
    """A local copy of the hub repository: rows through ``load_dataset(<folder>)``, zips in the folder."""

    def __init__(self, root: Path):
        self.root = root

    def rows(self, benchmark: str) -> TableSource:
        try:
            return load_split(str(self.root), benchmark)
        except Exception as error:
            raise DataPrepError(
                f"cannot load split {benchmark!r} from the hub-layout folder {self.root} (README.md configs / "
                f"data/*.parquet): {describe_error(error)}. Copy the whole repository folder, or choose "
                "other --splits."
            ) from None

    def archive(self, benchmark: str) -> Path | None:
        return find_archive(self.root, benchmark)


def find_archive(root: Path, benchmark: str) -> Path | None:
    """``benchmark``'s zip under ``root`` (see :func:`archive_names`), or ``None``; several: error."""
    for name in archive_names(benchmark):
        found = sorted(path for path in root.rglob(name) if path.is_file())
        if len(found) > 1:
            raise DataPrepError(f"several {name} under {root}: {', '.join(map(str, found))}; keep one.")
        if found:
            return found[0]
    return None


def is_hub_layout(root: Path) -> bool:
    """Whether ``root`` looks like a copy of a hub dataset repository: a ``README.md`` whose YAML
    front matter has a ``configs`` block, or parquet files under ``data/``."""
    readme = root / "README.md"
    if readme.is_file():
        match = FRONT_MATTER.match(readme.read_text(encoding="utf-8", errors="replace"))
        if match:
            try:
                card = yaml.safe_load(match.group(1))
            except yaml.YAMLError as error:
                raise DataPrepError(f"cannot parse the YAML header of {readme}: {error}") from None
            if isinstance(card, dict) and card.get("configs"):
                return True
    return (root / "data").is_dir() and any((root / "data").rglob("*.parquet"))


def plan_sources(source: str, splits: Sequence[str] | None) -> list[BenchmarkSource]:
    """Rows and image locations of the chosen benchmarks (default: all nine) of ``source``.

    Everything is located (and, for a hub id, downloaded) and the columns are checked before any
    output is written, so a missing split, column or archive stops the command early.
    """
    if is_hub_id(source):
        chosen = list(splits) if splits is not None else list(EVAL_BENCHMARKS)
        return _from_files(HubDownloads(source), chosen, image_root=None)
    path = check_local(source).resolve()
    if path.is_file():
        return [_single_file(path, splits)]
    chosen = list(splits) if splits is not None else list(EVAL_BENCHMARKS)
    if is_hub_layout(path):
        return _from_files(FolderFiles(path), chosen, image_root=path)
    folder = FolderImages(path)
    return [_json_split(path, benchmark, locate_split_file(path, benchmark), folder) for benchmark in chosen]


def _from_files(files: HubDownloads | FolderFiles, chosen: Sequence[str], image_root: Path | None):
    rows = {benchmark: _checked(files.rows(benchmark)) for benchmark in chosen}
    folder = FolderImages(image_root) if image_root is not None else None
    plan = []
    for benchmark in chosen:
        archive = files.archive(benchmark)
        plan.append(BenchmarkSource(benchmark, rows[benchmark], image_root, (archive,) if archive else (), folder))
    return plan


def _json_split(root: Path, benchmark: str, split_file: Path, folder: FolderImages) -> BenchmarkSource:
    archive = find_archive(root, benchmark)
    return BenchmarkSource(benchmark, _checked(open_json(split_file)), root, (archive,) if archive else (), folder)


def _checked(table: TableSource) -> TableSource:
    table.require(REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
    return table


def _single_file(path: Path, splits: Sequence[str] | None) -> BenchmarkSource:
    if splits is not None and len(splits) != 1:
        raise DataPrepError(f"{path} is one split; pass at most one --splits value to name it.")
    benchmark = splits[0] if splits else path.stem
    if benchmark not in EVAL_BENCHMARKS:
        raise DataPrepError(
            f"cannot tell which benchmark {path} is; name it with --splits (one of {', '.join(EVAL_BENCHMARKS)})."
        )
    return _json_split(path.parent, benchmark, path, FolderImages(path.parent))
