"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) on a geometric sigma grid."""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..models import ScoreModel
from .._checks import check_int, check_real
from ..schedules import MAX_LEVELS, ncsnv2_levels
from ._common import prior, progress_bar, warn_at_caller


#: sigma_min must be at least this many units of the dtype's resolution eps (float32: 8 * 1.2e-7, about 1e-6;
#: float64: 1.8e-15). A level's noise step sqrt(2 a_i) z is a multiple of sigma_i (0.63 sigma_i at NCSN's
#: a_i / sigma_i^2 = 0.2), while the state at the low levels has the data's scale, about 1 (the scale the samplers'
#: prior assumes). Below a few eps of that scale the update rounds away: such levels do nothing at all, however
#: many steps they get. (Not relative to sigma_max: the state shrinks to the data's scale as sigma falls, and a
#: DDPM network's largest VE level can be 2e4 while its data lies in [-1, 1].)
RESOLUTION_ULPS = 8

#: Warn when consecutive levels shrink by more than this factor. At level i the chain moves a distance of about
#: sqrt(2 a_i T) = sqrt(2 T step_lr / sigma_L^2) sigma_i (6 sigma_i with NCSN's T = 100, a_i / sigma_i^2 = 0.2):
#: a state spread at the previous, much larger sigma is not relaxed to the new one, and once sigma_i is below the
#: data's own scale the chain freezes it. On ring2d, sigma 4.0 -> 1e-30 in 10 levels (a factor ~2500 per level)
#: returns the sigma = 4.0 cloud (sliced W2 3.2, against 0.09 for the default grid), with no error.
MAX_LEVEL_RATIO = 10.0


def _sigma_grid(model: ScoreModel, dim: int, levels: Optional[int], sigma_max: Optional[float],
                sigma_min: Optional[float], dtype: torch.dtype) -> list[float]:
    """The VE noise levels, largest first: the model's own NCSN levels, or a geometric grid.

    A geometric grid is refused when sigma_min is below what ``dtype`` resolves (:data:`RESOLUTION_ULPS`)
    and warned about when consecutive levels are more than :data:`MAX_LEVEL_RATIO` apart.
    """
    schedule = model.schedule
    if levels is None and sigma_max is None and sigma_min is None and not schedule.variance_preserving \
            and schedule.times is not None:
        return [float(s) for s in schedule.levels()[1]]
    default_max, default_min = model.sigma_range
    sigma_max = check_real("sigma_max", default_max if sigma_max is None else sigma_max, 0.0, lo_open=True)
    sigma_min = check_real("sigma_min", default_min if sigma_min is None else sigma_min, 0.0, lo_open=True)
    if not sigma_max > sigma_min:
        raise ValueError(f"need finite sigma_max > sigma_min > 0, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    eps = torch.finfo(dtype).eps
    lowest = RESOLUTION_ULPS * eps
    if sigma_min < lowest:
        raise ValueError(
            f"sigma_min={sigma_min:g} is below what {str(dtype).replace('torch.', '')} resolves: on data of unit scale "
            f"(the scale the samplers' prior assumes) a level under {RESOLUTION_ULPS} * eps = {lowest:.3g} changes the "
            f"state by less than its rounding (relative resolution {eps:.2g}), so such levels do nothing. Use "
            f"sigma_min >= {lowest:.3g} (usable range [{lowest:.3g}, sigma_max={sigma_max:g})), or sample in a wider "
            "dtype (dtype=torch.float64)")
    levels = ncsnv2_levels(sigma_max, sigma_min, dim) if levels is None else check_int("levels", levels, 1, MAX_LEVELS)
    if levels == 1:
        return [sigma_min]
    ratio = (sigma_max / sigma_min) ** (1.0 / (levels - 1))
    if ratio > MAX_LEVEL_RATIO:
        fine = math.ceil(math.log(sigma_max / sigma_min) / math.log(MAX_LEVEL_RATIO)) + 1
        warn_at_caller(
            f"langevin: {levels} levels from sigma_max={sigma_max:g} to sigma_min={sigma_min:g} shrink sigma by a factor "
            f"of {ratio:.3g} per level; each level only relaxes the state over a few times its own sigma, so beyond a "
            f"factor of {MAX_LEVEL_RATIO:g} the samples keep the spread of a much noisier level: raise levels to at "
            f"least {fine} (or raise sigma_min)", UserWarning)
    return [float(s) for s in np.geomspace(sigma_max, sigma_min, levels)]


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
    A geometric grid needs ``sigma_min >= 8 * eps`` of z's dtype (about 1e-6 in float32: smaller levels round
    away on data of unit scale, :data:`RESOLUTION_ULPS`), and warns when consecutive levels are more than a
    factor 10 apart (:data:`MAX_LEVEL_RATIO`: too coarse to anneal through).
    Works on any score model: a VP-trained network answers these VE levels by log-SNR matching.
    NFE = levels * steps_per_level (+1 with final_denoise).
    """
    sigmas = _sigma_grid(model, math.prod(z.shape[1:]), levels, sigma_max, sigma_min, z.dtype)
    steps_per_level = check_int("steps_per_level", steps_per_level)
    step_lr = 0.2 * sigmas[-1] ** 2 if step_lr is None else check_real("step_lr", step_lr, 0.0, lo_open=True)
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
