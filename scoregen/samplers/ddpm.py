"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any grid of levels."""

from __future__ import annotations

import math
from typing import Callable, Literal, Optional

import torch
from torch import Tensor

from ..models import ScoreModel, prepare_levels
from ..schedules import transition
from ._common import levels_to_clean, prior, progress_bar


def ddpm(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    variance: Literal["beta_tilde", "beta"] = "beta_tilde",
    generator: Optional[torch.Generator] = None,
    y: Optional[Tensor] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """Ancestral sampling through the Gaussian posterior between consecutive levels t -> s.

    ``mu = (x_t - beta_ts / sigma_t * eps) / sqrt(alpha_ts)`` (Ho et al. eq. 11), ``x_s = mu + sqrt(v) z``
    with ``v = beta_tilde_ts`` (default; optimal for a point-mass x0) or ``beta_ts`` (optimal for
    x0 ~ N(0, I)), and no noise on the last step. alpha_ts, beta_ts, beta_tilde_ts come from
    :func:`scoregen.schedules.transition`: on the model's own DDPM steps they are alpha_t, beta_t,
    beta_tilde_t; on an evenly spaced subsequence (``steps``) the respaced chain; on an NCSN grid
    (alpha = 1) the reverse diffusion ``x_s = x_t + (sigma_t^2 - sigma_s^2) score + noise``.

    Args:
        z: standard normal noise of shape (B, *shape); the start is ``x_T = sqrt(m_T^2 + sigma_T^2) z``.
        steps: how many of the model's trained levels to visit (evenly spaced); all when None.
    Returns: samples at the clean level, shape (B, *shape). NFE = number of levels.
    """
    if variance not in ("beta_tilde", "beta"):
        raise ValueError(f"variance must be 'beta_tilde' or 'beta', got {variance!r}")
    m, sigma = levels_to_clean(model, steps)
    kernels = [transition(m[i], sigma[i], m[i + 1], sigma[i + 1]) for i in range(len(m) - 1)]
    prepare_levels(model, sigma[:-1], m[:-1])  # the levels the loop queries, mapped at once
    last = len(kernels) - 1
    x, noise = prior(z, m[0], sigma[0]), torch.empty_like(z)
    with progress_bar(len(kernels), progress, "ddpm") as bar:
        for i, (alpha, beta, beta_tilde) in enumerate(kernels):
            eps = model.eps(x, sigma[i], m[i], y)
            x.sub_(eps, alpha=beta / sigma[i]).div_(math.sqrt(alpha))  # mu, eq. 11
            if i < last:
                v = beta_tilde if variance == "beta_tilde" else beta
                x.add_(noise.normal_(generator=generator), alpha=math.sqrt(v))
            bar.update()
            if callback is not None:
                callback({"i": i, "x": x, "m": m[i + 1], "sigma": sigma[i + 1], "eps": eps})
    return x
