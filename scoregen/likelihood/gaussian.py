"""Gaussian log densities and KLs, elementwise, in nats: the pieces of the variational bound.

* :func:`normal_kl`: ``KL(N(mean1, var1) || N(mean2, var2))``;
* :func:`gaussian_nll`: ``-log N(x; mean, var)``, a density (continuous data);
* :func:`discretized_gaussian_nll`: ``-log P(x)`` where P is the mass of ``N(mean, var)`` on x's bin, for data on
  ``bins`` evenly spaced values in ``[low, high]``, the outer bins stretched to +-infinity (Ho et al. 2020, eq. 13;
  8-bit images: 256 values in [-1, 1], bin width 2/255; scikit-learn's digits: 17 values, width 1/8).
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

__all__ = ["normal_kl", "gaussian_nll", "discretized_gaussian_nll", "Bins"]

Var = Union[float, Tensor]


def normal_kl(mean1: Tensor, var1: Var, mean2: Tensor, var2: Var) -> Tensor:
    """``KL(N(mean1, var1) || N(mean2, var2))`` per element, in nats; variances > 0 (floats or tensors)."""
    var1, var2 = torch.as_tensor(var1, dtype=mean1.dtype, device=mean1.device), torch.as_tensor(var2, dtype=mean1.dtype,
                                                                                               device=mean1.device)
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def gaussian_nll(x: Tensor, mean: Tensor, var: Var) -> Tensor:
    """``-log N(x; mean, var)`` per element, in nats (a density: negative for a narrow Gaussian)."""
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    return 0.5 * (torch.log(2.0 * math.pi * var) + (x - mean) ** 2 / var)


class Bins:
    """``count`` evenly spaced data values in ``[low, high]``: width ``(high - low) / (count - 1)``, each value the
    centre of its bin (8-bit images in [-1, 1]: ``Bins(256)``; the digits' 17 grey levels: ``Bins(17)``)."""

    def __init__(self, count: int, low: float = -1.0, high: float = 1.0):
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ValueError(f"bins must be an integer >= 2 (the number of data values: 256 for 8-bit images, 17 for "
                             f"the digits), got {count!r}")
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"the data range must be finite with low < high, got ({low}, {high})")
        self.count, self.low, self.high = count, low, high
        self.width = (high - low) / (count - 1)

    def index(self, x: Tensor) -> Tensor:
        """The bin of each value (int64, like x); a ValueError when a value is outside the range or off the grid of
        centres by more than 1% of a bin (data that was not quantized this way)."""
        k = torch.round((x.double() - self.low) / self.width)
        off = (x.double() - (self.low + k * self.width)).abs() > 0.01 * self.width
        if bool(off.any()) or bool(((k < 0) | (k > self.count - 1)).any()):
            bad = x[off | (k < 0) | (k > self.count - 1)].flatten()[:3].tolist()
            raise ValueError(f"the data is not on {self.count} evenly spaced values in [{self.low:g}, {self.high:g}] "
                             f"(e.g. {', '.join(f'{v:.6g}' for v in bad)}): give the right bins, or bins=None for "
                             f"continuous data")
        return k.long()

    def __repr__(self) -> str:
        return f"Bins({self.count}, {self.low:g}, {self.high:g})"


def _log_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for lo < hi (standardised), accurate in both tails: computed on the side of 0
    where the smaller of the two CDFs is not close to 1."""
    flip = lo > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)  # Phi(b) - Phi(a) is the same mass
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    d = log_a - log_b  # <= 0
    return log_b + torch.where(d > -math.log(2.0), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def discretized_gaussian_nll(x: Tensor, mean: Tensor, var: Var, bins: Bins) -> Tensor:
    """``-log P(x)`` per element, in nats, where P is the mass ``N(mean, var)`` puts on x's bin (the first and last
    bins extended to -inf and +inf). ``x`` must lie on ``bins``' values (:meth:`Bins.index`)."""
    k = bins.index(x)
    std = torch.as_tensor(var, dtype=x.dtype, device=x.device).sqrt()
    lo = torch.where(k == 0, torch.full_like(x, -math.inf), (x - bins.width / 2 - mean) / std)
    hi = torch.where(k == bins.count - 1, torch.full_like(x, math.inf), (x + bins.width / 2 - mean) / std)
    return -_log_mass(lo, hi)
