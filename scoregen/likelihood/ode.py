"""Negative log-likelihood along the probability-flow ODE (Song et al. 2021, eq. 39), per sample, in nats.

In VE coordinates (``y = x / m``, ``s = sigma / m``) every model's probability-flow ODE is ``dy/ds = eps(y, s)``.
Along it, ``d log p_s(y(s)) / ds = -div eps``, so with ``u = log s`` (the variable integrated: the field is smooth
in it over the five decades a diffusion spans)

    log p_{s_min}(x0) = log N(y(s_max); 0, (1 + s_max^2) I) + integral_{log s_min}^{log s_max} s div_y eps(y, s) du,

the ODE started at ``y(s_min) = x0``: the data is read as a sample of the level ``s_min`` (the model's least noisy
level by default). The prior is the Gaussian every scoregen sampler starts from (N(0, I) in VP coordinates).

The divergence is exact (one backward pass per dimension) or Hutchinson-Skilling's ``E[v^T (d eps / dy) v]`` with
probes v fixed per sample for the whole integration (one backward pass per probe). Discrete data is dequantized:
``-log P(x0) <= -E_u log p(x0 + u) - D log(width)`` for u uniform on the bin (Theis et al. 2016), one u per sample.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int, check_real
from .._progress import progress as _progress
from ..models import ScoreModel
from ..samplers import _adaptive as adaptive
from ..samplers.ode import ODE_METHODS, ODESolverError
from ..schedules import ve_levels
from ._inputs import check_data, chunks, normal, per_sample_draws, shift
from .result import NLLResult

__all__ = ["ode_nll", "DIVERGENCES", "PROBES", "EXACT_MAX_DIMS"]

DIVERGENCES = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
#: ``divergence="auto"`` is exact up to this many dimensions per sample, Hutchinson above.
EXACT_MAX_DIMS = 32


def _divergence(f: Tensor, y: Tensor, probes: Optional[Tensor]) -> Tensor:
    """(B,) divergence of ``f(y)`` (B, D) at ``y`` (B, D): exact, or the mean of ``v^T J v`` over ``probes`` (P, B, D)."""
    if probes is None:
        div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for i in range(y.shape[1]):
            (grad,) = torch.autograd.grad(f[:, i].sum(), y, retain_graph=True)
            div = div + grad[:, i]
        return div
    total = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    for j, v in enumerate(probes):
        (vjp,) = torch.autograd.grad(f, y, v, retain_graph=j < len(probes) - 1)
        total = total + adaptive.row_sum(vjp * v)
    return total / len(probes)


def _rademacher(g: torch.Generator, shape: tuple[int, ...]) -> Tensor:
    """+-1 with equal probability: Hutchinson's lower-variance probes."""
    return torch.randint(0, 2, shape, generator=g).double() * 2 - 1


def _uniform(g: torch.Generator, shape: tuple[int, ...]) -> Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64)


def ode_nll(
    model: ScoreModel,
    x0: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    divergence: str = "auto",
    probe: str = "rademacher",
    probes: int = 1,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    bins: Optional[int] = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    y=None,
    seed: int = 0,
    batch_size: Optional[int] = 256,
    progress: Optional[bool] = None,
    details: bool = False,
    index_offset: int = 0,
) -> Union[Tensor, NLLResult]:
    """``-log p(x0)`` of each sample by the probability-flow ODE, in nats: a (B,) float64 tensor.

    Args:
        model: any score model (VP or VE, any parameterization); it must be differentiable in x (torch.autograd).
            A discrete model queried at its nearest trained level has a piecewise-constant field the adaptive solver
            crawls through: use fractional time (scoregen's networks: ``net.score_model()``).
        x0: data (B, *model.shape) in the model's data scale.
        rtol, atol, method: the tolerances and the explicit Runge-Kutta method of scipy.integrate (score-SDE: RK45,
            1e-5), applied to each sample on its own (:mod:`scoregen.samplers._adaptive`): one error norm per sample
            over its state and its divergence integral.
        divergence: ``exact`` (D backward passes per evaluation), ``hutchinson`` (``probes`` backward passes), or
            ``auto``: exact up to :data:`EXACT_MAX_DIMS` dimensions.
        probe: Hutchinson's probe distribution, ``rademacher`` (lower variance) or ``gaussian``.
        sigma_min, sigma_max: the VE levels the integration runs between; default the model's trained VE range.
        bins: the number of evenly spaced values the data takes in ``data_range`` (256: 8-bit images; 17: the digits):
            uniform dequantization, and the result bounds the probability of the values. None: continuous data.
        y: class labels for a class-conditional model.
        seed: seeds the dequantization noise and the probes, which depend on (seed, sample index) alone.
        batch_size: samples integrated together (one batched solve each, every sample with its own steps, so the
            values do not depend on it where the model's arithmetic does not depend on the batch).
        details: return an :class:`NLLResult` (bits/dim, standard error, terms, NFE) instead of the tensor.
        index_offset: the index of ``x0[0]`` in the whole data set (its dequantization and probes are those of
            sample ``index_offset + i``): a process that evaluates ``x[a:b]`` with ``index_offset=a`` gets rows
            [a, b) of the result for all of ``x``, bit for bit where the model's arithmetic does not depend on the
            batch (exact targets; see :func:`scoregen.sample`).
    Raises:
        ODESolverError: the solver failed (its step size underflowed).
    """
    x0, grid_bins, labels = check_data(model, x0, bins, data_range, y)
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {list(ODE_METHODS)}, got {method!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    probes = check_int("probes (Hutchinson probes per sample)", probes, 1, 1024)
    offset = check_int("index_offset", index_offset, 0)
    rtol = check_real("rtol", rtol, 100 * float(np.finfo(np.float64).eps), 1.0)
    atol = check_real("atol (> 0: a state component at 0 has no relative scale)", atol, 0.0, lo_open=True)
    high, low = ve_levels(model.schedule)
    s_min = low if sigma_min is None else check_real("sigma_min", sigma_min, 0.0, lo_open=True)
    s_max = high if sigma_max is None else check_real("sigma_max", sigma_max, s_min, lo_open=True)
    if not s_max > s_min:
        raise ValueError(f"sigma_max ({s_max:g}) must be above sigma_min ({s_min:g})")
    D = x0[0].numel()
    exact = divergence == "exact" or (divergence == "auto" and D <= EXACT_MAX_DIMS)
    B = x0.shape[0]
    nats = x0.new_zeros(B, dtype=torch.float64)
    prior, integral = torch.zeros_like(nats), torch.zeros_like(nats)
    dequant = -D * math.log(grid_bins.width) if grid_bins is not None else 0.0
    u0, u1 = math.log(s_min), math.log(s_max)
    parts, nfe = list(chunks(B, batch_size)), []

    # progress: percentage points of the log-sigma range its slowest sample has covered, 100 per batch
    with _progress(100 * len(parts), progress, f"ode nll ({len(parts)} batch(es), % of the noise range)", "point",
                   leave=False) as bar:
        for part in parts:
            x = x0[part]
            n, shape = x.shape[0], x.shape
            lab = None if labels is None else labels[part]
            if grid_bins is not None:  # uniform dequantization on each value's bin
                u = per_sample_draws(seed, 0, shift(part, offset), shape[1:], _uniform).to(dtype=x.dtype, device=x.device)
                x = x + (u - 0.5) * grid_bins.width
            v = None if exact else per_sample_draws(seed, 1, shift(part, offset), (probes, D), normal if probe == "gaussian" else
                                                    _rademacher).transpose(0, 1).to(dtype=x.dtype, device=x.device)
            done, count = 0, 0

            def field(rows: Optional[Tensor], u: Tensor, state: Tensor) -> Tensor:
                """d(y, integral)/du of the rows ``rows`` (None: all) at their own u = log s: (s eps, s div eps)."""
                nonlocal count
                count += 1
                s = adaptive.elementwise(math.exp, u)
                with torch.enable_grad():
                    yv = state[:, :D].to(x.dtype).requires_grad_(True)
                    eps = model.eps(yv.view(-1, *shape[1:]), s, 1.0, lab if rows is None or lab is None else lab[rows])
                    eps = eps.reshape(-1, D)
                    div = _divergence(eps, yv, v if rows is None or v is None else v[:, rows])
                out = torch.cat([eps.detach().to(torch.float64), div.detach().to(torch.float64).unsqueeze(1)], 1)
                out.mul_(s.unsqueeze(1))
                if not bool(torch.isfinite(out).all()):
                    raise FloatingPointError(f"ode_nll: the model returned NaN or inf (or its divergence did) at levels "
                                             f"s in [{s.min().item():.4g}, {s.max().item():.4g}], evaluation {count}")
                return out

            def advance(u: Tensor, state: Tensor) -> None:
                nonlocal done
                reached = int(100 * (float(u.min()) - u0) / (u1 - u0))
                if reached > done:
                    bar.update(reached - done)
                    done = reached

            state0 = torch.cat([x.detach().to(torch.float64).reshape(n, D), x.new_zeros(n, 1, dtype=torch.float64)], 1)
            try:
                end = adaptive.solve(field, u0, state0, u1, method, rtol, atol, advance)
            except adaptive.StepTooSmall as e:
                raise ODESolverError(f"ode_nll ({method}, rtol={rtol:g}, atol={atol:g}) failed at s={math.exp(e.t[0]):.6g} "
                                     f"(sample {offset + part.start + e.rows[0]}) on its "
                                     f"way from {s_min:g} to {s_max:g} after {count} evaluations: its step size fell "
                                     "below float64's resolution") from None
            bar.update(100 - done)
            y_T, div_int = end[:, :D], end[:, D]
            var = 1.0 + s_max * s_max
            log_prior = -0.5 * (D * math.log(2 * math.pi * var) + adaptive.row_sum(y_T ** 2) / var)
            prior[part], integral[part] = -log_prior.to(nats.device), -div_int.to(nats.device)
            nfe.append(count)
    nats = prior + integral + dequant
    if not details:
        return nats
    return NLLResult(nats=nats, dims=D, method="ode",
                     terms={"prior": prior, "divergence": integral, "dequantization": torch.full_like(nats, dequant)},
                     nfe=max(nfe), info={"divergence": "exact" if exact else "hutchinson",
                                         "probe": None if exact else probe, "probes": None if exact else probes,
                                         "rtol": rtol, "atol": atol, "method": method, "sigma_min": s_min,
                                         "sigma_max": s_max, "bins": bins, "seed": int(seed), "nfe_per_batch": nfe,
                                         **({"index_offset": offset} if offset else {})})
