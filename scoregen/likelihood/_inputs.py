"""Checks and batching shared by the likelihood estimators."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int
from ..models import class_labels
from .gaussian import Bins


def check_data(model, x0: Tensor, bins: Optional[int], data_range: tuple[float, float], y) -> tuple[Tensor, Optional[Bins], Optional[Tensor]]:
    """``x0`` as a float tensor (B, *model.shape) of finite values, on ``bins`` values when given; the labels."""
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.ndim < 2 or x0.shape[0] == 0:
        got = f"shape {tuple(x0.shape)}, dtype {x0.dtype}" if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a non-empty float tensor of data of shape (batch, *model.shape), got {got}")
    shape = tuple(getattr(model, "shape", ()) or ())
    if shape and tuple(x0.shape[1:]) != shape:
        raise ValueError(f"x0 has samples of shape {tuple(x0.shape[1:])}, the model takes {shape}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 has NaN or inf values")
    grid = None
    if bins is not None:
        grid = Bins(bins, *data_range)
        grid.index(x0)  # raises for data off the grid, before any evaluation
    labels = None if y is None else class_labels(y, x0.shape[0], x0.device, getattr(model, "num_classes", None))
    return x0, grid, labels


def chunks(n: int, batch_size: Optional[int]) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``batch_size`` (all at once when None)."""
    size = n if batch_size is None else check_int("batch_size", batch_size, 1)
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def shift(part: slice, offset: int) -> slice:
    """``part`` moved by ``offset``: the samples' indices in the whole data set when ``x0`` starts at ``offset``."""
    return slice(part.start + offset, part.stop + offset)


#: Samples that share one generator per kind of draw (:func:`per_sample_draws`).
BLOCK = 64


def per_sample_draws(seed: int, kind: int, part: slice, shape: tuple[int, ...],
                     draw: Callable[[torch.Generator, tuple[int, ...]], Tensor]) -> Tensor:
    """Random draws for the samples ``part`` (float64, shape ``(len, *shape)``) that depend on the seed, the ``kind``
    of draw (a level of the bound, the dequantization, the probes) and each sample's index alone, not on how the
    samples are batched: sample i's draw is row ``i % BLOCK`` of ``draw(generator, (BLOCK, *shape))`` with the
    generator seeded from (seed, kind, i // BLOCK)."""
    rows = []
    for block in range(part.start // BLOCK, (part.stop - 1) // BLOCK + 1):
        key = int(np.random.SeedSequence([int(seed), int(kind), block]).generate_state(1, dtype=np.uint64)[0] >> 1)
        full = draw(torch.Generator().manual_seed(key), (BLOCK, *shape))
        lo, hi = max(part.start - block * BLOCK, 0), min(part.stop - block * BLOCK, BLOCK)
        rows.append(full[lo:hi])
    return torch.cat(rows)


def normal(g: torch.Generator, shape: tuple[int, ...]) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64)
