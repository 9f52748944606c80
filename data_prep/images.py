"""Image entries: read them into ``{bytes, path}``, check they decode, and pre-compute masked copies.

Source images come as encoded bytes, ``{bytes, path}`` dicts (the Hugging Face ``Image`` storage),
file paths, PIL images, or :class:`MissingImage` markers left by a reader that could not find a
file. Original encoded bytes are kept unchanged (no re-encoding, no quality loss); only PIL input
is encoded, losslessly as PNG, and images wider than 8 bits (16-bit and 32-bit integer ``I;16*`` /
``I``, 32-bit float ``F``) are rewritten as 8-bit PNG by the rule of
:func:`recipe.papo.image_rgb.to_eight_bit` (:func:`to_eight_bit` here).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from data_prep.problems import RowProblem
from recipe.papo import image_rgb

# Modes PIL can write to PNG as they are; anything else is converted to RGB first.
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})
# Modes wider than 8 bits. verl's image path (qwen_vl_utils' convert("RGB")) clips their values to
# 0..255, which turns a 16-bit image almost entirely white and a [0, 1] float image black.
WIDE_MODES = image_rgb.WIDE_MODES


@dataclass(frozen=True)
class ImageBlob:
    """One encoded image as written to parquet: ``bytes`` (PNG/JPEG/... file content) and ``path``."""

    bytes: bytes
    path: str | None

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "path": self.path}


@dataclass(frozen=True)
class MissingImage:
    """A relative image path a reader could not find; ``tried`` lists the locations searched."""

    path: str
    tried: tuple[str, ...]


@dataclass(frozen=True)
class MaskOptions:
    """Pre-computed mask settings: blacken each ``patch_size``-px cell with probability ``ratio``.

    ``seed`` and a stable row key (``<id>@<row index>``, or the row index without an id;
    :func:`data_prep.rows.mask_row_key`) seed each row's generator, so masks are reproducible and
    differ across rows, including rows that share an id.
    """

    ratio: float
    patch_size: int
    seed: int


def stored_path(path: str | os.PathLike | None) -> str | None:
    """The ``path`` to store: relative paths as given (POSIX), absolute ones reduced to the file name.

    Absolute paths depend on the machine that ran the conversion and would make output differ.
    """
    if path is None or str(path) == "":
        return None
    path = Path(path)
    return path.name if path.is_absolute() else path.as_posix()


def read_image_file(path: str | os.PathLike, position: int) -> bytes:
    """The bytes of image file ``path``; :class:`RowProblem` ``missing_image_file`` if unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise RowProblem("missing_image_file", f"image {position}: cannot read {os.fspath(path)!r}: {error}") from None


def encode_png(image: Image.Image) -> bytes:
    """Lossless, deterministic PNG encoding of ``image`` (no metadata written)."""
    if image.mode not in PNG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def entry_to_blob(entry: Any, position: int) -> ImageBlob:
    """Turn one source image entry (0-based ``position`` in its row) into an :class:`ImageBlob`.

    Raises:
        RowProblem: ``missing_image_file`` or ``invalid_image_entry``.
    """
    if isinstance(entry, MissingImage):
        tried = ", ".join(entry.tried)
        raise RowProblem("missing_image_file", f"image {position}: {entry.path!r} not found (looked for {tried})")
    if isinstance(entry, bytes | bytearray | memoryview):
        return ImageBlob(bytes(entry), None)
    if isinstance(entry, Image.Image):
        return ImageBlob(encode_png(eight_bit_image(entry, None, position)), None)
    if isinstance(entry, dict):
        data, path = entry.get("bytes"), entry.get("path")
        if data is not None:
            return ImageBlob(bytes(data), stored_path(path))
        if path:
            return ImageBlob(read_image_file(path, position), stored_path(path))
        raise RowProblem(
            "invalid_image_entry", f"image {position}: dict has neither bytes nor path (keys: {sorted(entry)})"
        )
    if isinstance(entry, str | os.PathLike):
        return ImageBlob(read_image_file(entry, position), stored_path(entry))
    raise RowProblem("invalid_image_entry", f"image {position}: unsupported type {type(entry).__name__}")


def decode_image(blob: ImageBlob, position: int) -> Image.Image:
    """Fully decode ``blob``; :class:`RowProblem` ``corrupt_image`` if the bytes are not a valid image."""
    try:
        image = Image.open(io.BytesIO(blob.bytes))
        image.load()
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, ValueError, SyntaxError...
        where = f" ({blob.path})" if blob.path else ""
        raise RowProblem(
            "corrupt_image", f"image {position}{where}, {len(blob.bytes)} bytes: {type(error).__name__}: {error}"
        ) from None
    return image


def eight_bit_image(image: Image.Image, path: str | None, position: int) -> Image.Image:
    """``image`` converted by :func:`recipe.papo.image_rgb.to_eight_bit` (8-bit modes unchanged).

    Raises:
        RowProblem: ``image_values_out_of_range``, naming the image and its values, for an image the
            rule has no conversion for (``I`` outside [0, 65535]; ``F`` not finite or outside [0, 255]).
    """
    try:
        return image_rgb.to_eight_bit(image)
    except image_rgb.ImageValueRangeError as error:
        where = f" ({path})" if path else ""
        raise RowProblem("image_values_out_of_range", f"image {position}{where}: {error}") from None


def to_eight_bit(blob: ImageBlob, image: Image.Image, position: int) -> tuple[ImageBlob, Image.Image]:
    """A decoded image wider than 8 bits (``I;16*``, ``I``, ``F``) as an 8-bit ``L`` PNG, by the rule of
    :func:`recipe.papo.image_rgb.to_eight_bit`, so the training path sees the picture instead of
    a white (16-bit) or black ([0, 1] float) sheet. Other modes are returned unchanged. The blob
    keeps its ``path``.

    Raises:
        RowProblem: ``image_values_out_of_range`` (see :func:`eight_bit_image`).
    """
    if image.mode not in WIDE_MODES:
        return blob, image
    eight_bit = eight_bit_image(image, blob.path, position)
    return ImageBlob(encode_png(eight_bit), blob.path), eight_bit


def masked_blobs(images: list[Image.Image], masks: MaskOptions, row_key: str) -> list[ImageBlob]:
    """PNG-encoded masked copies of ``images`` (same count, same sizes, RGB, masked cells exactly 0).

    Each image is first converted to RGB as verl's image path converts the original (transparent
    pixels on white, :func:`recipe.papo.image_rgb.to_rgb`), so unmasked pixels equal what training
    sees. One generator per row, seeded with ``mask_seed(masks.seed, 0, row_key)``, draws the cell
    masks of the row's images in order.
    """
    import numpy as np

    from recipe.papo.image_rgb import to_rgb
    from recipe.papo.masking import mask_image_patches, mask_seed

    rng = np.random.default_rng(mask_seed(masks.seed, 0, row_key))
    blobs = []
    for image in images:
        masked, _ = mask_image_patches(to_rgb(image), masks.ratio, masks.patch_size, rng)
        blobs.append(ImageBlob(encode_png(masked), None))
    return blobs
