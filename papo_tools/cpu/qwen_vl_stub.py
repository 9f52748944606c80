"""Torchvision-free stand-in for the image half of ``qwen_vl_utils``.

Plugs into verl 0.9.1's image path: ``RLHFDataset.process_vision_info`` /
``_process_multi_modal_info`` (``verl/utils/dataset/rl_dataset.py``, called by the agent loop for
every prompt) do ``from qwen_vl_utils import process_vision_info``, and
``verl/utils/dataset/vision_utils.py::process_image`` does ``from qwen_vl_utils import fetch_image``.
The real package imports torchvision at import time (for video), and there is no CPU torchvision
wheel here, so those imports fail. :func:`install` registers this module as ``qwen_vl_utils`` only
when the real import fails; GPU machines keep the real package.

Images behave as in ``qwen_vl_utils``: decoded to RGB (transparent pixels on white) and resized so
both sides are multiples of ``2 * image_patch_size`` within the min/max pixel budget (defaults
4 and 16384 merged tokens), keeping the aspect ratio. Videos raise ``NotImplementedError``. Remote
URLs raise too (machines running this are offline).
"""

from __future__ import annotations

import base64
import math
import sys
from io import BytesIO
from typing import Any

from PIL import Image

SPATIAL_MERGE_SIZE = 2
IMAGE_MIN_TOKEN_NUM = 4
IMAGE_MAX_TOKEN_NUM = 16384
MAX_RATIO = 200


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int | None = None, max_pixels: int | None = None
) -> tuple[int, int]:
    """``(height, width)`` rounded to multiples of ``factor``, area in ``[min_pixels, max_pixels]``."""
    min_pixels = IMAGE_MIN_TOKEN_NUM * factor**2 if min_pixels is None else min_pixels
    max_pixels = IMAGE_MAX_TOKEN_NUM * factor**2 if max_pixels is None else max_pixels
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels {max_pixels} is smaller than min_pixels {min_pixels}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio above {MAX_RATIO}: {height}x{width}")
    new_height = max(factor, round(height / factor) * factor)
    new_width = max(factor, round(width / factor) * factor)
    if new_height * new_width > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        new_height = math.floor(height / shrink / factor) * factor
        new_width = math.floor(width / shrink / factor) * factor
    elif new_height * new_width < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * grow / factor) * factor
        new_width = math.ceil(width * grow / factor) * factor
    return new_height, new_width


def _open_image(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if not isinstance(source, str):
        raise ValueError(f"unsupported image source of type {type(source).__name__}")
    if source.startswith(("http://", "https://")):
        raise ValueError("remote image URLs are not supported by the offline qwen_vl_utils stand-in")
    if source.startswith("data:image"):
        _, encoded = source.split("base64,", 1)
        return Image.open(BytesIO(base64.b64decode(encoded)))
    return Image.open(source.removeprefix("file://"))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def fetch_image(ele: dict[str, Any], image_patch_size: int = 14) -> Image.Image:
    """The RGB image of a message content item, resized for the processor's patch grid."""
    image = _to_rgb(_open_image(ele["image"] if "image" in ele else ele["image_url"]))
    factor = image_patch_size * SPATIAL_MERGE_SIZE
    if "resized_height" in ele and "resized_width" in ele:
        height, width = smart_resize(ele["resized_height"], ele["resized_width"], factor=factor)
    else:
        height, width = smart_resize(
            image.height,
            image.width,
            factor=factor,
            min_pixels=ele.get("min_pixels", IMAGE_MIN_TOKEN_NUM * factor**2),
            max_pixels=ele.get("max_pixels", IMAGE_MAX_TOKEN_NUM * factor**2),
        )
    return image.resize((width, height))


def fetch_video(ele: dict[str, Any], *args: Any, **kwargs: Any):
    raise NotImplementedError("videos need the real qwen_vl_utils (and torchvision)")


def extract_vision_info(conversations: list) -> list[dict[str, Any]]:
    """Every image/video content item of one conversation or a list of conversations."""
    if conversations and isinstance(conversations[0], dict):
        conversations = [conversations]
    vision_keys = ("image", "image_url", "video")
    return [
        item
        for conversation in conversations
        for message in conversation
        if isinstance(message["content"], list)
        for item in message["content"]
        if any(key in item for key in vision_keys) or item.get("type", "text") in vision_keys
    ]


def process_vision_info(
    conversations: list,
    return_video_kwargs: bool = False,
    return_video_metadata: bool = False,
    image_patch_size: int = 14,
):
    """``(images or None, None)`` (plus empty video kwargs when asked), as ``qwen_vl_utils`` returns them."""
    images = []
    for item in extract_vision_info(conversations):
        if "video" in item:
            fetch_video(item)
        images.append(fetch_image(item, image_patch_size=image_patch_size))
    images = images or None
    if return_video_kwargs:
        return images, None, {"do_sample_frames": False}
    return images, None


def install() -> bool:
    """Register this module as ``qwen_vl_utils`` if the real one cannot be imported; True if it did."""
    from papo_tools.compat.qwen_vl_utils import install_stand_in

    return install_stand_in(sys.modules[__name__])
