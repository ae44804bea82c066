"""DDIM (Song, Meng & Ermon 2021): deterministic at eta = 0, ancestral-equivalent at eta = 1."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .._checks import check_real
from ..models import ScoreModel
from ..schedules import transition
from ..streams import Noise, normal_
from ._common import Start, begin, progress_bar, report
from .exponential import first_order
from .grids import StepGrid, step_grid


def ddim(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    eta: float = 0.0,
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """``x_s = m_s x0_hat + sqrt(sigma_s^2 - c^2) eps + c z``, ``c = eta * sqrt(beta_tilde_ts)`` (eq. 12, in (m, sigma) form).

    Runs on the step grid (:func:`~scoregen.samplers.grids.step_grid`): by default ``steps`` evenly spaced trained
    levels (default 50, or all if the model has fewer); diffusers' DDIMScheduler spacing is ``spacing="leading"``.
    The last step lands on sigma = 0 with x0_hat from the cleanest level. eta = 1 is exactly DDPM ancestral
    sampling with variance beta_tilde; eta = 0 is the deterministic probability-flow discretisation.
    """
    eta = check_real("eta (0: deterministic DDIM, 1: DDPM-equivalent)", eta, 0.0, 1.0)
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="ddim",
                     solver_options={"eta": eta},
                     default_steps=50)
    grid, x = begin(model, z, grid, start, ve=False)
    m, sigma, s = grid.m, grid.sigma, grid.s
    c = [eta * math.sqrt(transition(m[i], sigma[i], m[i + 1], sigma[i + 1])[2]) for i in range(len(m) - 1)]
    # eq. 12 is the first-order exponential step in VE coordinates, y_next = a y + b x0_hat + (c / m_next) z
    # (exponential.first_order; eta = 0: DPM-Solver++(1)). With y = x / m, x0_hat = y - s eps and a + b = 1 it is
    # x_next = (m_next / m) x - m_next b s eps + c z: two in-place passes over x; coefficients computed once here.
    b = [first_order(s[i], s[i + 1], c[i] / m[i + 1])[1] for i in range(len(c))]
    coef = [(m[i + 1] / m[i], -m[i + 1] * b[i] * s[i]) for i in range(len(c))]
    noise = torch.empty_like(z)
    with progress_bar(len(c), progress, "ddim") as bar:
        for i in range(len(c)):
            eps = model.eps(x, sigma[i], m[i], y)
            x.mul_(coef[i][0]).add_(eps, alpha=coef[i][1])
            if c[i] > 0:
                x.add_(normal_(noise, generator), alpha=c[i])
            report(bar, callback, i, x, m[i + 1], sigma[i + 1], eps=eps)
    return x
