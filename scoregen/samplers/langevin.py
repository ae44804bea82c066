"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) on a geometric sigma grid.

:func:`langevin_grid` says which levels a run uses and where its sigma_max came from (the data's largest pairwise
distance where the model knows it, NCSNv2's technique 1); :func:`langevin_budget` gives the options that spend an
evaluation budget exactly (per-level step counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..models import ScoreModel
from .._checks import check_int, check_real
from ..schedules import MAX_LEVELS, ncsnv2_levels
from ..streams import Noise, normal_
from ._common import Start, begin, progress_bar, report, warn_at_caller
from .grids import StepGrid, step_grid

__all__ = ["langevin", "langevin_grid", "langevin_budget", "LangevinGrid"]


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


class LangevinGrid(list):
    """Langevin's VE noise levels, largest first: a ``list`` of floats, with ``source``, where sigma_max came from."""

    def __init__(self, sigmas, source: str):
        super().__init__(float(s) for s in sigmas)
        self.source = source

    def describe(self) -> str:
        """One line: "24 levels, sigma 9.63 -> 0.01 (sigma_max: the training data's largest pairwise distance ...)"."""
        span = f"sigma {self[0]:.4g}" if len(self) == 1 else f"sigma {self[0]:.4g} -> {self[-1]:.4g}"
        return f"{len(self)} level{'s' * (len(self) != 1)}, {span} (sigma_max: {self.source})"

    def __repr__(self) -> str:
        return f"LangevinGrid({list(self)!r}, source={self.source!r})"


def langevin_grid(model: ScoreModel, shape_or_dim: Union[int, Sequence[int]], levels: Optional[int] = None,
                  sigma_max: Optional[float] = None, sigma_min: Optional[float] = None,
                  dtype: torch.dtype = torch.float32, *, spacing: Optional[str] = None,
                  sigmas: Union[Sequence[float], StepGrid, None] = None,
                  timesteps: Optional[Sequence[float]] = None) -> LangevinGrid:
    """The VE noise levels :func:`langevin` runs on for these options, largest first, and where sigma_max came from.

    ``shape_or_dim``: the sample shape (``model.shape``) or its number of elements D (the default number of levels
    grows with D, NCSNv2's technique 2); ``dtype`` the samples' dtype (it bounds sigma_min).

    * No ``levels``, ``sigma_max`` or ``sigma_min`` on a model trained on NCSN levels (a discrete VE schedule):
      exactly those levels.
    * Otherwise a geometric grid from sigma_max down to sigma_min with L levels (default :func:`ncsnv2_levels`).
      Unless given, sigma_max and sigma_min are the model's ``sigma_range``: sigma_max is the data's largest
      pairwise distance (NCSNv2's technique 1) wherever the model knows it (an exact :class:`~scoregen.GaussianMixture`;
      a network trained by ``scoregen train``, which records it as ``meta.data.sigma_max``), else the model's
      largest trained VE level (157 on DDPM's linear schedule, far above data in [-1, 1]).

    * With ``spacing``, ``sigmas`` or ``timesteps``: the noisy levels of that step grid
      (:func:`~scoregen.samplers.grids.step_grid`, ``levels`` of them; karras and logsnr between sigma_max and
      sigma_min as above), e.g. ``spacing="trained", levels=50`` for 50 of a DDPM network's trained levels.

    ``LangevinGrid.source`` (and :meth:`LangevinGrid.describe`) says which. A geometric grid is refused when sigma_min
    is below what ``dtype`` resolves (:data:`RESOLUTION_ULPS`) and warned about when consecutive levels are more than
    :data:`MAX_LEVEL_RATIO` apart.
    """
    dim = check_int("shape_or_dim", shape_or_dim) if isinstance(shape_or_dim, (int, np.integer)) else \
        math.prod(check_int("a shape entry", d) for d in shape_or_dim)
    schedule = model.schedule
    if spacing is not None or sigmas is not None or timesteps is not None:
        default_max, default_min = model.sigma_range
        ranged = spacing in ("karras", "logsnr")
        grid = step_grid(model, levels, spacing, sigmas=sigmas, timesteps=timesteps, solver="langevin",
                         default_steps=ncsnv2_levels(default_max, default_min, dim),
                         sigma_max=(default_max if sigma_max is None else sigma_max) if ranged else sigma_max,
                         sigma_min=sigma_min)
        return LangevinGrid(grid.s[:-1], f"step grid: {grid.spacing}")
    if levels is None and sigma_max is None and sigma_min is None and not schedule.variance_preserving \
            and schedule.times is not None:
        return LangevinGrid(schedule.levels()[1], "the model's trained NCSN levels (its schedule's sigmas)")
    default_max, default_min = model.sigma_range
    if sigma_max is None:
        source = getattr(model, "sigma_max_source", None) or "the model's sigma_range"
    else:
        source = "given (sigma_max)"
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
        return LangevinGrid([sigma_min], source)
    ratio = (sigma_max / sigma_min) ** (1.0 / (levels - 1))
    if ratio > MAX_LEVEL_RATIO:
        fine = math.ceil(math.log(sigma_max / sigma_min) / math.log(MAX_LEVEL_RATIO)) + 1
        warn_at_caller(
            f"langevin: {levels} levels from sigma_max={sigma_max:g} to sigma_min={sigma_min:g} shrink sigma by a factor "
            f"of {ratio:.3g} per level; each level only relaxes the state over a few times its own sigma, so beyond a "
            f"factor of {MAX_LEVEL_RATIO:g} the samples keep the spread of a much noisier level: raise levels to at "
            f"least {fine} (or raise sigma_min)", UserWarning)
    return LangevinGrid(np.geomspace(sigma_max, sigma_min, levels), source)


def langevin_budget(nfe: int, levels: int, *, final_denoise: bool = False) -> dict:
    """:func:`langevin` options that spend exactly ``nfe`` model evaluations on (at most) ``levels`` levels.

    ``B = nfe`` (``nfe - 1`` with ``final_denoise``, whose last step is one evaluation) is spent on ``L = min(levels, B)``
    levels: ``B // L`` steps on every level and one more on each of the first ``B % L`` (the largest sigmas).

    The extra steps go first because that is where a step does the most. Level i moves the state by the step
    ``a_i = step_lr * sigma_i^2 / sigma_L^2``: while sigma_i is well above the data's own spread s, each step removes
    a fixed share (a_i / sigma_i^2 = 0.2 at the default step_lr) of whatever excess spread the coarser levels left,
    while at the last levels, where sigma_i < s, a step moves the state by only about a_i / s^2 of its distance to
    the data, so an extra step there changes little. Measured on the exact targets (3 seeds, n = 4000): gmm64 at 35
    evaluations on 25 levels, sliced W2 0.93 with the extra steps first against 2.70 with them last (mode TV 0.48
    against 0.93); at 60, 0.42 against 0.68; ring2d at 15 evaluations on 10 levels, 0.53 against 0.80.

    Returns ``{"levels": L, "steps_per_level": T}`` with T an int when B is a multiple of L, else a list of L ints
    (largest sigma first), plus ``"final_denoise": True`` when asked: ready for
    ``sample(model, "langevin", ..., **langevin_budget(nfe, levels))``.
    """
    nfe = check_int("nfe (the evaluation budget)", nfe)
    levels = check_int("levels", levels, 1, MAX_LEVELS)
    if not isinstance(final_denoise, (bool, np.bool_)):
        raise ValueError(f"final_denoise must be True or False, got {final_denoise!r}")
    spend = nfe - 1 if final_denoise else nfe
    if spend < 1:
        raise ValueError(f"a budget of nfe={nfe} evaluations leaves none for the levels once the final denoising step "
                         "(one evaluation) is paid: give nfe >= 2")
    L = min(levels, spend)
    base, extra = divmod(spend, L)
    steps: Union[int, list[int]] = base if extra == 0 else [base + (i < extra) for i in range(L)]
    out = {"levels": L, "steps_per_level": steps}
    if final_denoise:
        out["final_denoise"] = True
    return out


def _steps_per_level(steps_per_level, levels: int) -> list[int]:
    """``steps_per_level`` as one positive step count per level: an int for every level, or a sequence of ``levels``."""
    if isinstance(steps_per_level, Tensor) and steps_per_level.ndim == 1 or \
            isinstance(steps_per_level, np.ndarray) and steps_per_level.ndim == 1 or \
            isinstance(steps_per_level, Sequence) and not isinstance(steps_per_level, (str, bytes)):
        values = steps_per_level.tolist() if isinstance(steps_per_level, (Tensor, np.ndarray)) else list(steps_per_level)
        if len(values) != levels:
            raise ValueError(f"steps_per_level has {len(values)} entries but the grid has {levels} levels: give one "
                             f"step count per level (largest sigma first), or one int for every level")
        return [check_int(f"steps_per_level[{i}]", v) for i, v in enumerate(values)]
    return [check_int("steps_per_level", steps_per_level)] * levels


def langevin(
    model: ScoreModel,
    z: Tensor,
    *,
    levels: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    steps_per_level: Union[int, Sequence[int]] = 100,
    step_lr: Optional[float] = None,
    sigma_max: Optional[float] = None,
    sigma_min: Optional[float] = None,
    final_denoise: bool = False,
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """For sigma_1 > ... > sigma_L (VE coordinates, m = 1): ``a_i = step_lr * sigma_i^2 / sigma_L^2`` and
    T_i steps ``x <- x + a_i * score(x, sigma_i) + sqrt(2 a_i) z`` at level i.

    This is the reference code's convention (the paper writes a_i/2 and sqrt(a_i)), so published
    step_lr values carry over: NCSN sigma 1 -> 0.01, L=10, T=100, step_lr=2e-5.

    Defaults (:func:`langevin_grid`): on a model trained on NCSN levels (a discrete VE schedule), exactly those
    sigmas; otherwise a geometric grid from sigma_max down to sigma_min with L from :func:`ncsnv2_levels` (10 in low
    dimension), both from the model's ``sigma_range``, whose sigma_max is the data's largest pairwise distance
    wherever it is known (exact mixtures; networks trained by ``scoregen train``, which records it), else the
    model's largest trained level; ``step_lr = 0.2 * sigma_L^2``, which keeps NCSN's ratio a_L / sigma_L^2 = 0.2
    (2e-5 at sigma_L = 0.01). ``steps_per_level``: one int T for every level (default 100), or a sequence of one
    step count per level, largest sigma first (:func:`langevin_budget` spends a budget exactly).
    ``spacing``, ``sigmas`` or ``timesteps`` take the levels from a step grid instead (:func:`langevin_grid`).
    With an SDEdit ``start`` the run begins at its level with the step count of the first level it replaces.
    ``final_denoise`` adds NCSNv2's last step ``x <- x + sigma_L^2 score(x, sigma_L)``.
    A geometric grid needs ``sigma_min >= 8 * eps`` of z's dtype (about 1e-6 in float32: smaller levels round
    away on data of unit scale, :data:`RESOLUTION_ULPS`), and warns when consecutive levels are more than a
    factor 10 apart (:data:`MAX_LEVEL_RATIO`: too coarse to anneal through).
    Works on any score model: a VP-trained network answers these VE levels by log-SNR matching.
    NFE = sum of the steps per level (levels * steps_per_level for an int), +1 with final_denoise.
    """
    sigmas = langevin_grid(model, math.prod(z.shape[1:]), levels, sigma_max, sigma_min, z.dtype, spacing=spacing,
                           sigmas=sigmas, timesteps=timesteps)
    steps = _steps_per_level(steps_per_level, len(sigmas))
    sigma_L = sigmas[-1]  # the step sizes' reference level, also when an SDEdit start cuts the grid below it
    step_lr = 0.2 * sigma_L**2 if step_lr is None else check_real("step_lr", step_lr, 0.0, lo_open=True)
    grid, x = begin(model, z, StepGrid((1.0,) * (len(sigmas) + 1), (*sigmas, 0.0), "langevin", False), start, ve=True)
    if len(grid) != len(sigmas) or grid.s[0] != sigmas[0]:  # an SDEdit start: its level, then the levels below it
        kept = len(grid) - 1
        steps = [steps[max(len(sigmas) - kept - 1, 0)]] + steps[len(sigmas) - kept:]
        sigmas = grid.s[:-1]
    noise = torch.empty_like(z)
    with progress_bar(sum(steps), progress, "langevin") as bar:
        for i, sigma in enumerate(sigmas):
            a = step_lr * sigma**2 / sigma_L**2  # Algorithm 1, step size alpha_i
            for _ in range(steps[i]):
                score = model.score(x, sigma, 1.0, y)
                x.add_(score, alpha=a).add_(normal_(noise, generator), alpha=math.sqrt(2 * a))
            bar.update(steps[i] - 1)
            report(bar, callback, i, x, 1.0, sigma)
    if final_denoise:
        x = x + sigmas[-1] ** 2 * model.score(x, sigmas[-1], 1.0, y)  # Tweedie: E[x0 | x] at sigma_L
    return x
