"""Find images named by relative paths, in extracted folders or inside zip archives.

ShareGPT-style sources (``PAPO-Galaxy/PAPO_eval``) list images as paths relative to the JSON file
or to the dataset root, and ship the image folders zipped. A path ``a/b.png`` is looked up, in this
order, as a file relative to the JSON file's folder, as a file relative to the root, then as a
member of a zip archive under the root. A zip ``<dir>/<name>.zip`` is searched as if it were
extracted in place (member ``x.png`` is ``<dir>/x.png``) and as if extracted into a folder named
after it (``<dir>/<name>/x.png``), which covers archives with and without a top-level folder.
Archives are indexed once, lazily, in sorted order; the first archive that holds a path wins.
"""

from __future__ import annotations

import posixpath
import zipfile
from pathlib import Path

from data_prep.images import MissingImage
from data_prep.problems import DataPrepError


def _normalise(path: str) -> str:
    """``path`` as a normalised POSIX path without ``./`` (``..`` kept where it leads outside)."""
    return posixpath.normpath(path.replace("\\", "/"))


class ImageResolver:
    """Reads image files named relative to ``root`` from disk or from zip archives under it."""

    def __init__(self, root: Path):
        self.root = root
        self._zip_index: dict[str, tuple[Path, str]] | None = None
        self._open_zips: dict[Path, zipfile.ZipFile] = {}

    def __enter__(self) -> ImageResolver:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for archive in self._open_zips.values():
            archive.close()
        self._open_zips.clear()

    def _index_zips(self) -> dict[str, tuple[Path, str]]:
        """Map root-relative virtual paths to ``(archive, member)`` for every zip under ``root``."""
        index: dict[str, tuple[Path, str]] = {}
        for archive_path in sorted(self.root.rglob("*.zip")):
            folder = archive_path.parent.relative_to(self.root).as_posix()
            try:
                with zipfile.ZipFile(archive_path) as archive:
                    members = [info.filename for info in archive.infolist() if not info.is_dir()]
            except (OSError, zipfile.BadZipFile) as error:
                raise DataPrepError(
                    f"cannot read zip archive {archive_path}: {error}. Re-download it or remove it from {self.root}."
                ) from None
            for member in members:
                for virtual in (f"{folder}/{member}", f"{folder}/{archive_path.stem}/{member}"):
                    index.setdefault(_normalise(virtual), (archive_path, member))
        return index

    def _read_member(self, archive_path: Path, member: str) -> bytes:
        archive = self._open_zips.get(archive_path)
        if archive is None:
            archive = self._open_zips[archive_path] = zipfile.ZipFile(archive_path)
        return archive.read(member)

    def resolve(self, path: str, relative_to: Path) -> dict[str, bytes | str] | MissingImage:
        """``{bytes, path}`` for image ``path`` (relative to ``relative_to`` or the root, or absolute).

        Returns a :class:`MissingImage` (later skipped as ``missing_image_file``) when not found.
        """
        absolute = Path(path).is_absolute()
        candidates = [Path(path)] if absolute else [relative_to / path, self.root / path]
        for candidate in candidates:
            if candidate.is_file():
                return {"bytes": candidate.read_bytes(), "path": _normalise(path)}
        if self._zip_index is None:
            self._zip_index = self._index_zips()
        virtual_candidates = []
        for candidate in candidates:
            try:
                virtual_candidates.append(_normalise(candidate.relative_to(self.root).as_posix()))
            except ValueError:
                continue
        for virtual in virtual_candidates:
            found = self._zip_index.get(virtual)
            if found is not None:
                return {"bytes": self._read_member(*found), "path": _normalise(path)}
        tried = tuple(str(candidate) for candidate in dict.fromkeys(candidates))
        zip_note = f"zip archives under {self.root}" if self._zip_index else f"no zip archives under {self.root}"
        return MissingImage(path=path, tried=(*tried, zip_note))
