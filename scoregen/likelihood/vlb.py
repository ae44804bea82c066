"""The variational bound of a diffusion model (Ho et al. 2020, eq. 5), per sample, in nats.

``-log p(x0) <= L_T + sum_t L_{t-1} + L_0`` on a grid of levels t_K > ... > t_1 > clean, with

* ``L_T = KL(q(x_T | x0) || N(0, (m_T^2 + sigma_T^2) I))``: the prior (N(0, I) for VP models);
* ``L_{t-1} = KL(q(x_s | x_t, x0) || p(x_s | x_t))`` for each step t -> s above the last: the Gaussian posterior
  ``N(a x_t + b x0, beta_tilde)`` against the model's ``N(a x_t + b x0_hat, v)``, with v the chosen reverse variance
  (:mod:`scoregen.variance`), at one draw ``x_t = m_t x0 + sigma_t eps`` per sample and step;
* ``L_0 = -log p(x0 | x_1)``: the decoder ``N(x0_hat(x_1), v_1)``, discretised onto the data's values
  (``bins``) or a density for continuous data.

On the model's trained steps this is DDPM's bound; on a subsequence of them (``steps``, ``timesteps``) it is the bound
of the respaced chain (the model used as improved-diffusion's respacing uses it), also an upper bound, looser.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int
from .._progress import progress as _progress
from ..models import ScoreModel, prepare_levels
from ..samplers.grids import StepGrid, step_grid
from ..variance import kernels, step_variance, variance_source
from ._inputs import check_data, chunks, normal, per_sample_draws, shift
from .gaussian import discretized_gaussian_nll, gaussian_nll, normal_kl
from .result import NLLResult

__all__ = ["vlb", "prior_kl"]


def prior_kl(x0: Tensor, m: float, sigma: float) -> Tensor:
    """``L_T = KL(N(m x0, sigma^2 I) || N(0, (m^2 + sigma^2) I))`` per sample (B,), in nats: the prior every scoregen
    sampler draws from (N(0, I) for VP models)."""
    var = m * m + sigma * sigma
    kl = normal_kl(m * x0, sigma * sigma, torch.zeros_like(x0), var)
    return kl.flatten(1).sum(1)


@torch.no_grad()
def vlb(
    model: ScoreModel,
    x0: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    timesteps: Optional[Sequence[float]] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    variance: str = "beta_tilde",
    bins: Optional[int] = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    y=None,
    seed: int = 0,
    batch_size: Optional[int] = 256,
    progress: Optional[bool] = None,
    details: bool = False,
    index_offset: int = 0,
) -> Union[Tensor, NLLResult]:
    """The variational bound on ``-log p(x0)`` of each sample, in nats: a (B,) float64 tensor.

    Args:
        model: any score model; a VP model on its trained steps gives DDPM's bound. ``variance="analytic"`` needs it
            wrapped by :func:`scoregen.analytic_variance`; ``"learned"`` needs variance channels.
        x0: data, shape (B, *model.shape), in the model's data scale.
        steps, spacing, timesteps, sigmas: the levels of the chain (:func:`scoregen.step_grid`); by default every
            trained level of a discrete model (1000 uniform times of a continuous one). Costs one network evaluation
            per level and sample.
        variance: the reverse steps' variance, ``beta_tilde``, ``beta``, ``learned`` or ``analytic``.
        bins: the number of evenly spaced values the data takes in ``data_range`` (256 for 8-bit images, 17 for the
            digits): the decoder is then Ho et al.'s discretised Gaussian and the bound is on a probability; None: a
            Gaussian density for continuous data.
        y: class labels for a class-conditional model.
        seed: seeds the noise draws, one per sample and level: sample i's depend on (seed, level, i) alone, so the
            result does not depend on ``batch_size`` or on how the data is split.
        batch_size: samples evaluated together.
        details: return an :class:`NLLResult` (bits/dim, standard error, every term) instead of the tensor.
        index_offset: the index of ``x0[0]`` in the whole data set (its noise draws are those of sample
            ``index_offset + i``): a process that evaluates ``x[a:b]`` with ``index_offset=a`` gets rows [a, b) of
            the result for all of ``x`` (``torchrun ... scoregen nll`` splits the data this way; per sample the same
            to rounding of the model's batched evaluations, bit for bit on the built-in targets on CPU).
    """
    x0, grid_bins, labels = check_data(model, x0, bins, data_range, y)
    offset = check_int("index_offset", index_offset, 0)
    moments = variance_source(variance, model)
    times = model.schedule.times
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver=None,
                     default_steps=1000 if times is None else len(times))
    m, sigma = grid.m, grid.sigma
    steps_ = kernels(m, sigma)
    gamma = moments.eps_sq_mean(grid.s[:-1]) if moments is not None else [None] * len(steps_)
    bound = None if moments is None else moments.x0_bound
    fixed = [None if variance == "learned" else step_variance(variance, k, gamma=g, x0_bound=bound)
             for k, g in zip(steps_, gamma)]
    prepare_levels(model, list(sigma[:-1]), list(m[:-1]))
    B, last = x0.shape[0], len(steps_) - 1
    prior, decoder = x0.new_zeros(B, dtype=torch.float64), x0.new_zeros(B, dtype=torch.float64)
    terms = x0.new_zeros((B, last), dtype=torch.float64)
    parts = list(chunks(B, batch_size))
    with _progress(len(parts) * len(steps_), progress, "vlb", "eval", leave=False) as bar:
        for part in parts:
            x, lab, indices = x0[part], None if labels is None else labels[part], shift(part, offset)
            prior[part] = prior_kl(x, m[0], sigma[0]).double()
            for i, k in enumerate(steps_):
                z = per_sample_draws(seed, i, indices, x.shape[1:], normal).to(dtype=x.dtype, device=x.device)
                x_t = m[i] * x + sigma[i] * z
                eps, v = model.eps_and_variance(x_t, sigma[i], m[i], lab)
                x0_hat = (x_t - sigma[i] * eps) / m[i]
                var = fixed[i] if fixed[i] is not None else step_variance("learned", k, v=v)
                if i < last:  # the two posteriors share a x_t: their means differ by b (x0 - x0_hat)
                    kl = normal_kl(k.b * x, k.beta_tilde, k.b * x0_hat, var)
                    terms[part, i] = kl.flatten(1).sum(1).double()
                else:
                    nll = gaussian_nll(x, x0_hat, var) if grid_bins is None else discretized_gaussian_nll(x, x0_hat, var, grid_bins)
                    decoder[part] = nll.flatten(1).sum(1).double()
                bar.update()
    nats = prior + terms.sum(1) + decoder
    if not bool(torch.isfinite(nats).all()):
        raise FloatingPointError("the bound is not finite for some samples: the model returned NaN or inf, or a "
                                 "reverse variance is 0 (check the grid and the variance)")
    if not details:
        return nats
    schedule = model.schedule
    with np.errstate(divide="ignore"):
        label = schedule.t_from_log_snr if schedule.times is None else schedule.nearest_time  # exact trained labels
        t = np.asarray(label(2.0 * (np.log(m[:-1]) - np.log(sigma[:-1]))), dtype=np.float64)
    return NLLResult(nats=nats, dims=x0[0].numel(), method="vlb",
                     terms={"prior": prior, "steps": terms, "decoder": decoder}, t=t, nfe=len(steps_),
                     info={"variance": variance, "bins": bins, "data_range": list(data_range) if bins else None,
                           "levels": len(steps_), "grid": grid.describe(), "seed": int(seed),
                           **({"index_offset": offset} if offset else {})})
