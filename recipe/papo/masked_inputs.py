"""Build the masked ``multi_modal_inputs`` of a batch (the ``I_mask`` the masked log-probs see).

verl 0.9.1 keeps per-sample ``multi_modal_inputs`` (``pixel_values``, ``image_grid_thw``, ...) in the
batch TensorDict as a ``NonTensorStack`` of dicts; raw images survive only inside ``raw_prompt``.
For each row the masked inputs come from, in order of precedence:

1. ``images_aug`` (a dataset column of pre-computed masked images, same count and sizes as
   ``images``) when the row has it;
2. ``papo.mask_space=image``: the row's raw images (from ``raw_prompt``) blackened in
   ``mask_patch_size`` cells, the authors' order of operations;
3. ``papo.mask_space=pixel_values`` (default): random patch rows of ``pixel_values`` blackened.

Paths 1 and 2 re-run the image processor on images resized (bicubic, as ``qwen_vl_utils`` does) to
the exact size the original grid implies, with the processor's own resize off, so the grid, the
number of image tokens and the position ids never change; a grid mismatch is an error naming the row.
Rows without images keep their inputs and are reported in ``has_image``.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from tensordict import TensorDict

from verl.utils import tensordict_utils as tu

from .config import PapoConfig
from .masking import PatchLayout, mask_image_patches, mask_pixel_values, mask_seed, torch_generator

MULTI_MODAL_INPUTS_KEY = "multi_modal_inputs"
IMAGES_AUG_KEY = "images_aug"


class MaskedInputError(ValueError):
    """A row's masked inputs cannot be built consistently with its original inputs."""


def row_has_image(inputs: Optional[dict]) -> bool:
    """True iff a row's ``multi_modal_inputs`` carry at least one image patch row."""
    return bool(inputs) and "pixel_values" in inputs and inputs["pixel_values"].shape[0] > 0


def rows_with_images(data: TensorDict) -> torch.Tensor:
    """``(batch,)`` bool: which rows of a batch carry image patches."""
    rows = tu.get(data, MULTI_MODAL_INPUTS_KEY) or [None] * data.batch_size[0]
    return torch.tensor([row_has_image(inputs) for inputs in rows], dtype=torch.bool)


def _decode_image(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, dict) and item.get("bytes") is not None:
        return Image.open(BytesIO(item["bytes"]))
    if isinstance(item, dict) and item.get("image") is not None:
        return _decode_image(item["image"])
    if isinstance(item, dict) and item.get("path"):
        return Image.open(item["path"])
    raise MaskedInputError(f"cannot read an image from {type(item).__name__} {str(item)[:80]!r}")


def raw_images(raw_prompt: list[dict]) -> list[Image.Image]:
    """The images of a chat prompt in order (content items of type ``image``)."""
    images = []
    for message in raw_prompt or []:
        content = message.get("content")
        if isinstance(content, list):
            images.extend(_decode_image(item) for item in content if isinstance(item, dict) and item.get("type") == "image")
    return images


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_pixels(a: dict, b: dict) -> bool:
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
    """

    def __init__(self, papo: PapoConfig, processor: Any):
        self.papo = papo
        self.processor = processor
        self.layout = PatchLayout.from_processor(processor)

    def mask_row(
        self,
        inputs: Optional[dict],
        uid: str,
        step: int,
        images_aug: Optional[list] = None,
        raw_prompt: Optional[list[dict]] = None,
    ) -> Optional[dict]:
        """The masked copy of one row's ``multi_modal_inputs`` (the input dict is not modified)."""
        if not row_has_image(inputs):
            return inputs
        seed = mask_seed(self.papo.mask_seed, step, uid)
        masked = dict(inputs)
        if images_aug is not None and len(images_aug) > 0:
            masked["pixel_values"] = self._reprocess([_decode_image(i) for i in images_aug], inputs, uid, "images_aug")
        elif self.papo.mask_space == "image":
            rng = np.random.default_rng(seed)
            originals = raw_images(raw_prompt)
            blackened = [mask_image_patches(im, self.papo.mask_ratio, self.papo.mask_patch_size, rng)[0] for im in originals]
            masked["pixel_values"] = self._reprocess(blackened, inputs, uid, "raw_prompt images")
        else:
            masked["pixel_values"], _ = mask_pixel_values(
                inputs["pixel_values"],
                inputs["image_grid_thw"],
                self.layout,
                self.papo.mask_ratio,
                torch_generator(seed),
                unit=self.papo.mask_unit,
            )
        return masked

    def _reprocess(self, images: list[Image.Image], inputs: dict, uid: str, source: str) -> torch.Tensor:
        """``pixel_values`` of ``images`` on exactly the original grid (shape and dtype preserved)."""
        grid = inputs["image_grid_thw"].to(torch.int64)
        if len(images) != grid.shape[0]:
            raise MaskedInputError(
                f"row uid={uid}: {source} has {len(images)} image(s) but the prompt was processed with "
                f"{grid.shape[0]}; images_aug must have the same count and sizes as images."
            )
        patch = self.layout.patch_size
        resized = []
        for image, (_, rows, cols) in zip(images, grid.tolist(), strict=True):
            image = image.convert("RGB")
            size = (cols * patch, rows * patch)
            resized.append(image if image.size == size else image.resize(size, Image.Resampling.BICUBIC))
        image_processor = getattr(self.processor, "image_processor", self.processor)
        out = image_processor(images=resized, do_resize=False, return_tensors="pt")
        if not torch.equal(out["image_grid_thw"].to(torch.int64), grid):
            raise MaskedInputError(
                f"row uid={uid}: {source} processed to grid {out['image_grid_thw'].tolist()} but the original "
                f"grid is {grid.tolist()}"
            )
        original = inputs["pixel_values"]
        return out["pixel_values"].to(dtype=original.dtype, device=original.device)

    def mask_batch(self, data: TensorDict, step: int) -> tuple[TensorDict, torch.Tensor]:
        """A shallow copy of ``data`` with masked ``multi_modal_inputs``, and ``(batch,)`` bool has-image.

        Reads the ``uid`` column (prompt uid, shared by the rollouts of one prompt), and
        ``images_aug`` / ``raw_prompt`` when present. In ``pixel_values`` space, rows with the same uid
        and equal pixel values share one masked ``pixel_values`` tensor: treat it as read-only.
        """
        batch_size = data.batch_size[0]
        rows = tu.get(data, MULTI_MODAL_INPUTS_KEY) or [None] * batch_size
        uids = [str(uid) for uid in tu.get(data, "uid")]
        images_aug = tu.get(data, IMAGES_AUG_KEY) or [None] * batch_size
        raw_prompts = tu.get(data, "raw_prompt") if self.papo.mask_space == "image" else [None] * batch_size
        # In pixel_values space a row's masked pixels are a pure function of (uid, step, pixel_values,
        # grid). The n rollouts of a prompt share the uid and carry equal pixel values, so the masked
        # tensor is computed once per prompt and shared (read-only) instead of n times: n times less
        # masking work and memory. An equality check (a read, no write) guards rows that differ.
        done: dict[str, tuple[dict, dict]] = {}
        masked_rows = []
        for inputs, uid, aug, prompt in zip(rows, uids, images_aug, raw_prompts, strict=True):
            online = (
                self.papo.mask_space == "pixel_values" and (aug is None or len(aug) == 0) and row_has_image(inputs)
            )
            previous = done.get(uid) if online else None
            if previous is not None and _same_pixels(previous[0], inputs):
                masked = dict(inputs)
                masked["pixel_values"] = previous[1]["pixel_values"]
            else:
                masked = self.mask_row(inputs, uid, step, aug, prompt)
                if online:
                    done[uid] = (inputs, masked)
            masked_rows.append(masked)
        masked = data.copy()
        tu.assign_non_tensor_stack(masked, MULTI_MODAL_INPUTS_KEY, masked_rows)
        return masked, rows_with_images(data)
