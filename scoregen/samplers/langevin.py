"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) on a geometric sigma grid."""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..models import ScoreModel
from ..schedules import check_count, ncsnv2_levels
from ._common import prior, progress_bar


def _sigma_grid(model: ScoreModel, dim: int, levels: Optional[int], sigma_max: Optional[float],
                sigma_min: Optional[float]) -> list[float]:
    """The VE noise levels, largest first: the model's own NCSN levels, or a geometric grid."""
    schedule = model.schedule
    if levels is None and sigma_max is None and sigma_min is None and not schedule.variance_preserving \
            and schedule.times is not None:
        return [float(s) for s in schedule.levels()[1]]
    default_max, default_min = model.sigma_range
    sigma_max = default_max if sigma_max is None else float(sigma_max)
    sigma_min = default_min if sigma_min is None else float(sigma_min)
    if not (math.isfinite(sigma_max) and sigma_max > sigma_min > 0):
        raise ValueError(f"need finite sigma_max > sigma_min > 0, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    levels = ncsnv2_levels(sigma_max, sigma_min, dim) if levels is None else check_count("levels", levels)
    return [float(s) for s in np.geomspace(sigma_max, sigma_min, levels)] if levels > 1 else [sigma_min]


def langevin(
    model: ScoreModel,
    z: Tensor,
    *,
    levels: Optional[int] = None,
    steps_per_level: int = 100,
    step_lr: Optional[float] = None,
    sigma_max: Optional[float] = None,
    sigma_min: Optional[float] = None,
    final_denoise: bool = False,
    generator: Optional[torch.Generator] = None,
    y: Optional[Tensor] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """For sigma_1 > ... > sigma_L (VE coordinates, m = 1): ``a_i = step_lr * sigma_i^2 / sigma_L^2`` and
    T = ``steps_per_level`` steps ``x <- x + a_i * score(x, sigma_i) + sqrt(2 a_i) z``.

    This is the reference code's convention (the paper writes a_i/2 and sqrt(a_i)), so published
    step_lr values carry over: NCSN sigma 1 -> 0.01, L=10, T=100, step_lr=2e-5.

    Defaults: on a model trained on NCSN levels (a discrete VE schedule), exactly those sigmas; otherwise
    a geometric grid over the model's ``sigma_range`` with L from :func:`ncsnv2_levels` (10 in low
    dimension); T = 100 and ``step_lr = 0.2 * sigma_L^2``, which keeps NCSN's ratio a_L / sigma_L^2 = 0.2
    (2e-5 at sigma_L = 0.01). ``final_denoise`` adds NCSNv2's last step ``x <- x + sigma_L^2 score(x, sigma_L)``.
    Works on any score model: a VP-trained network answers these VE levels by log-SNR matching.
    NFE = levels * steps_per_level (+1 with final_denoise).
    """
    sigmas = _sigma_grid(model, math.prod(z.shape[1:]), levels, sigma_max, sigma_min)
    steps_per_level = check_count("steps_per_level", steps_per_level)
    step_lr = 0.2 * sigmas[-1] ** 2 if step_lr is None else float(step_lr)
    if not (math.isfinite(step_lr) and step_lr > 0):
        raise ValueError(f"step_lr must be a finite number > 0, got {step_lr}")
    x, noise = prior(z, 1.0, sigmas[0]), torch.empty_like(z)
    with progress_bar(len(sigmas) * steps_per_level, progress, "langevin") as bar:
        for i, sigma in enumerate(sigmas):
            a = step_lr * sigma**2 / sigmas[-1] ** 2  # Algorithm 1, step size alpha_i
            for _ in range(steps_per_level):
                score = model.score(x, sigma, 1.0, y)
                x.add_(score, alpha=a).add_(noise.normal_(generator=generator), alpha=math.sqrt(2 * a))
            bar.update(steps_per_level)
            if callback is not None:
                callback({"i": i, "x": x, "m": 1.0, "sigma": sigma})
    if final_denoise:
        x = x + sigmas[-1] ** 2 * model.score(x, sigmas[-1], 1.0, y)  # Tweedie: E[x0 | x] at sigma_L
    return x
