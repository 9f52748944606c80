"""Random patch blackening: the ``I_mask`` input of PAPO.

Two spaces are supported:

* ``pixel_values`` space (default, used online during training): the Qwen2.5-VL, Qwen3-VL and
  Qwen3.5 processors (``recipe.papo.model_families``; the layout is read from the run's processor)
  flatten each image into rows of ``pixel_values``, one row per ``patch_size`` x ``patch_size``
  spatial patch (layout ``channels x temporal_patch_size x patch_size x patch_size``, normalised
  per channel), in groups of ``merge_size**2`` consecutive rows per merged visual token.
  ``image_grid_thw`` gives ``(t, h, w)`` in patches. Blackening a row sets every value of channel
  ``c`` to ``(0 - mean_c) / std_c``. The unit is one patch row (default, closest to the paper's
  14-px patches) or one merged visual token (``merge_size**2`` rows).
* image space (PIL / NumPy, used for pre-computed masks and to reproduce the authors' order of
  operations): the image is cut into square ``patch_size``-px cells (edge cells may be partial)
  and each cell is set to 0 with probability ``ratio``. Vectorised, no per-patch Python loop.

Masks are deterministic: :func:`mask_seed` turns ``(seed, step, uid)`` into a generator seed, so
all rollouts of one prompt (same uid) share a mask, and the mask changes across steps and prompts.
Masking never changes shapes, dtype, the grid, the number of image tokens or position ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

MaskUnit = Literal["patch", "token"]
# The allowed ``papo.mask_unit`` and ``papo.mask_space`` values (validated in ``recipe.papo.config``).
MASK_UNITS: tuple[str, ...] = ("patch", "token")
MASK_SPACES: tuple[str, ...] = ("pixel_values", "image")


@dataclass(frozen=True)
class PatchLayout:
    """How a processor lays out ``pixel_values`` rows.

    Attributes:
        patch_size: spatial patch side, pixels (14 for Qwen2.5-VL, 16 for Qwen3-VL).
        temporal_patch_size: frames per row (2; images are repeated along time).
        merge_size: spatial merge factor; ``merge_size**2`` rows form one visual token.
        image_mean: per-channel normalisation mean (in [0, 1] units).
        image_std: per-channel normalisation std.
    """

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.image_mean)

    @property
    def row_width(self) -> int:
        """Number of values in one ``pixel_values`` row."""
        return self.channels * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_processor(cls, processor) -> PatchLayout:
        """Read the layout from a multimodal processor or its image processor."""
        image_processor = getattr(processor, "image_processor", processor)
        mean = image_processor.image_mean
        std = image_processor.image_std
        mean = tuple(float(m) for m in (mean if isinstance(mean, list | tuple) else [mean] * 3))
        std = tuple(float(s) for s in (std if isinstance(std, list | tuple) else [std] * 3))
        return cls(
            patch_size=int(image_processor.patch_size),
            temporal_patch_size=int(image_processor.temporal_patch_size),
            merge_size=int(image_processor.merge_size),
            image_mean=mean,
            image_std=std,
        )

    def black_row(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """The normalised value of a black (pixel 0) patch row, shape ``(row_width,)``."""
        black = torch.tensor([(0.0 - m) / s for m, s in zip(self.image_mean, self.image_std, strict=True)])
        per_channel = self.temporal_patch_size * self.patch_size**2
        return black.repeat_interleave(per_channel).to(dtype=dtype, device=device)


def mask_seed(seed: int, step: int, uid: str) -> int:
    """A 63-bit generator seed that is a pure function of ``(seed, step, uid)``.

    Uses SHA-256 (not Python's salted ``hash``) so it is identical across processes and runs.
    """
    digest = hashlib.sha256(f"{int(seed)}:{int(step)}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def torch_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def draw_unit_mask(num_units: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Independent Bernoulli(``ratio``) draws, shape ``(num_units,)`` bool (True = blackened)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    return torch.rand(num_units, generator=generator) < ratio


def count_patch_rows(image_grid_thw: torch.Tensor) -> int:
    """Total ``pixel_values`` rows described by ``image_grid_thw`` of shape ``(num_images, 3)``."""
    return int(image_grid_thw.to(torch.int64).prod(dim=-1).sum().item())


def rows_per_unit(unit: MaskUnit, layout: PatchLayout) -> int:
    """Rows of ``pixel_values`` blackened together: 1 for a patch, ``merge_size**2`` for a token."""
    if unit == "patch":
        return 1
    if unit == "token":
        return layout.merge_size**2
    raise ValueError(f"unknown mask unit {unit!r}; allowed: {', '.join(MASK_UNITS)}")


def mask_pixel_values(
    pixel_values: torch.Tensor,
    image_grid_thw: torch.Tensor,
    layout: PatchLayout,
    ratio: float,
    generator: torch.Generator,
    unit: MaskUnit = "patch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blacken random patches (or merged tokens) of flattened Qwen-VL ``pixel_values``.

    Args:
        pixel_values: ``(num_rows, row_width)`` rows for all images of one sample.
        image_grid_thw: ``(num_images, 3)`` grid ``(t, h, w)`` in patches; rows must add up.
        layout: the processor's patch layout.
        ratio: probability that each unit is blackened, in [0, 1].
        generator: source of randomness (see :func:`mask_seed`).
        unit: ``"patch"`` (one row) or ``"token"`` (``merge_size**2`` consecutive rows).

    Returns:
        ``(masked, row_mask)``: a new tensor with the same shape, dtype and device, and the
        ``(num_rows,)`` bool mask of blackened rows. Unmasked rows are bit-identical copies.
    """
    if pixel_values.dim() != 2 or pixel_values.shape[1] != layout.row_width:
        raise ValueError(
            f"pixel_values must have shape (rows, {layout.row_width}) for this processor layout, "
            f"got {tuple(pixel_values.shape)}"
        )
    num_rows = pixel_values.shape[0]
    expected_rows = count_patch_rows(image_grid_thw)
    if expected_rows != num_rows:
        raise ValueError(f"image_grid_thw describes {expected_rows} patch rows but pixel_values has {num_rows}")
    group = rows_per_unit(unit, layout)
    if num_rows % group != 0:
        raise ValueError(f"{num_rows} rows cannot be split into {unit} units of {group} rows")
    unit_mask = draw_unit_mask(num_rows // group, ratio, generator)
    row_mask = unit_mask.repeat_interleave(group).to(pixel_values.device)
    black = layout.black_row(dtype=pixel_values.dtype, device=pixel_values.device)
    masked = torch.where(row_mask.unsqueeze(-1), black.unsqueeze(0), pixel_values)
    return masked, row_mask


def blacken_image_patches(image: Image.Image | np.ndarray, patch_mask: np.ndarray, patch_size: int):
    """Set the pixels of every selected ``patch_size``-px cell to 0.

    Args:
        image: PIL image or ``(H, W)`` / ``(H, W, C)`` array.
        patch_mask: ``(ceil(H / patch_size), ceil(W / patch_size))`` bool, True = blacken.
        patch_size: cell side in pixels.

    Returns:
        A PIL image in RGB mode for PIL input (the mode every Qwen-VL processor converts to, so a
        palette or alpha channel cannot turn "black" into another colour), or a new array of the
        same dtype for array input.
    """
    is_pil = isinstance(image, Image.Image)
    array = np.array(image.convert("RGB")) if is_pil else np.array(image, copy=True)
    height, width = array.shape[:2]
    expected = (-(-height // patch_size), -(-width // patch_size))
    if tuple(patch_mask.shape) != expected:
        raise ValueError(f"patch_mask must have shape {expected} for a {height}x{width} image, got {patch_mask.shape}")
    pixel_mask = np.repeat(np.repeat(patch_mask.astype(bool), patch_size, axis=0), patch_size, axis=1)
    array[pixel_mask[:height, :width]] = 0
    if is_pil:
        return Image.fromarray(array)
    return array


def mask_image_patches(
    image: Image.Image | np.ndarray, ratio: float, patch_size: int, rng: np.random.Generator
) -> tuple[Image.Image | np.ndarray, np.ndarray]:
    """Blacken each ``patch_size``-px cell of ``image`` independently with probability ``ratio``.

    Returns:
        ``(masked_image, patch_mask)`` where ``patch_mask`` is the ``(rows, cols)`` bool cell mask.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    height, width = (image.height, image.width) if isinstance(image, Image.Image) else np.asarray(image).shape[:2]
    grid = (-(-height // patch_size), -(-width // patch_size))
    patch_mask = rng.random(grid) < ratio
    return blacken_image_patches(image, patch_mask, patch_size), patch_mask
