"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any grid of levels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Literal, Optional, Union

import torch
from torch import Tensor

from ..models import ScoreModel
from ..variance import kernels, step_variance, variance_source
from ..streams import Noise, normal_
from ._common import Start, begin, progress_bar, report
from .grids import StepGrid, step_grid


def ddpm(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    variance: Literal["beta_tilde", "beta", "learned", "analytic"] = "beta_tilde",
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """Ancestral sampling through the Gaussian posterior between consecutive levels t -> s.

    ``mu = (x_t - beta_ts / sigma_t * eps) / sqrt(alpha_ts)`` (Ho et al. eq. 11), ``x_s = mu + sqrt(v) z``, no noise
    on the last step. alpha_ts, beta_ts, beta_tilde_ts come from :func:`scoregen.schedules.transition`: on the model's
    own DDPM steps they are alpha_t, beta_t, beta_tilde_t; on an evenly spaced subsequence (``steps``) the respaced
    chain; on an NCSN grid (alpha = 1) the reverse diffusion ``x_s = x_t + (sigma_t^2 - sigma_s^2) score + noise``.

    ``variance`` (:mod:`scoregen.variance`): ``beta_tilde`` (default; optimal for a point-mass x0), ``beta`` (optimal
    for x0 ~ N(0, I)), ``learned`` (the network's variance channels, improved-diffusion's learned range) or
    ``analytic`` (Analytic-DPM's KL-optimal variance; the model must be wrapped by
    :func:`scoregen.analytic_variance`, which estimates ``E||eps||^2`` at the grid's levels once).

    Args:
        z: standard normal noise of shape (B, *shape); the start is ``x_T = sqrt(m_T^2 + sigma_T^2) z``.
        steps, spacing, sigmas, timesteps: the step grid (:func:`~scoregen.samplers.grids.step_grid`); by default
            every trained level of a discrete model (1000 uniform times of a continuous one).
    Returns: samples at the clean level, shape (B, *shape). NFE = number of levels.
    """
    moments = variance_source(variance, model)
    times = model.schedule.times
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="ddpm",
                     default_steps=1000 if times is None else len(times))
    grid, x = begin(model, z, grid, start, ve=False)
    m, sigma = grid.m, grid.sigma
    steps_ = kernels(m, sigma)
    if moments is not None:
        gamma = moments.eps_sq_mean(grid.s[:-1])
        fixed = [step_variance("analytic", k, gamma=g, x0_bound=moments.x0_bound) for k, g in zip(steps_, gamma)]
    elif variance != "learned":
        fixed = [step_variance(variance, k) for k in steps_]
    last = len(steps_) - 1
    noise = torch.empty_like(z)
    with progress_bar(len(steps_), progress, "ddpm") as bar:
        for i, k in enumerate(steps_):
            if variance == "learned":
                eps, v = model.eps_and_variance(x, sigma[i], m[i], y)
            else:
                eps = model.eps(x, sigma[i], m[i], y)
            x.sub_(eps, alpha=k.beta / sigma[i]).div_(math.sqrt(k.alpha))  # mu, eq. 11
            if i < last:
                normal_(noise, generator)
                if variance == "learned":
                    x.add_(noise * step_variance("learned", k, v=v).sqrt())
                else:
                    x.add_(noise, alpha=math.sqrt(fixed[i]))
            report(bar, callback, i, x, m[i + 1], sigma[i + 1], eps=eps)
    return x
