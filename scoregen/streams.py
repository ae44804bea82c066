"""Per-sample random streams: sample i's initial noise and every step's noise are a function of (seed, i) alone.

The samples' indices are cut into fixed blocks of :func:`block_size` indices; block k has its own generator, seeded
from (seed, k) through numpy's ``SeedSequence`` (well-mixed, independent streams). Every draw of a run takes one
standard-normal tensor of shape ``(block, *shape)`` from the generator of each block its samples touch, whole, and
keeps the rows of its own samples. A block's j-th draw is therefore the same whichever batch, process or machine
asks for it, so the samples for indices [a, b) are the same whatever the batch size and however the index range is
split (on the same device type, in the same dtype: generators differ between CPU and CUDA).

A batch that starts or ends inside a block draws the whole block and discards the other rows: at most two blocks
of waste per batch, which the block size bounds (about :data:`BLOCK_ELEMENTS` numbers), while a large batch makes
one call per block, not one per sample.
"""

from __future__ import annotations

from math import prod
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["SampleStreams", "Noise", "block_size", "block_seed", "normal_"]

#: Numbers a block of samples draws at once, at most (before rounding the block down to a power of two).
BLOCK_ELEMENTS = 2**20
#: The most samples per block: beyond this, larger blocks save no measurable per-call overhead.
MAX_BLOCK = 1024


def block_size(shape: tuple[int, ...]) -> int:
    """Samples per block for samples of ``shape``: the largest power of two <= min(MAX_BLOCK, BLOCK_ELEMENTS / numel),
    at least 1 (1024 for vectors and the 8x8 digits, 256 for 3x32x32 images, 4 for 3x256x256). A function of the
    shape alone, so that every run with that shape cuts the indices the same way."""
    per = max(1, min(MAX_BLOCK, BLOCK_ELEMENTS // max(1, prod(int(s) for s in shape))))
    return 1 << (per.bit_length() - 1)


def block_seed(seed: int, block: int) -> int:
    """The generator seed of index block ``block`` of a run with ``seed`` (63 bits, from ``SeedSequence([seed, block])``)."""
    return int(np.random.SeedSequence([int(seed), int(block)]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SampleStreams:
    """The random draws of the samples with indices ``[start, stop)`` of a run with ``seed``.

    Each call of :meth:`normal_` fills a tensor of shape ``(stop - start, *shape)`` with the next standard-normal
    draw of each of these samples: the first call is the initial noise, the following ones a sampler's step noise,
    in the order the sampler draws them. Two runs (or two ranks) that hold overlapping index ranges draw identical
    rows for their common indices.
    """

    def __init__(self, seed: int, start: int, stop: int, shape: tuple[int, ...], *,
                 device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32):
        if not 0 <= start < stop:
            raise ValueError(f"need 0 <= start < stop, got [{start}, {stop})")
        self.seed, self.start, self.stop, self.shape = int(seed), int(start), int(stop), tuple(int(s) for s in shape)
        self.device, self.dtype = torch.device(device), dtype
        self.block = block_size(self.shape)
        first, last = start // self.block, (stop - 1) // self.block
        self.generators = [torch.Generator(self.device).manual_seed(block_seed(seed, k)) for k in range(first, last + 1)]
        self.offset = start - first * self.block  # the first sample's row in the blocks' draw
        self._buffer: Optional[Tensor] = None

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def aligned(self) -> bool:
        """Whether the samples are exactly whole blocks (then each block's draw goes straight into the output)."""
        return self.offset == 0 and len(self) == len(self.generators) * self.block

    def normal_(self, out: Tensor) -> Tensor:
        """Fill ``out`` (shape ``(stop - start, *shape)``) with each sample's next standard-normal draw; returns it."""
        if tuple(out.shape) != (len(self), *self.shape):
            raise ValueError(f"these streams draw for {len(self)} samples of shape {self.shape}, got a tensor of "
                             f"shape {tuple(out.shape)}")
        B = self.block
        if self.aligned and out.is_contiguous():
            for k, g in enumerate(self.generators):
                out[k * B:(k + 1) * B].normal_(generator=g)
            return out
        if self._buffer is None:  # kept: a sampler draws once per step
            self._buffer = torch.empty((len(self.generators) * B, *self.shape), device=self.device, dtype=self.dtype)
        for k, g in enumerate(self.generators):
            self._buffer[k * B:(k + 1) * B].normal_(generator=g)
        return out.copy_(self._buffer[self.offset:self.offset + len(self)])

    def normal(self) -> Tensor:
        """A new tensor holding each sample's next standard-normal draw."""
        return self.normal_(torch.empty((len(self), *self.shape), device=self.device, dtype=self.dtype))

    def __repr__(self) -> str:
        return f"SampleStreams(seed={self.seed}, samples [{self.start}, {self.stop}), block {self.block})"


#: What a sampler draws its noise from: per-sample streams, one torch generator, or None (torch's global generator).
Noise = Union[SampleStreams, torch.Generator, None]


def normal_(out: Tensor, generator: Noise) -> Tensor:
    """Fill ``out`` with standard-normal noise from ``generator``: per-sample streams (what :func:`scoregen.sample`
    passes when it has a seed), one torch generator (a caller's own: draws then depend on the batch), or None (torch's
    global generator). Every sampler draws its noise through this."""
    if isinstance(generator, SampleStreams):
        return generator.normal_(out)
    return out.normal_(generator=generator)
