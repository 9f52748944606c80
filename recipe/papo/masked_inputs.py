"""Build the masked ``multi_modal_inputs`` of a batch (the ``I_mask`` the masked log-probs see).

verl 0.9.1 keeps per-sample ``multi_modal_inputs`` (``pixel_values``, ``image_grid_thw``, ...) in the
batch TensorDict as a ``NonTensorStack`` of dicts; raw images survive only inside ``raw_prompt``.
For each row the masked inputs come from, in order of precedence:

1. ``images_aug`` (a dataset column of pre-computed masked images, same count and sizes as
   ``images``) when the row has it;
2. ``papo.mask_space=image``: the row's raw images (from ``raw_prompt``) blackened in
   ``mask_patch_size`` cells, the authors' order of operations;
3. ``papo.mask_space=pixel_values`` (default): random patch rows of ``pixel_values`` blackened.

Paths 1 and 2 rebuild ``pixel_values`` through verl's own image chain: the RGB conversion of
``qwen_vl_utils`` (transparent pixels on white, :mod:`.image_rgb`), then
``qwen_vl_utils.process_vision_info`` (resize to a multiple of ``patch_size * 2`` within its pixel
bounds, with the row's per-image options) and the processor with the run's ``data.mm_processor_kwargs``
(given to :class:`MaskedInputBuilder` once, when the worker starts).
Path 2 blackens cells of the raw image after the RGB conversion and before the resize. So at mask
ratio 0 the masked input equals the original bit for bit, and otherwise it differs only where
blackened cells reach after resizing. The grid never changes (a mismatch is an error naming the row),
so neither do the number of image tokens and the position ids.
Rows without images keep their inputs and are reported in ``has_image``.

Memory. :meth:`MaskedInputBuilder.mask_batch` does not build any masked tensor up front: each row of
the returned batch is a :class:`LazyMaskedInputs` mapping whose ``pixel_values`` are built when read.
verl's engines read a row's ``multi_modal_inputs`` once, in ``extract_multi_modal_inputs`` on the
micro-batch being forwarded (``prepare_model_inputs`` of the FSDP, Megatron and automodel engines),
and concatenate them into the micro-batch's model input, so the masked pixels that exist at any time are those of one
micro-batch, whatever the batch size. A row's masked inputs are a pure function of
``(papo.mask_seed, step, uid)`` and the row's own inputs, whenever they are built.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from io import BytesIO
from typing import Any

import numpy as np
import torch
from PIL import Image
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.utils.tokenizer import build_multimodal_processor_inputs

from .batch_keys import IMAGES_AUG_KEY, MULTI_MODAL_INPUTS_KEY, RAW_PROMPT_KEY, UID_KEY
from .config import PapoConfig
from .image_rgb import to_rgb
from .mask_log import log_mask
from .masking import (
    PatchLayout,
    mask_image_patches,
    mask_pixel_values,
    mask_seed,
    torch_generator,
)


class MaskedInputError(ValueError):
    """A row's masked inputs cannot be built consistently with its original inputs."""


def row_has_image(inputs: dict | None) -> bool:
    """True iff a row's ``multi_modal_inputs`` carry at least one image patch row."""
    return bool(inputs) and "pixel_values" in inputs and inputs["pixel_values"].shape[0] > 0


def rows_with_images(data: TensorDict) -> torch.Tensor:
    """``(batch,)`` bool: which rows of a batch carry image patches."""
    rows = tu.get(data, MULTI_MODAL_INPUTS_KEY) or [None] * data.batch_size[0]
    return torch.tensor([row_has_image(inputs) for inputs in rows], dtype=torch.bool)


IMAGE_SOURCE_KEYS = ("image", "image_url", "bytes", "path")


def _decode_image(item: Any) -> Image.Image:
    """Open an image as ``qwen_vl_utils.fetch_image`` reads a content item's source.

    Accepts a PIL image, a ``{bytes, path}`` dict (a dataset cell), or a chat content item holding
    ``image`` / ``image_url`` (a PIL image, a local path, ``file://`` or a ``data:image`` base64 URI).
    """
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, dict):
        source = item.get("image", item.get("image_url"))
        if source is not None:
            return _decode_image(source)
        if item.get("bytes") is not None:
            return Image.open(BytesIO(item["bytes"]))
        if item.get("path"):
            return Image.open(item["path"])
    if isinstance(item, str) and item.startswith("data:image") and "base64," in item:
        return Image.open(BytesIO(base64.b64decode(item.split("base64,", 1)[1])))
    if isinstance(item, str) and not item.startswith(("http://", "https://")):
        return Image.open(item.removeprefix("file://"))
    raise MaskedInputError(f"cannot read an image from {type(item).__name__} {str(item)[:80]!r}")


def image_items(raw_prompt: list[dict] | None) -> list[dict]:
    """The image content items of a chat prompt in order (type ``image``, or holding ``image`` / ``image_url``)."""
    items = []
    for message in raw_prompt or []:
        content = message.get("content")
        if isinstance(content, list):
            items.extend(
                item
                for item in content
                if isinstance(item, dict)
                and (item.get("type") == "image" or "image" in item or "image_url" in item)
                and "video" not in item
            )
    return items


def raw_images(raw_prompt: list[dict]) -> list[Image.Image]:
    """The images of a chat prompt in order, as read from their sources (not converted)."""
    return [_decode_image(item) for item in image_items(raw_prompt)]


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_pixels(a: dict, b: dict) -> bool:
    """True iff two rows' ``pixel_values`` and ``image_grid_thw`` are bitwise equal (and alike in shape,
    dtype and device). CPU tensors are compared as integers in NumPy, which reads both once and is about
    twice as fast as ``torch.equal`` on float32."""
    for key in ("pixel_values", "image_grid_thw"):
        x, y = a[key], b[key]
        if x is y:
            continue
        if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
            return False
        as_int = _INT_OF_SIZE.get(x.element_size())
        if x.device.type == "cpu" and as_int is not None and not x.is_complex():
            if not np.array_equal(x.view(as_int).numpy(), y.view(as_int).numpy()):
                return False
        elif not torch.equal(x, y):
            return False
    return True


class MaskedInputBuilder:
    """Masks rows of a batch deterministically in ``(papo.mask_seed, step, uid)``.

    Args:
        papo: PAPO options (ratio, unit, space, patch size, seed).
        processor: the model's multimodal processor (patch layout, normalisation, image processor).
        mm_processor_kwargs: the run's ``data.mm_processor_kwargs`` (``None``: the processor's
            defaults, verl's default ``{}``), passed to the processor as verl's agent loop passes them
            when it builds the original ``multi_modal_inputs``. Only the image paths (``images_aug``,
            ``mask_space=image``) re-process images.
    """

    def __init__(self, papo: PapoConfig, processor: Any, mm_processor_kwargs: dict | None = None):
        self.papo = papo
        self.processor = processor
        self.mm_processor_kwargs = dict(mm_processor_kwargs or {})
        self.layout = PatchLayout.from_processor(processor)
        # verl's agent loop calls qwen_vl_utils with the image processor's patch size; qwen_vl_utils
        # then resizes to multiples of patch_size * 2 (its spatial merge), i.e. 28 px for Qwen2.5-VL.
        self.image_patch_size = int(getattr(getattr(processor, "image_processor", None), "patch_size", 14))
        # mask_space=image cells: papo.mask_patch_size, or by default the model's own patch side.
        self.mask_patch_size = papo.mask_patch_size or self.layout.patch_size

    def mask_row(
        self,
        inputs: dict | None,
        uid: str,
        step: int,
        images_aug: list | None = None,
        raw_prompt: list[dict] | None = None,
    ) -> dict | None:
        """The masked copy of one row's ``multi_modal_inputs`` (the input dict is not modified)."""
        if not row_has_image(inputs):
            return inputs
        seed = mask_seed(self.papo.mask_seed, step, uid)
        masked = dict(inputs)
        if images_aug is not None and len(images_aug) > 0:
            images = [to_rgb(_decode_image(item)) for item in images_aug]
            masked["pixel_values"] = self._reprocess(images, raw_prompt, inputs, uid, "images_aug")
        elif self.papo.mask_space == "image":
            rng = np.random.default_rng(seed)
            blackened = [
                mask_image_patches(to_rgb(image), self.papo.mask_ratio, self.mask_patch_size, rng)[0]
                for image in raw_images(raw_prompt)
            ]
            masked["pixel_values"] = self._reprocess(blackened, raw_prompt, inputs, uid, "raw_prompt images")
        else:
            masked["pixel_values"], _ = mask_pixel_values(
                inputs["pixel_values"],
                inputs["image_grid_thw"],
                self.layout,
                self.papo.mask_ratio,
                torch_generator(seed),
                unit=self.papo.mask_unit,
            )
        log_mask(uid, step, inputs["pixel_values"], masked["pixel_values"])  # only with PAPO_MASK_LOG_DIR set
        return masked

    def _reprocess(
        self,
        images: list[Image.Image],
        raw_prompt: list[dict] | None,
        inputs: dict,
        uid: str,
        source: str,
    ) -> torch.Tensor:
        """``pixel_values`` of raw-size RGB ``images`` through verl's own image chain.

        The chain is the one that built the row's original inputs: ``qwen_vl_utils.process_vision_info``
        (resize to a multiple of its factor within its pixel bounds, with the per-image options of the
        row's content items such as ``min_pixels`` / ``max_pixels``) and then the processor with the
        builder's ``mm_processor_kwargs``. At mask ratio 0 the result equals the original bit for bit.
        Returns a ``(rows, row_width)`` tensor with the original's dtype and device.
        """
        from qwen_vl_utils import process_vision_info

        grid = inputs["image_grid_thw"].to(torch.int64)
        if len(images) != grid.shape[0]:
            raise MaskedInputError(
                f"row uid={uid}: {source} has {len(images)} image(s) but the prompt was processed with "
                f"{grid.shape[0]}; images_aug must have the same count and sizes as images."
            )
        items = image_items(raw_prompt) or [{"type": "image"}] * len(images)
        if len(items) != len(images):
            raise MaskedInputError(
                f"row uid={uid}: {source} has {len(images)} image(s) but raw_prompt has {len(items)} image item(s)"
            )
        content = [
            {**{key: value for key, value in item.items() if key not in IMAGE_SOURCE_KEYS}, "image": image}
            for item, image in zip(items, images, strict=True)
        ]
        fetched, _ = process_vision_info([{"role": "user", "content": content}], image_patch_size=self.image_patch_size)
        image_token = getattr(self.processor, "image_token", None)
        if image_token is None:
            raise MaskedInputError(f"{type(self.processor).__name__} has no image_token; cannot rebuild image inputs")
        out = build_multimodal_processor_inputs(
            self.processor,
            text=[image_token * len(fetched)],
            images=fetched,
            mm_processor_kwargs=self.mm_processor_kwargs,
        )
        if not torch.equal(out["image_grid_thw"].to(torch.int64), grid):
            raise MaskedInputError(
                f"row uid={uid}: {source} processed to grid {out['image_grid_thw'].tolist()} but the original "
                f"grid is {grid.tolist()}; {source} must have the sizes of the row's images, and the masked "
                "pass must use the run's data.mm_processor_kwargs"
            )
        original = inputs["pixel_values"]
        return out["pixel_values"].to(dtype=original.dtype, device=original.device)

    def masked_row(
        self,
        inputs: dict | None,
        uid: str,
        step: int,
        images_aug: list | None,
        raw_prompt: list[dict] | None,
        shared: SharedMasks,
    ) -> dict | None:
        """:meth:`mask_row`, reusing the masked ``pixel_values`` of an equal row of the same uid in ``shared``.

        In ``pixel_values`` space a row's masked pixels are a pure function of (uid, step,
        ``pixel_values``, grid). The n rollouts of a prompt share the uid and carry equal pixel values,
        so when they are read one after the other the masked tensor is computed once per prompt and
        shared (read-only) instead of n times. An equality check (a read, no write) guards rows that differ.
        """
        online = (
            self.papo.mask_space == "pixel_values"
            and (images_aug is None or len(images_aug) == 0)
            and row_has_image(inputs)
        )
        if online:
            previous = shared.get(uid, inputs)
            if previous is not None:
                return {**inputs, "pixel_values": previous}
        masked = self.mask_row(inputs, uid, step, images_aug, raw_prompt)
        if online:
            shared.put(uid, inputs, masked["pixel_values"])
        return masked

    def mask_batch(self, data: TensorDict, step: int) -> tuple[TensorDict, torch.Tensor]:
        """A shallow copy of ``data`` with masked ``multi_modal_inputs``, and ``(batch,)`` bool has-image.

        Reads the ``uid`` column (prompt uid, shared by the rollouts of one prompt), and
        ``images_aug`` / ``raw_prompt`` when present. Rows with images become
        :class:`LazyMaskedInputs`, built when the engine reads them, one micro-batch at a time; the last
        masked row is kept for sharing (:class:`SharedMasks`), which covers the n rollouts of a prompt
        read one after the other (verl's order): in ``pixel_values`` space they share one masked
        ``pixel_values`` tensor, to be treated as read-only. A row that cannot be masked
        (:class:`MaskedInputError`) fails when it is read, inside the engine's forward.

        Args:
            data: the batch (verl's layout: ``multi_modal_inputs`` a ``NonTensorStack`` of per-row dicts).
            step: the global step, part of the mask seed.
        """
        batch_size = data.batch_size[0]
        rows = tu.get(data, MULTI_MODAL_INPUTS_KEY) or [None] * batch_size
        uids = [str(uid) for uid in tu.get(data, UID_KEY)]
        images_aug = tu.get(data, IMAGES_AUG_KEY) or [None] * batch_size
        uses_images = self.papo.mask_space == "image" or any(aug is not None and len(aug) > 0 for aug in images_aug)
        raw_prompts = (tu.get(data, RAW_PROMPT_KEY) if uses_images else None) or [None] * batch_size
        shared = SharedMasks()
        masked_rows: list[Mapping | None] = []
        for inputs, uid, aug, prompt in zip(rows, uids, images_aug, raw_prompts, strict=True):
            if row_has_image(inputs):
                masked_rows.append(LazyMaskedInputs(self, inputs, uid, step, aug, prompt, shared))
            else:
                masked_rows.append(inputs)
        masked = data.copy()
        tu.assign_non_tensor_stack(masked, MULTI_MODAL_INPUTS_KEY, masked_rows)
        return masked, rows_with_images(data)


class SharedMasks:
    """The last masked ``pixel_values`` built in one batch, for reuse by the next row if it is an equal row
    of the same uid (one entry: the masked pixels it keeps alive are one row's)."""

    def __init__(self):
        self.entry: tuple[str, dict, torch.Tensor] | None = None

    def get(self, uid: str, inputs: dict) -> torch.Tensor | None:
        """The last masked ``pixel_values`` if they are ``uid``'s, of a row with ``inputs``' pixels and grid."""
        if self.entry is not None and self.entry[0] == uid and same_pixels(self.entry[1], inputs):
            return self.entry[2]
        return None

    def put(self, uid: str, inputs: dict, masked_pixel_values: torch.Tensor) -> None:
        """Remember ``uid``'s masked ``pixel_values`` (of row ``inputs``) in place of the previous entry."""
        self.entry = (uid, inputs, masked_pixel_values)


class LazyMaskedInputs(Mapping):
    """One row's masked ``multi_modal_inputs``, its ``pixel_values`` built each time they are read.

    A read-only mapping with the keys of the row's original inputs: every key but ``pixel_values``
    reads the original; ``pixel_values`` is :meth:`MaskedInputBuilder.masked_row`'s, not kept by this
    object (so the masked tensor lives only as long as its reader holds it: in verl's engines, until
    the micro-batch's inputs are concatenated). Membership (``in``), ``len`` and ``repr`` build nothing.
    """

    def __init__(
        self,
        builder: MaskedInputBuilder,
        inputs: dict,
        uid: str,
        step: int,
        images_aug: list | None,
        raw_prompt: list[dict] | None,
        shared: SharedMasks,
    ):
        self._builder = builder
        self._inputs = inputs
        self._row = (uid, step, images_aug, raw_prompt, shared)

    def build(self) -> dict:
        """The row's masked inputs as a plain dict."""
        return self._builder.masked_row(self._inputs, *self._row)

    def __getitem__(self, key: str) -> Any:
        if key == "pixel_values":
            return self.build()["pixel_values"]
        return self._inputs[key]

    def __contains__(self, key: object) -> bool:
        return key in self._inputs

    def __iter__(self) -> Iterator[str]:
        return iter(self._inputs)

    def __len__(self) -> int:
        return len(self._inputs)

    def __repr__(self) -> str:
        return f"LazyMaskedInputs(uid={self._row[0]!r}, step={self._row[1]}, keys={list(self._inputs)})"
