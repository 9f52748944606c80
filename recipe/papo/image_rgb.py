"""The RGB conversion of verl's image path, for every image the masked pass builds.

verl 0.9.1 reads each prompt image through ``qwen_vl_utils.fetch_image``, which converts it with
``qwen_vl_utils``' own rule before resizing: an ``RGBA`` image is composited on a white background,
every other mode goes through PIL's ``convert("RGB")`` (so ``LA`` and ``P`` with transparency lose
their alpha, and 16-bit ``I;16`` / ``I`` values above 255 clip to white). The masked input must be
built from the same RGB image, or the "masked" image differs from the original even where nothing
is blackened (a transparent background turns black instead of white).
"""

from __future__ import annotations

from PIL import Image

WHITE = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as ``qwen_vl_utils`` converts it: RGBA on white, other modes ``convert("RGB")``.

    Returns a new ``RGB`` image of the same size (the input is not modified).
    """
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")
