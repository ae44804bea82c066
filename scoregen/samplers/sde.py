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
from ._common import Start, begin, progress_bar, report
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
    generator: Optional[torch.Generator] = None,
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
                x.add_(noise.normal_(generator=generator), alpha=diffusion[i])
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
    generator: Optional[torch.Generator] = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """Score-SDE's predictor-corrector sampler (Song et al. 2021, Algorithm 2, here in VE coordinates for every
    model), in ``get_pc_sampler``'s order: at each level s_i of the grid, first the corrector, then the predictor.

    * Corrector: ``corrector_steps`` Langevin steps at s_i, ``x <- x + a score(x, s_i) + sqrt(2 a) z`` with
      ``a = 2 (snr ||z|| / ||score||)^2``, where ``||.||`` is the batch mean of the per-sample norms (score-SDE's
      ``LangevinCorrector`` exactly; alpha = 1 in VE coordinates). One step size for the whole batch, so a sample's
      trajectory depends on the rest of its batch (as in score-SDE), not only on its own noise. Per-sample norms
      would make a sample near a mode's centre, where ||score|| is near 0, take a step ``a`` so large that it jumps
      far across the mode: in 2-D that inflates the variances by hundreds of standard errors.
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
    with progress_bar(n, progress, "pc") as bar:
        for i in range(n):
            for _ in range(corrector_steps):  # corrector: Langevin at s_i
                score = model.score(x, s[i], 1.0, y)
                noise.normal_(generator=generator)
                score_norm = score.flatten(1).norm(dim=1).mean()
                ratio = noise.flatten(1).norm(dim=1).mean() / score_norm
                # a 0-d tensor: no host sync on an accelerator. A zero score (a stationary point of the whole batch)
                # leaves the step undefined (infinite): the corrector then does not move
                a = torch.where(score_norm > 0, (2.0 * snr * snr) * ratio.square(), 0.0)
                x.add_(score * a).add_(noise.mul_(a.mul_(2.0).sqrt_()))
            score = model.score(x, s[i], 1.0, y)  # predictor: reverse diffusion from s_i to s_{i+1}
            x.add_(score, alpha=var[i])
            if std[i] > 0:
                x.add_(noise.normal_(generator=generator), alpha=std[i])
            report(bar, callback, i, x, 1.0, s[i + 1], score=score)
    return x
