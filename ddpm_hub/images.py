"""Image grids: (B, C, H, W) tensors in [0, 1] to one PIL image."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> Image.Image:
    """Tile (B, C, H, W) images in [0, 1] into a grid of ``nrow`` columns (default: about square)."""
    if images.ndim != 4:
        raise ValueError(f"make_grid expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, y : y + h, x : x + w] = images[i].float().clamp(0, 1)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array[..., 0] if c == 1 else array)
