"""Where each ``pixel_values`` row of a Qwen-VL processor's output sits in its image.

Test support: importable as ``vision_patches`` once ``tests/support`` is on ``sys.path``
(``tests/conftest.py`` puts it there).
"""

from __future__ import annotations

import torch


def patch_positions(image_grid_thw: torch.Tensor, merge_size: int) -> torch.Tensor:
    """Image index and ``(t, h, w)`` patch coordinates of every ``pixel_values`` row.

    Rows are ordered as the Qwen-VL processors emit them: per image, per frame, per merged block
    (row-major), then the ``merge_size x merge_size`` patches inside the block (row-major).

    Args:
        image_grid_thw: ``(num_images, 3)`` grid of each image in patches (frames, rows, columns).
        merge_size: patches per side of one merged visual token (2 for every supported family).

    Returns:
        ``(num_rows, 4)`` int64 tensor of ``(image, t, h, w)``, ``h`` and ``w`` in patches.
    """
    positions = []
    for image_index, (t, h, w) in enumerate(image_grid_thw.to(torch.int64).tolist()):
        frames, block_rows, block_cols, inner_rows, inner_cols = torch.meshgrid(
            torch.arange(t),
            torch.arange(h // merge_size),
            torch.arange(w // merge_size),
            torch.arange(merge_size),
            torch.arange(merge_size),
            indexing="ij",
        )
        rows = block_rows * merge_size + inner_rows
        cols = block_cols * merge_size + inner_cols
        image_column = torch.full_like(frames, image_index)
        positions.append(torch.stack([image_column, frames, rows, cols], dim=-1).reshape(-1, 4))
    return torch.cat(positions, dim=0)
