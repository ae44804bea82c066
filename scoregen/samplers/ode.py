"""Probability-flow ODE solvers in VE coordinates: euler, heun (Karras et al. 2022, Algorithm 1), edm (its stochastic
Algorithm 2), ipndm (a linear multistep method) and ode (scipy's adaptive Runge-Kutta).

Every VP or VE process reduces to VE coordinates ``x / m`` with noise ``s = sigma / m``, where the probability-flow
ODE is ``dx/ds = eps(x, s)`` (EDM eq. 4 with sigma(t) = t). The solvers' state is in these coordinates (a callback
sees ``m = 1``, ``sigma = s``); the model answers each VE level by log-SNR matching, so a VP network needs nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int, check_real
from ..errors import ScoregenError
from ..models import ScoreModel, class_labels, prepare_levels
from ..streams import Noise, normal_
from . import exponential as ei
from . import _adaptive as adaptive
from ._common import Start, begin, progress_bar, report
from .grids import StepGrid, step_grid

__all__ = ["euler", "heun", "edm", "ipndm", "ode", "ODE_METHODS", "ODESolverError"]


def euler(
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
    generator: Noise = None,
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
            d = _heun_step(model, x, s[i], s[i + 1], y)
            report(bar, callback, i, x, 1.0, s[i + 1], eps=d)
    return x


def _heun_step(model: ScoreModel, x: Tensor, s_from: float, s_to: float, y: Optional[Tensor]) -> Tensor:
    """One step of EDM's Algorithm 1 (lines 4-10) from VE level ``s_from`` to ``s_to``, updating ``x`` in place:
    Euler, then the trapezoid of the slopes at both ends; Euler alone when ``s_to`` is 0 (the slope at 0 is
    undefined). Returns the slope at ``s_from``, eps(x, s_from). Shared by :func:`heun` and :func:`edm`."""
    h = s_to - s_from
    d = model.eps(x, s_from, 1.0, y)
    if s_to == 0:
        x.add_(d, alpha=h)  # Algorithm 1, line 6: Euler to sigma = 0
    else:
        d_next = model.eps(torch.add(x, d, alpha=h), s_to, 1.0, y)  # lines 5 and 9
        x.add_(d, alpha=h / 2).add_(d_next, alpha=h / 2)  # line 10: the trapezoidal rule
    return d


def edm(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): at each level s_i of the N-step grid, first "churn":
    raise the noise to ``s_hat = (1 + gamma_i) s_i`` by adding fresh noise,
    ``x <- x + sqrt(s_hat^2 - s_i^2) S_noise z``,
    with ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` for s_i in [S_tmin, S_tmax] and 0 elsewhere; then one Heun step
    from s_hat to s_{i+1} (:func:`heun`'s step; Euler on the last step, to s = 0, which lands on x0_hat).

    Options: ``s_churn`` (float >= 0, default 0: no churn, the result is exactly :func:`heun`'s), ``s_tmin`` (float
    >= 0, default 0), ``s_tmax`` (float >= s_tmin or inf, default inf), ``s_noise`` (float >= 0, default 1; EDM's
    ImageNet setting: churn 40, tmin 0.05, tmax 50, noise 1.003). Noise is drawn only at the levels that churn, one
    standard normal block per such level, from ``generator`` (k-diffusion's ``sample_heun`` draws at every level).
    Default grid: 18 steps, ``karras`` (EDM's CIFAR-10 setting). NFE = 2 steps - 1, as :func:`heun`.
    """
    s_churn = check_real("s_churn", s_churn, 0.0)
    s_tmin = check_real("s_tmin", s_tmin, 0.0)
    if not (isinstance(s_tmax, (int, float)) and not isinstance(s_tmax, bool) and s_tmax == math.inf):
        s_tmax = check_real("s_tmax (a VE level, or inf)", s_tmax, s_tmin)
    s_noise = check_real("s_noise", s_noise, 0.0)
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="edm", default_steps=18,
                     solver_options={"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise},
                     default_spacing="karras")
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    gamma = min(s_churn / len(grid), math.sqrt(2.0) - 1.0)
    # per level: s_hat (where the Heun step starts) and the std of the noise added to get there (0: no churn)
    s_hat = [si * (1.0 + gamma) if gamma > 0 and s_tmin <= si <= s_tmax else si for si in s[:-1]]
    churn = [s_noise * math.sqrt(sh * sh - si * si) if sh != si else 0.0 for si, sh in zip(s, s_hat)]
    noise = None
    if any(sh != si for si, sh in zip(s, s_hat)):
        prepare_levels(model, s_hat, 1.0)
        noise = torch.empty_like(x)
    with progress_bar(len(grid), progress, "edm") as bar:
        for i in range(len(grid)):
            if s_hat[i] != s[i]:  # Algorithm 2, lines 4-6: churn
                x.add_(normal_(noise, generator), alpha=churn[i])
            d = _heun_step(model, x, s_hat[i], s[i + 1], y)  # lines 7-11
            report(bar, callback, i, x, 1.0, s[i + 1], eps=d, sigma_hat=s_hat[i])
    return x


#: iPNDM's coefficients: the Adams-Bashforth weights of eps at the current level and the 0-3 previous ones.
_AB = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ipndm(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    order: int = 4,
    variable_step: bool = False,
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """Improved PNDM (Zhang & Chen 2023, DEIS, appendix): a linear multistep method on the probability-flow ODE
    ``dx/ds = eps(x, s)``, ``x <- x + sum_j w_j eps(x_{i-j}, s_{i-j})`` of order k = min(order, i + 1) (lower orders
    warm up the first steps, which have fewer past evaluations), one new evaluation per step.

    ``variable_step`` False (default): iPNDM's fixed weights (55, -59, 37, -9)/24 h as published (``sample_ipndm`` in
    zju-pi/diff-sampler), exact for equal steps in s only (on karras or logsnr grids it is second order), with an
    Euler last step onto s = 0 that lands on x0_hat of the cleanest level. True: the Adams-Bashforth weights of the
    grid's actual steps (:func:`~scoregen.samplers.exponential.adams_bashforth`, k-diffusion's ``sample_lms`` in
    closed form), fourth order on any grid; the last step, onto s = 0, also integrates the polynomial (eps is smooth
    in s down to 0). The published weights are the more accurate at few steps (gmm64, sliced W2 at 5 / 10 NFE on the
    logsnr grid: 0.031 / 0.014 against 0.11 / 0.031), the variable ones from about 20.
    ``order``: int in 1..4, default 4 (1 is :func:`euler`). Default grid: 20 steps, ``karras``. NFE = steps.
    """
    order = check_int("order", order, 1, len(_AB))
    if not isinstance(variable_step, bool):
        raise ValueError(f"variable_step must be True or False, got {variable_step!r}")
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="ipndm", default_steps=20,
                     solver_options={"order": order, "variable_step": variable_step},
                     default_spacing="karras")
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    weights = []  # per step, on (eps_i, eps_{i-1}, ...): once per run
    for i in range(len(grid)):
        k = 1 if s[i + 1] == 0 and not variable_step else min(order, i + 1)  # fixed weights: Euler onto s = 0
        h = s[i + 1] - s[i]
        weights.append(ei.adams_bashforth(s[i::-1][:k], s[i + 1]) if variable_step else tuple(h * c for c in _AB[k - 1]))
    past = ei.History(order)
    with progress_bar(len(grid), progress, "ipndm") as bar:
        for i in range(len(grid)):
            d = model.eps(x, s[i], 1.0, y)
            past.push(d)
            past.apply(x, 1.0, weights[i])
            report(bar, callback, i, x, 1.0, s[i + 1], eps=d)
    return x


class ODESolverError(ScoregenError):
    """The adaptive ODE solver (:func:`ode`) could not finish: its step size fell below what float64 resolves."""


#: The explicit Runge-Kutta methods of ``scipy.integrate`` whose tableaus :func:`ode` runs (the implicit ones, Radau,
#: BDF and LSODA, would estimate a Jacobian by finite differences: dim evaluations per sample each).
ODE_METHODS = ("RK45", "RK23", "DOP853")


def ode(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    method: str = "RK45",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    sigma_min: Optional[float] = None,
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """The probability-flow ODE ``dx/ds = eps(x, s)`` solved by an adaptive Runge-Kutta method of
    ``scipy.integrate`` (score-SDE's ``ode`` sampler, there with ``solve_ivp``'s RK45 and rtol = atol = 1e-5), from
    the grid's first level down to ``sigma_min``, then one step to s = 0: ``x <- x - sigma_min eps(x, sigma_min)``,
    x0_hat at sigma_min (score-SDE's denoising step; the ODE itself is singular at s = 0).

    The grid only gives the two ends: its first level (the start) and its last nonzero level (the default
    ``sigma_min``); with the default ``karras`` spacing both are the model's trained VE extremes, whatever ``steps``.
    Each sample is solved on its own, as scipy solves one sample alone: its own error norm and step size (scipy's
    ``solve_ivp`` on a flattened batch, as score-SDE calls it, takes one norm over the batch, so every sample's steps
    would depend on the rest of the batch and on how a run is split). The samples' stages are evaluated together, in
    one model call at per-sample levels (a tensor of shape (B,)); the state is float64 on z's device, handed to the
    model in z's dtype (:mod:`scoregen.samplers._adaptive`).

    Options: ``method`` (str, one of :data:`ODE_METHODS`, default "RK45"), ``rtol`` (float in [2.2e-14, 1], default 1e-5)
    and ``atol`` (float > 0, default 1e-5): scipy's tolerances, per sample; ``sigma_min`` (float in (0, first level),
    default None: the grid's last nonzero level). NFE = the evaluations of the slowest sample + 1, the final step.
    The callback gets the batch's progress: each time the slowest sample gets further (``i``, ``x`` every sample at
    its own last accepted step, ``sigma`` the slowest one's level, ``nfev`` so far), then the final step.
    Raises :class:`ODESolverError` when the solver fails for a sample (its step size underflows; the message names the
    sample by its row in the batch).
    """
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {list(ODE_METHODS)} (scipy.integrate's explicit Runge-Kutta methods), "
                         f"got {method!r}")
    rtol = check_real("rtol (scipy needs at least 100 float64 eps)", rtol, 100 * float(np.finfo(np.float64).eps), 1.0)
    atol = check_real("atol (> 0: a state component at 0 has no relative scale)", atol, 0.0, lo_open=True)
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="ode", default_steps=2,
                     default_spacing="karras")
    grid, x = begin(model, z, grid, start, ve=True)
    s_start = grid.s[0]
    if sigma_min is None:
        s_end = grid.s[-2]
        if not s_end < s_start:
            raise ValueError(f"ode integrates from the grid's first level to its last nonzero one, but this grid has "
                             f"one level ({s_start:g}){' (what remains below start_level)' if start is not None else ''}: "
                             "use steps >= 2, a higher start_level, or give sigma_min")
    else:
        s_end = check_real(f"sigma_min (where the integration stops, below the first level {s_start:g})", sigma_min,
                           0.0, s_start, lo_open=True, hi_open=True)
    shape, nfev = x.shape, 0
    y = None if y is None else class_labels(y, shape[0], x.device, who="y: ")  # one per sample: rows are picked

    def slope(rows: Optional[Tensor], s: Tensor, state: Tensor) -> Tensor:  # eps at each row's own level s
        nonlocal nfev
        nfev += 1
        labels = y if y is None or rows is None else y[rows]
        out = model.eps(state.view(-1, *shape[1:]).to(x.dtype), s, 1.0, labels)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"ode: the model returned NaN or inf at evaluation {nfev}, at levels s in "
                                     f"[{s.min().item():.4g}, {s.max().item():.4g}]")
        return out.detach().to(torch.float64).reshape(state.shape)

    reached, steps = s_start, 0  # the highest level a sample is still at (the batch's progress); its steps
    with progress_bar(None, progress, f"ode {method}") as bar:
        def on_step(s: Tensor, state: Tensor) -> None:
            nonlocal reached, steps
            level = float(s.max())
            if level < reached:
                reached = level
                report(bar, callback, steps, None if callback is None else state.view(shape).to(x.dtype, copy=True), 1.0, level,
                       nfev=nfev)
                steps += 1

        try:
            state = adaptive.solve(slope, s_start, x.detach().to(torch.float64).reshape(shape[0], -1), s_end, method,
                                   rtol, atol, on_step)
        except adaptive.StepTooSmall as e:
            more = f" and {len(e.rows) - 1} more" if len(e.rows) > 1 else ""
            raise ODESolverError(
                f"ode ({method}, rtol={rtol:g}, atol={atol:g}) failed at s={e.t[0]:.6g} on its way from {s_start:g} "
                f"to {s_end:g} (sample {e.rows[0]} of the batch{more}), after {nfev} evaluations: its step size fell "
                "below float64's resolution. The solution changes too fast there for float64 steps: raise sigma_min, "
                "or loosen rtol / atol") from None
        x = state.view(shape).to(x.dtype)
        x.add_(model.eps(x, s_end, 1.0, y), alpha=-s_end)  # to s = 0: x0_hat at sigma_min
        report(bar, callback, steps, x, 1.0, 0.0, nfev=nfev)
    return x


def _solver_state_bytes(shape: tuple[int, ...]) -> int:
    """:func:`ode`'s float64 solver state per sample, beside the sampler copies every run holds, for the largest
    method: DOP853's 13 stages and its working copies, measured at 32-34 copies of the batch at its peak (RK45 about 20;
    :mod:`scoregen.samplers._batches` counts it)."""
    return 34 * math.prod(shape) * 8


ode.solver_state_bytes = _solver_state_bytes
