"""Probability-flow ODE solvers in VE coordinates (Karras et al. 2022): euler, heun.

Every VP or VE process reduces to VE coordinates ``x / m`` with noise ``s = sigma / m``, where the probability-flow
ODE is ``dx/ds = eps(x, s)`` (EDM eq. 4 with sigma(t) = t). The solvers' state is in these coordinates (a callback
sees ``m = 1``, ``sigma = s``); the model answers each VE level by log-SNR matching, so a VP network needs nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..models import ScoreModel
from ._common import Start, begin, progress_bar, report
from .grids import StepGrid, step_grid

__all__ = ["euler", "heun"]


def euler(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    generator: Optional[torch.Generator] = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE: ``x <- x + (s_{i+1} - s_i) eps(x, s_i)`` (EDM eq. 4).

    Identical to DDIM with eta = 0 on the same grid (DDIM is this step written in the model's coordinates).
    Default grid: 50 steps, ``karras``. NFE = steps; the last step lands on s = 0 at x0_hat of the cleanest level.
    """
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="euler", default_spacing="karras")
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    with progress_bar(len(grid), progress, "euler") as bar:
        for i in range(len(grid)):
            eps = model.eps(x, s[i], 1.0, y)
            x.add_(eps, alpha=s[i + 1] - s[i])
            report(bar, callback, i, x, 1.0, s[i + 1], eps=eps)
    return x


def heun(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    generator: Optional[torch.Generator] = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """Heun's second-order method (EDM Algorithm 1): an Euler step to s_{i+1}, then the trapezoid of the slopes at
    both ends; the last step, to s = 0, stays first order (the slope at 0 is undefined).

    Default grid: 18 steps, ``karras`` (EDM's CIFAR-10 setting). NFE = 2 steps - 1.
    """
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="heun", default_steps=18,
                     default_spacing="karras")
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    with progress_bar(len(grid), progress, "heun") as bar:
        for i in range(len(grid)):
            h = s[i + 1] - s[i]
            d = model.eps(x, s[i], 1.0, y)
            if s[i + 1] == 0:
                x.add_(d, alpha=h)  # Algorithm 1, line 6: Euler to sigma = 0
            else:
                d_next = model.eps(x + h * d, s[i + 1], 1.0, y)  # lines 5 and 9
                x.add_(d + d_next, alpha=h / 2)  # line 10: the trapezoidal rule
            report(bar, callback, i, x, 1.0, s[i + 1], eps=d)
    return x
