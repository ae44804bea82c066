"""Image grids as PNG files."""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from .._checks import check_int
from .files import atomic_write

__all__ = ["save_image_grid"]


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, value_range: Optional[tuple] = (-1.0, 1.0),
                    nrow: Optional[int] = None, padding: int = 1, scale: Optional[int] = None) -> None:
    """Save images (n, C, H, W), C = 1 or 3, with values in ``value_range`` as one PNG grid (Pillow),
    ``nrow`` images per row, each enlarged ``scale`` times by pixel repetition (default: to at least 32 px)."""
    from PIL import Image

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"an image grid needs images of shape (n, 1 or 3, H, W), got {tuple(images.shape)}")
    lo, hi = value_range if value_range is not None else (float(images.min()), float(images.max()))
    x = ((images.detach().float().cpu() - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    scale = max(1, math.ceil(32 / max(h, w))) if scale is None else check_int("scale", scale)
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, mode="L" if c == 1 else "RGB")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")
