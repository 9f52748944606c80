"""Find images named by relative paths, among files on disk and members of zip archives.

Row files (ShareGPT evaluation splits, JSON training rows) name images by paths whose prefix
depends on where the images were once extracted (``images/x/1.png``, ``x/1.png`` or ``1.png`` for
the zip member ``x/1.png``). A path is resolved, in this order:

1. as an existing file: absolute, relative to the row file's folder, or relative to the root;
2. by its longest matching path suffix among the indexed images: the image files under the root
   and the members of the given zip archives (read in place, never extracted). The longest suffix
   of the path (whole components, at least the file name) that ends some indexed image selects the
   candidates; exactly one candidate (or several with identical bytes, such as an extracted copy
   next to its zip) is the image, several different ones make the path ambiguous.

A path that matches nothing, or is ambiguous, is a row problem (``missing_image_file``,
``ambiguous_image_path``) whose detail names the path, the folder and the archives searched.
"""

from __future__ import annotations

import functools
import os
import posixpath
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from data_prep.images import MissingImage
from data_prep.problems import DataPrepError, RowProblem

# File extensions PIL can open: only such files on disk are indexed (not parquet, JSON or zips).
IMAGE_SUFFIXES = frozenset(suffix.lower() for suffix in Image.registered_extensions())
# Candidates compared byte for byte before a path is called ambiguous.
MAX_COMPARED_CANDIDATES = 8
# Candidates named in an ambiguity message.
MAX_NAMED_CANDIDATES = 4


def path_parts(path: str) -> tuple[str, ...]:
    """The components of a relative path, ``\\`` read as ``/``, without empty, ``.`` and ``..`` parts."""
    return tuple(part for part in path.replace("\\", "/").split("/") if part not in ("", ".", ".."))


def is_archive_junk(member: str) -> bool:
    """macOS metadata that zip tools add (``__MACOSX/`` folders, ``._name`` resource forks)."""
    parts = path_parts(member)
    return not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._")


@dataclass(frozen=True)
class Candidate:
    """An indexed image: a file on disk (``archive`` is ``None``, ``name`` its absolute path) or a
    member ``name`` of zip ``archive``."""

    archive: Path | None
    name: str

    def describe(self) -> str:
        return self.name if self.archive is None else f"{self.archive.name}:{self.name}"


class SuffixIndex:
    """Indexed images by every path suffix of their relative path (``a/b/c.png``: ``c.png``,
    ``b/c.png``, ``a/b/c.png``)."""

    def __init__(self) -> None:
        self._by_suffix: dict[tuple[str, ...], list[Candidate]] = {}

    def add(self, relative: str, candidate: Candidate) -> None:
        parts = path_parts(relative)
        for start in range(len(parts)):
            self._by_suffix.setdefault(parts[start:], []).append(candidate)

    def get(self, suffix: tuple[str, ...]) -> list[Candidate]:
        """The indexed images whose relative path ends with the components ``suffix``."""
        return self._by_suffix.get(suffix, [])

    def __bool__(self) -> bool:
        """Whether any image is indexed."""
        return bool(self._by_suffix)


def longest_suffix_match(parts: Sequence[str], indexes: Sequence[SuffixIndex]) -> list[Candidate]:
    """The images, across ``indexes``, ending with the longest suffix of ``parts`` that any of them ends with."""
    for start in range(len(parts)):
        found = [candidate for index in indexes for candidate in index.get(tuple(parts[start:]))]
        if found:
            return found
    return []


class FolderImages:
    """The image files under ``root`` (hidden folders such as ``.cache`` skipped), indexed by
    root-relative path on first use and shared by the resolvers of several splits."""

    def __init__(self, root: Path):
        self.root = root

    @functools.cached_property
    def index(self) -> SuffixIndex:
        index = SuffixIndex()
        for folder, subfolders, files in os.walk(self.root):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in sorted(files):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    path = Path(folder) / name
                    index.add(path.relative_to(self.root).as_posix(), Candidate(None, str(path)))
        return index

    def has_images(self) -> bool:
        return bool(self.index)


class ImageResolver:
    """Reads images named by relative paths from files under ``root`` and members of ``archives``.

    Args:
        root: folder whose image files are indexed and that exact relative paths start from; ``None``
            for none (rows downloaded from the hub, images only in archives).
        archives: zip files whose members are indexed; ``None`` means every ``*.zip`` under ``root``.
        folder: the :class:`FolderImages` of ``root`` when several resolvers share it.
        absent_archives: where the archive was looked for when none was found, for messages.
    """

    def __init__(
        self,
        root: Path | None,
        archives: Iterable[Path] | None = None,
        folder: FolderImages | None = None,
        absent_archives: str | None = None,
    ):
        self.root = root
        self.absent_archives = absent_archives
        self.archives = tuple(sorted(root.rglob("*.zip"))) if archives is None and root else tuple(archives or ())
        self._folder = folder or (FolderImages(root) if root is not None else None)
        self._zip_index: SuffixIndex | None = None
        self._open_zips: dict[Path, zipfile.ZipFile] = {}

    def __enter__(self) -> ImageResolver:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for archive in self._open_zips.values():
            archive.close()
        self._open_zips.clear()

    def _open(self, archive_path: Path) -> zipfile.ZipFile:
        archive = self._open_zips.get(archive_path)
        if archive is None:
            try:
                archive = self._open_zips[archive_path] = zipfile.ZipFile(archive_path)
            except (OSError, zipfile.BadZipFile) as error:
                raise DataPrepError(
                    f"cannot read zip archive {archive_path}: {error}. Download it again or remove it."
                ) from None
        return archive

    def _indexes(self) -> tuple[SuffixIndex, ...]:
        if self._zip_index is None:
            self._zip_index = SuffixIndex()
            for archive_path in self.archives:
                for info in self._open(archive_path).infolist():
                    if not info.is_dir() and not is_archive_junk(info.filename):
                        self._zip_index.add(info.filename, Candidate(archive_path, info.filename))
        return (self._zip_index,) if self._folder is None else (self._folder.index, self._zip_index)

    def read(self, candidate: Candidate) -> bytes:
        if candidate.archive is None:
            return Path(candidate.name).read_bytes()
        return self._open(candidate.archive).read(candidate.name)

    def searched(self) -> str:
        """Where images are looked for, for messages."""
        places = [f"image files under {self.root}"] if self.root is not None else []
        if self.archives:
            places.append("zip " + ", ".join(str(path) for path in self.archives))
        else:
            places.append(f"no zip archive ({self.absent_archives})" if self.absent_archives else "no zip archive")
        return " and ".join(places)

    def find(self, path: str, relative_to: Path | None = None) -> dict[str, bytes | str]:
        """``{bytes, path}`` for image ``path`` (see the module docstring for the order of lookup).

        Raises:
            RowProblem: ``missing_image_file`` or ``ambiguous_image_path``, naming what was searched.
        """
        stored = posixpath.normpath(path.replace("\\", "/"))
        exact = [Path(path)] if Path(path).is_absolute() else []
        if not exact:
            exact = [base / path for base in (relative_to, self.root) if base is not None]
        for candidate in exact:
            if candidate.is_file():
                return {"bytes": candidate.read_bytes(), "path": stored}
        parts = path_parts(path)
        found = longest_suffix_match(parts, self._indexes())
        if not found:
            raise RowProblem("missing_image_file", f"{path!r} not found in {self.searched()}")
        contents = [self.read(candidate) for candidate in found[:MAX_COMPARED_CANDIDATES]]
        if len(found) > MAX_COMPARED_CANDIDATES or len(set(contents)) > 1:
            named = ", ".join(candidate.describe() for candidate in found[:MAX_NAMED_CANDIDATES])
            more = f" and {len(found) - MAX_NAMED_CANDIDATES} more" if len(found) > MAX_NAMED_CANDIDATES else ""
            raise RowProblem(
                "ambiguous_image_path",
                f"{path!r} matches {len(found)} different images in {self.searched()}: {named}{more}",
            )
        return {"bytes": contents[0], "path": stored}

    def resolve(self, path: str, relative_to: Path | None) -> dict[str, bytes | str] | MissingImage:
        """:meth:`find`, with a problem returned as a :class:`MissingImage` marker (skipped later)."""
        try:
            return self.find(path, relative_to)
        except RowProblem as problem:
            return MissingImage(path=path, tried=(problem.detail,))
