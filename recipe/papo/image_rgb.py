"""The RGB conversion of verl's image path, for every image the masked pass builds.

verl 0.9.1 reads each prompt image through ``qwen_vl_utils.fetch_image``, which converts it with
``qwen_vl_utils``' own rule before resizing: an ``RGBA`` image is composited on a white background,
every other mode goes through PIL's ``convert("RGB")`` (so ``LA`` and ``P`` with transparency lose
their alpha, and 16-bit ``I;16`` / ``I`` values above 255 clip to white). The masked input must be
built from the same RGB image, or the "masked" image differs from the original even where nothing
is blackened (a transparent background turns black instead of white).

Images wider than 8 bits per channel (``I;16*``, ``I``, ``F``) have one rule for becoming 8-bit,
:func:`to_eight_bit`, applied where this project writes images (``data_prep``: the ``images``
column and the ``images_aug`` drawn from it). At training time the masked pass cannot apply it:
verl's original input of such an image is ``convert("RGB")``'s clipped copy, so :func:`to_rgb`
mirrors that (the masked image must equal the original where nothing is blackened) and logs once
that the image should have gone through ``data_prep``.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
# 16-bit grey modes, and the 32-bit integer and float grey modes.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
WIDE_MODES = SIXTEEN_BIT_MODES | {"I", "F"}
SIXTEEN_BIT_MAX = 65535
EIGHT_BIT_MAX = 255

logger = logging.getLogger(__name__)
_warned_clipped = False


class ImageValueRangeError(ValueError):
    """A wide image whose values :func:`to_eight_bit` has no rule for (the message says which and why)."""


def to_eight_bit(image: Image.Image) -> Image.Image:
    """``image`` as an 8-bit ``L`` image when it is wider than 8 bits; any other mode unchanged.

    The rule (one per value type; NumPy's ``rint`` rounds halves to even):

    * ``I;16*`` and ``I`` (integers): 16-bit intensities, ``rint(v * 255 / 65535)``; values must lie
      in [0, 65535].
    * ``F`` (32-bit float): values must be finite and lie in [0, 255]. If every value lies in
      [0, 1] the image holds normalised intensities, ``rint(v * 255)``; otherwise it is on the
      8-bit scale already, ``rint(v)``.

    Raises:
        ImageValueRangeError: an ``I`` image with values outside [0, 65535], or an ``F`` image
            with a NaN / infinite value or values outside [0, 255].
    """
    if image.mode not in WIDE_MODES:
        return image
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            raise ImageValueRangeError(
                f"mode F with {int((~finite).sum())} NaN or infinite value(s); an 8-bit image needs finite values"
            )
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low < 0 or high > EIGHT_BIT_MAX:
            raise ImageValueRangeError(
                f"mode F with values in [{low:g}, {high:g}], outside [0, 255] (the rule reads [0, 1] as "
                "normalised and [0, 255] as 8-bit intensities); rescale it to [0, 1] or [0, 255] first"
            )
        scaled = values * EIGHT_BIT_MAX if high <= 1 else values
    else:
        values = np.asarray(image).astype(np.int64)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > SIXTEEN_BIT_MAX:
            raise ImageValueRangeError(
                f"mode {image.mode} with values in [{low}, {high}], outside the 16-bit range [0, 65535]; "
                "convert it to an 8- or 16-bit image first"
            )
        scaled = values * (EIGHT_BIT_MAX / SIXTEEN_BIT_MAX)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def clipped_by_rgb_conversion(image: Image.Image) -> bool:
    """True iff ``convert("RGB")`` loses values of ``image``: a wide image with values outside [0, 255],
    or (``F``) values that are not whole numbers."""
    if image.mode not in WIDE_MODES:
        return False
    values = np.asarray(image)
    if image.mode == "F" and not (np.isfinite(values).all() and np.array_equal(values, np.rint(values))):
        return True
    return bool(values.size) and (float(values.min()) < 0 or float(values.max()) > EIGHT_BIT_MAX)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as ``qwen_vl_utils`` converts it: RGBA on white, other modes ``convert("RGB")``.

    Returns a new ``RGB`` image of the same size (the input is not modified). A wide image whose
    values this conversion clips (:func:`clipped_by_rgb_conversion`) is converted all the same, as
    verl's image path converts it, and a warning is logged once per process.
    """
    global _warned_clipped
    if not _warned_clipped and clipped_by_rgb_conversion(image):
        _warned_clipped = True
        logger.warning(
            "an image of mode %s has values outside 0..255 (or fractional); verl's image path "
            "(qwen_vl_utils convert('RGB')) clips them, so the model and the masked pass see a clipped "
            "picture. Prepare the dataset with python -m data_prep..., which converts such images to "
            "8 bits by the rule in docs/data.md.",
            image.mode,
        )
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")
