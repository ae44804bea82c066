"""Reverse-SDE samplers in VE coordinates (Song et al. 2021): euler_maruyama and the predictor-corrector sampler pc.

In VE coordinates ``x / m`` with noise ``s = sigma / m`` the forward process is ``dx = sqrt(2 s) dw`` in "time" s
(EDM eq. 6 with sigma(t) = t), and the reverse SDE, run from large s down to 0, is

    dx = -2 s score(x, s) ds + sqrt(2 s) dw        (ds < 0; score = -eps / s, so the drift is 2 eps ds)

which has the same marginals as the probability-flow ODE ``dx/ds = eps(x, s)`` (half its drift, no noise). Every
model runs here in these coordinates (a VP network answers each VE level by log-SNR matching), as :mod:`.ode`'s
solvers do; a callback sees ``m = 1``, ``sigma = s``. Both samplers end with a noise-free step to s = 0 that lands on
x0_hat at the cleanest level (score-SDE's ``noise_removal``), and draw every noise from ``generator`` into one buffer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .._checks import check_int, check_real
from ..models import ScoreModel
from ..streams import Noise, normal_
from ._common import Start, begin, progress_bar, report, sample_group
from .grids import StepGrid, step_grid

__all__ = ["euler_maruyama", "pc"]


def euler_maruyama(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE: ``x <- x + 2 (s_{i+1} - s_i) eps(x, s_i) + sqrt(2 s_i (s_i - s_{i+1})) z``,
    i.e. ``x + 2 s_i (s_i - s_{i+1}) score + sqrt(2 s_i (s_i - s_{i+1})) z``.

    The last step, from the cleanest level s_{N-1} to 0, is noise-free, ``x <- x - s_{N-1} eps(x, s_{N-1})``:
    x0_hat (Tweedie's denoiser), as score-SDE's ``noise_removal``.
    Default grid: 1000 steps, ``logsnr`` (geometric in s between the model's trained extremes: score-SDE's VE grid,
    N = 1000). An Euler-Maruyama step is first order (weakly) in the step, so this sampler needs many steps.
    NFE = steps.
    """
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="euler_maruyama",
                     default_steps=1000, default_spacing="logsnr")
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    n = len(grid)
    drift = [2.0 * (s[i + 1] - s[i]) if s[i + 1] > 0 else -s[i] for i in range(n)]  # the weights of eps
    diffusion = [math.sqrt(2.0 * s[i] * (s[i] - s[i + 1])) if s[i + 1] > 0 else 0.0 for i in range(n)]
    noise = torch.empty_like(x)
    with progress_bar(n, progress, "euler_maruyama") as bar:
        for i in range(n):
            eps = model.eps(x, s[i], 1.0, y)
            x.add_(eps, alpha=drift[i])
            if diffusion[i] > 0:
                x.add_(normal_(noise, generator), alpha=diffusion[i])
            report(bar, callback, i, x, 1.0, s[i + 1], eps=eps)
    return x


def pc(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """Score-SDE's predictor-corrector sampler (Song et al. 2021, Algorithm 2, here in VE coordinates for every
    model), in ``get_pc_sampler``'s order: at each level s_i of the grid, first the corrector, then the predictor.

    * Corrector: ``corrector_steps`` Langevin steps at s_i, ``x <- x + a score(x, s_i) + sqrt(2 a) z`` with
      ``a = 2 (snr ||z|| / ||score||)^2``, where ``||.||`` is the mean of the per-sample norms over a group of
      :func:`~scoregen.samplers._common.sample_group` samples (score-SDE's ``LangevinCorrector``, alpha = 1 in VE
      coordinates, averages over its whole batch; 64 samples of 2-d data, one image from 3x32x32 on). Per-sample
      norms would make a sample near a mode's centre, where ||score|| is near 0, take a step ``a`` so large that it
      jumps far across the mode: in 2-D that inflates the variances by hundreds of standard errors. The groups are
      fixed runs of sample indices (``pc.sample_group``: :func:`scoregen.sample` hands the sampler whole groups), so
      a sample's trajectory depends on its group's noise, the same in any batch or split; called directly on a batch
      that is not a multiple of the group, the whole batch is one group.
    * Predictor: the reverse-diffusion step (``ReverseDiffusionPredictor``, the ancestral VE step)
      ``x <- x + (s_i^2 - s_{i+1}^2) score(x, s_i) + sqrt(s_i^2 - s_{i+1}^2) z``. The last one, from the cleanest
      level s_{N-1} to 0, is noise-free: ``x + s_{N-1}^2 score = x0_hat`` (score-SDE returns its ``x_mean``,
      ``noise_removal``).

    Options: ``snr`` (float > 0, default 0.16: score-SDE's VE CIFAR-10 setting), ``corrector_steps`` (int >= 0,
    default 1; 0 leaves the predictor alone: ancestral sampling on the grid). Default grid: 1000 steps, ``logsnr``
    (geometric in s: score-SDE's VE grid, N = 1000). NFE = steps * (1 + corrector_steps), score-SDE's count.
    Where the batch's score is exactly zero the corrector's step is undefined (infinite) and it does not move.
    """
    snr = check_real("snr", snr, 0.0, lo_open=True)
    corrector_steps = check_int("corrector_steps", corrector_steps, 0)
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="pc", default_steps=1000,
                     default_spacing="logsnr")
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    n = len(grid)
    var = [s[i] ** 2 - s[i + 1] ** 2 for i in range(n)]  # the predictor's step: s_i^2 - s_{i+1}^2
    std = [math.sqrt(v) if s[i + 1] > 0 else 0.0 for i, v in enumerate(var)]
    noise = torch.empty_like(x)
    B, col = x.shape[0], (x.shape[0],) + (1,) * (x.ndim - 1)
    G = sample_group(tuple(x.shape[1:]))
    G = G if B % G == 0 else B

    def group_mean(v: Tensor) -> Tensor:  # (B,) per-sample values -> (B,) the mean of each sample's group
        return v.view(-1, G).mean(1).repeat_interleave(G)

    with progress_bar(n, progress, "pc") as bar:
        for i in range(n):
            for _ in range(corrector_steps):  # corrector: Langevin at s_i
                score = model.score(x, s[i], 1.0, y)
                normal_(noise, generator)
                score_norm = group_mean(score.flatten(1).norm(dim=1))
                ratio = group_mean(noise.flatten(1).norm(dim=1)) / score_norm
                # per-sample (B, 1, ...) tensors: no host sync on an accelerator. A zero score (a stationary point of a
                # whole group) leaves the step undefined (infinite): the corrector then does not move that group
                a = torch.where(score_norm > 0, (2.0 * snr * snr) * ratio.square(), 0.0).view(col)
                x.add_(score * a).add_(noise.mul_(a.mul_(2.0).sqrt_()))
            score = model.score(x, s[i], 1.0, y)  # predictor: reverse diffusion from s_i to s_{i+1}
            x.add_(score, alpha=var[i])
            if std[i] > 0:
                x.add_(normal_(noise, generator), alpha=std[i])
            report(bar, callback, i, x, 1.0, s[i + 1], score=score)
    return x


pc.sample_group = sample_group
