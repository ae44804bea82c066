"""Multistep exponential integrators: DPM-Solver++(2M), (3M) and its SDE variant, UniPC, DEIS.

Each solver reuses the model outputs of its previous steps (one evaluation per step) to integrate the
probability-flow ODE in half log-SNR with a polynomial through them; the shared math is in
:mod:`~scoregen.samplers.exponential`. Like :func:`~scoregen.samplers.ode.euler`, they step in VE coordinates
(state ``x / m``, noise ``s = sigma / m``; a callback sees ``m = 1``, ``sigma = s``) on a step grid
(:func:`~scoregen.samplers.grids.step_grid`) whose step coefficients are computed once, before the loop.

**Orders.** A k-step method needs k - 1 past outputs: the first steps warm up at lower order (first order, then
second, ...). **Landing.** Every solver takes its last step, from the cleanest level of the grid onto s = 0, at
first order: ``x <- x0_hat(x, s_min)`` (the exponential integrator's first-order step with ``h = inf``; the
higher-order terms diverge there). This is diffusers' ``final_sigmas_type="zero"`` (which forces a first-order last
step) and k-diffusion's ``sigmas[i + 1] == 0`` branch. As in diffusers, the third-order solvers (``dpmpp_3m``,
``deis`` at order 3) also take the second-to-last step at second order when the grid has fewer than 15 steps
(``lower_order_final``); UniPC lowers its order near the end as diffusers' UniPC does: ``min(order, steps - i)``.

**Default grid.** 20 steps, ``logsnr``: uniform in log-SNR between the model's largest and smallest trained levels,
i.e. equal steps h in the variable these solvers integrate in exactly (up to their polynomial in it), which evens out
their local errors; ``karras`` (rho = 7) crowds the clean end and ``time`` (DDPM time) the noisy end. Measured on the
exact targets ring2d and gmm64 (DDPM's linear schedule), as the mean distance to the exact ODE solution from the same
noise at 10, 20 and 40 steps, ``logsnr`` has the smallest error of the three for dpmpp_2m, dpmpp_3m and unipc (order
2 and 3) on both targets (dpmpp_2m on gmm64 at 20 steps: 0.19 against 0.33 karras and 1.0 time), and for deis on
ring2d (at 10 steps: 0.014 against 0.11 and 0.26); for deis on gmm64, karras is up to 1.7x better (0.24 against 0.41
at 10 steps). For dpmpp_2m_sde (sliced W2 to the target) ``logsnr`` is best at 10 and 20 steps (gmm64, 10 steps:
0.12 against 0.22 and 0.38); at 40 steps all three reach the metric's noise floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Literal, Optional, Union

import torch
from torch import Tensor

from .._checks import check_int, check_real
from ..models import ScoreModel
from ..streams import Noise, normal_
from . import exponential as ei
from ._common import Start, begin, progress_bar, report
from .grids import StepGrid, step_grid

__all__ = ["dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "deis"]

_DEFAULT_STEPS = 20
#: Measured on ring2d and gmm64: see the module docstring.
_DEFAULT_SPACING = "logsnr"


def _orders(n: int, order: int, lower_order_final: bool) -> list[int]:
    """The order of each of ``n`` steps: warm-up ``min(order, i + 1)``, the landing step (to s = 0) first order,
    and with ``lower_order_final`` on fewer than 15 steps the second-to-last at most second order (diffusers)."""
    orders = [min(order, i + 1) for i in range(n)]
    orders[-1] = 1
    if lower_order_final and n < 15 and n >= 2:
        orders[-2] = min(orders[-2], 2)
    return orders


def dpmpp_2m(
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
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): data prediction, one evaluation per step.

    Step i from s_i to s_{i+1}, ``h_i = lam_{i+1} - lam_i``, ``r_i = h_{i-1} / h_i``::

        D_i     = (1 + 1/(2 r_i)) x0_hat_i - 1/(2 r_i) x0_hat_{i-1}
        x_{i+1} = (s_{i+1} / s_i) x_i + h_i phi_1(-h_i) D_i          (h phi_1(-h) = 1 - e^{-h})

    The first step uses ``D_0 = x0_hat_0`` (DPM-Solver++(1), i.e. DDIM); the last step lands on s = 0 with the
    first-order update too, which is ``x = x0_hat(x, s_min)``, the model's prediction at the grid's cleanest level.
    Identical to k-diffusion's ``sample_dpmpp_2m`` on the same sigmas (incl. the trailing 0) and to diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)`` (final_sigmas_type "zero") on the
    same timesteps. Default grid: 20 steps, ``logsnr`` (module docstring). NFE = steps.
    """
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="dpmpp_2m",
                     default_steps=_DEFAULT_STEPS, default_spacing=_DEFAULT_SPACING)
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    lam = [ei.lam(v) for v in s]
    n = len(grid)
    plan = []
    for i in range(n):
        a, b = ei.first_order(s[i], s[i + 1])
        if i == 0 or i == n - 1:  # warm-up and landing: first order
            plan.append((a, (b,)))
        else:
            plan.append((a, ei.dpmpp_2m(b, (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i]))))
    history = ei.History(2)
    with progress_bar(n, progress, "dpmpp_2m") as bar:
        for i in range(n):
            x0 = model.x0(x, s[i], 1.0, y)
            history.push(x0)
            history.apply(x, *plan[i])
            report(bar, callback, i, x, 1.0, s[i + 1], x0=x0)
    return x


def dpmpp_3m(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    coefficient: Literal["reference", "taylor"] = "reference",
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """Third-order multistep DPM-Solver++ (data prediction), one evaluation per step.

    ``x_{i+1} = e^{-h} x_i + h phi_1(-h) x0_hat_i + h phi_2(-h) D1 + h phi_3(-h) D2`` with the divided differences
    D1, D2 of the last three x0_hat (:func:`~scoregen.samplers.exponential.dpmpp_3m`). Orders: 1, 2, then 3; the last
    step lands on s = 0 at first order (``x = x0_hat(x, s_min)``), and on grids of fewer than 15 steps the
    second-to-last step is second order. Default grid: 20 steps, ``logsnr`` (module docstring). NFE = steps.

    ``coefficient``: ``"reference"`` (default) weighs D2 by ``h phi_3(-h)``, as Lu et al.'s code, diffusers and
    k-diffusion do: identical step for step to diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=3)`` (lower_order_final,
    final_sigmas_type "zero") on the same timesteps, second order asymptotically, and the more accurate of the two at
    the budgets the solver is for (gmm64, sliced W2 at 10 NFE: 0.019 against 0.028; ODE error lower below about 60
    steps). ``"taylor"`` weighs it by ``2 h phi_3(-h)``, the Taylor term, which makes the method third order
    (measured slope 3.97 on a Gaussian target) and wins from about 80 steps.
    """
    if coefficient not in ("taylor", "reference"):
        raise ValueError(f"coefficient must be 'reference' (diffusers' and k-diffusion's) or 'taylor' (third order), "
                         f"got {coefficient!r}")
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="dpmpp_3m",
                     solver_options={"coefficient": coefficient},
                     default_steps=_DEFAULT_STEPS, default_spacing=_DEFAULT_SPACING)
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    lam = [ei.lam(v) for v in s]
    n = len(grid)
    plan = []
    for i, p in enumerate(_orders(n, 3, lower_order_final=True)):
        a, b = ei.first_order(s[i], s[i + 1])
        if p == 1:
            plan.append((a, (b,)))
        elif p == 2:
            plan.append((a, ei.dpmpp_2m(b, (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i]))))
        else:
            plan.append(ei.dpmpp_3m(lam[i - 2], lam[i - 1], lam[i], lam[i + 1], taylor=coefficient == "taylor"))
    history = ei.History(3)
    with progress_bar(n, progress, "dpmpp_3m") as bar:
        for i in range(n):
            x0 = model.x0(x, s[i], 1.0, y)
            history.push(x0)
            history.apply(x, *plan[i])
            report(bar, callback, i, x, 1.0, s[i + 1], x0=x0)
    return x


def dpmpp_2m_sde(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    eta: float = 1.0,
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE (k-diffusion's ``sample_dpmpp_2m_sde``, midpoint variant; SDE-DPM-Solver++, Lu et al. 2022).

    Step i, ``h = lam_{i+1} - lam_i``, ``r = h_{i-1} / h``, z ~ N(0, I) from ``generator``::

        x_{i+1} = (s_{i+1} / s_i) e^{-eta h} x_i + (1 - e^{-(1 + eta) h}) D_i + s_{i+1} sqrt(1 - e^{-2 eta h}) z

    with ``D_i`` as in :func:`dpmpp_2m` (``D_0 = x0_hat_0``). ``eta`` (>= 0, default 1) scales the injected noise:
    0 is :func:`dpmpp_2m`; 1 makes the first-order step DDPM's ancestral step (the exact posterior given x0_hat).
    The last step lands on s = 0 without noise, ``x = x0_hat(x, s_min)``. One ``normal_`` draw of the batch's shape
    per step except the last, in step order, after :func:`scoregen.sample`'s initial noise. Default grid: 20 steps,
    ``logsnr`` (module docstring). NFE = steps.
    """
    eta = check_real("eta (0: the ODE solver dpmpp_2m, 1: full SDE noise)", eta, 0.0)
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="dpmpp_2m_sde",
                     solver_options={"eta": eta},
                     default_steps=_DEFAULT_STEPS, default_spacing=_DEFAULT_SPACING)
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    lam = [ei.lam(v) for v in s]
    n = len(grid)
    plan, noise_std = [], []
    for i in range(n):
        c = ei.sde_noise(s[i], s[i + 1], eta)
        a, b = ei.first_order(s[i], s[i + 1], c)
        if i == 0 or i == n - 1:
            plan.append((a, (b,)))
        else:
            plan.append((a, ei.dpmpp_2m(b, (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i]))))
        noise_std.append(c)
    history = ei.History(2)
    noise = torch.empty_like(x) if any(noise_std) else None
    with progress_bar(n, progress, "dpmpp_2m_sde") as bar:
        for i in range(n):
            x0 = model.x0(x, s[i], 1.0, y)
            history.push(x0)
            history.apply(x, *plan[i])
            if noise_std[i] > 0:
                x.add_(normal_(noise, generator), alpha=noise_std[i])
            report(bar, callback, i, x, 1.0, s[i + 1], x0=x0)
    return x


def unipc(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    order: int = 2,
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """UniPC (Zhao et al. 2023): the predictor UniP-p and the corrector UniC-p, B(h) = e^{-h} - 1 ("bh2"), data
    prediction; one evaluation per step (the corrector reuses the next step's evaluation).

    Step i (:func:`~scoregen.samplers.exponential.unipc`)::

        x0_hat_i = x0_hat(x_i, s_i)                       (x_i: the predictor's output)
        x_i     <- UniC-p_{i-1}(x_{i-1}, x0_hat_i, ...)    (i >= 1: correct x_i with its own evaluation)
        x_{i+1}  = UniP-p_i(x_i, x0_hat_i, x0_hat_{i-1}, ...)

    Orders ``p_i = min(order, i + 1, steps - i)`` (warm-up, and diffusers' lower_order_final), so the last step, onto
    s = 0, is UniP-1: ``x = x0_hat(x, s_min)`` at the predicted (uncorrected) state, and no corrector follows it
    (nor is the last corrector computed: the landing step does not read x). ``order`` (1, 2 or 3; default 2, as
    diffusers' solver_order; 3 is recommended there for unconditional sampling): UniPC-p's accuracy is p + 1.
    Identical to diffusers' ``UniPCMultistepScheduler(solver_type="bh2", predict_x0=True, solver_order=order)``
    (lower_order_final, final_sigmas_type "zero", no disabled corrector) on the same timesteps. UniP-2 is
    DPM-Solver++(2M). Default grid: 20 steps, ``logsnr`` (module docstring). NFE = steps.
    """
    order = check_int("order (UniPC's p: 1, 2 or 3)", order, 1, 3)
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="unipc",
                     solver_options={"order": order},
                     default_steps=_DEFAULT_STEPS, default_spacing=_DEFAULT_SPACING)
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    lam = [ei.lam(v) for v in s]
    n = len(grid)
    predictor, corrector = [], []
    for i in range(n):
        if s[i + 1] == 0:  # the landing step: UniP-1 with h = inf
            a, b = ei.first_order(s[i], 0.0)
            predictor.append((a, (b,)))
            corrector.append(None)
            continue
        p = min(order, i + 1, n - i)
        a, pred, corr = ei.unipc(lam[i::-1][:p], lam[i + 1], p)
        predictor.append((a, pred))
        corrector.append((1.0, corr))
    history = ei.History(order + 1)
    with progress_bar(n, progress, "unipc") as bar:
        for i in range(n):
            x0 = model.x0(x, s[i], 1.0, y)
            history.push(x0)
            if i > 0 and s[i + 1] > 0:
                history.apply(x, *corrector[i - 1])  # UniC: x_i += ..., on (x0_hat_i, x0_hat_{i-1}, ...)
            history.apply(x, *predictor[i])  # UniP
            report(bar, callback, i, x, 1.0, s[i + 1], x0=x0)
    return x


def deis(
    model: ScoreModel,
    z: Tensor,
    *,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    order: int = 3,
    generator: Noise = None,
    y: Optional[Tensor] = None,
    start: Optional[Start] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """DEIS, tAB-p (Zhang & Chen 2023): noise prediction, eps extrapolated by the Lagrange polynomial in log-SNR
    through the last p evaluations and integrated exactly, one evaluation per step.

    ``x_{i+1} = x_i + sum_j w_ij eps_{i-j}`` with ``w_ij = int_{s_i}^{s_{i+1}} L_j(-log rho) drho``
    (:func:`~scoregen.samplers.exponential.deis`); tAB-1 is Euler's step, i.e. DDIM. Orders: warm-up
    ``min(order, i + 1)``; the last step lands on s = 0 at first order, ``x = x - s_min eps = x0_hat(x, s_min)``; on
    grids of fewer than 15 steps the second-to-last is at most second order (diffusers' lower_order_final).
    ``order``: 1, 2 or 3 (default 3, diffusers' DEISMultistepScheduler default). Its steps are diffusers'
    ``DEISMultistepScheduler(algorithm_type="deis")`` steps; that scheduler ends at the cleanest trained level
    instead of s = 0, so scoregen's grid for the same run is its timesteps plus that level, plus the landing step.
    Default grid: 20 steps, ``logsnr`` (module docstring). NFE = steps.
    """
    order = check_int("order (DEIS's tAB order: 1, 2 or 3)", order, 1, 3)
    grid = step_grid(model, steps, spacing, sigmas=sigmas, timesteps=timesteps, solver="deis",
                     solver_options={"order": order},
                     default_steps=_DEFAULT_STEPS, default_spacing=_DEFAULT_SPACING)
    grid, x = begin(model, z, grid, start, ve=True)
    s = grid.s
    lam = [ei.lam(v) for v in s]
    n = len(grid)
    plan = []
    for i, p in enumerate(_orders(n, order, lower_order_final=True)):
        plan.append((1.0, (s[i + 1] - s[i],) if p == 1 else ei.deis(lam[i::-1][:p], lam[i + 1], s[i + 1])))
    history = ei.History(order)
    with progress_bar(n, progress, "deis") as bar:
        for i in range(n):
            eps = model.eps(x, s[i], 1.0, y)
            history.push(eps)
            history.apply(x, *plan[i])
            report(bar, callback, i, x, 1.0, s[i + 1], eps=eps)
    return x
