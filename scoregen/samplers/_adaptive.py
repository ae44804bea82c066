"""Embedded Runge-Kutta methods with a step size per sample, for a batch of independent ODEs ``dy/dt = f(t, y)``.

``scipy.integrate``'s solvers take one error norm over their whole state, so a batch solved as one flat state makes
every sample's steps depend on the rest of the batch. :func:`solve` runs the same methods (scipy's RK23, RK45 and
DOP853: their Butcher tableaus are read from scipy's classes) with the same step-size control (Hairer, Norsett &
Wanner, Solving ODEs I, sec. II.4: the initial step, and the controller with scipy's safety factor and limits) for
each sample on its own: one error norm and one step size per sample, all samples' stages evaluated in one batched
call, at per-sample times. Sample i's solution is then a function of its own start alone (bit for bit where
``f`` treats rows independently); the batch takes as many evaluations as its slowest sample.

Arithmetic is row-wise and elementwise only (no BLAS products, whose rounding depends on the number of rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

#: The step-size controller's safety factor and the limits of one step's change: scipy.integrate's values.
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0

#: f(rows, t, y) -> dy/dt: ``rows`` the batch rows being evaluated (a sorted int64 tensor, or None for all of them),
#: ``t`` their times, shape (k,), ``y`` their states, shape (k, D); returns shape (k, D).
RHS = Callable[[Optional[Tensor], Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Tableau:
    """An embedded explicit Runge-Kutta method with the first-same-as-last property: ``stages`` stages with nodes
    ``c``, coefficients ``a`` (rows) and weights ``b``, and the error weights ``e`` (over the stages and the slope at
    the new point; DOP853 has two, ``e`` and ``e3``, combined as in Hairer's DOP853). ``order`` is the order of the
    error estimate: the controller scales the step by ``error ** (-1 / (order + 1))``."""

    stages: int
    c: tuple
    a: tuple
    b: tuple
    e: tuple
    order: int
    e3: Optional[tuple] = None


def tableau(method: str) -> Tableau:
    """The tableau of ``scipy.integrate``'s ``method`` (RK23, RK45 or DOP853), as Python floats."""
    from scipy import integrate

    rk = getattr(integrate, method)
    s = rk.n_stages
    rows = tuple(tuple(float(v) for v in rk.A[i, :i]) for i in range(s))
    dop = method == "DOP853"
    return Tableau(s, tuple(float(v) for v in rk.C[:s]), rows, tuple(float(v) for v in rk.B),
                   tuple(float(v) for v in (rk.E5 if dop else rk.E)), int(rk.error_estimator_order),
                   tuple(float(v) for v in rk.E3) if dop else None)


class StepTooSmall(Exception):
    """A sample's step size fell below what float64 resolves at its time; ``rows`` (batch indices) and ``t``."""

    def __init__(self, rows: list, t: list):
        super().__init__(f"the step size fell below float64's resolution for rows {rows[:5]}")
        self.rows, self.t = rows, t


def _combine(weights: tuple, k: list) -> Tensor:
    """sum_j weights[j] k[j], elementwise in a fixed order (no zero terms)."""
    out = None
    for w, kj in zip(weights, k):
        if w != 0.0:
            out = kj * w if out is None else out.add_(kj, alpha=w)
    return out if out is not None else torch.zeros_like(k[0])


def elementwise(fn: Callable[[float], float], v: Tensor) -> Tensor:
    """``fn`` (a Python float function: ``math.exp``, a power) applied to each element of ``v``, on the host. Torch's
    and numpy's vector kernels round exp, log and pow differently from their scalar tails, so a vectorised call
    would make a row's value depend on its position in the batch; C's scalar functions do not. One host read of the
    k numbers of a step."""
    return torch.tensor([fn(e) for e in v.tolist()], dtype=v.dtype, device=v.device)


def _pow(v: Tensor, p: float) -> Tensor:
    """``v ** p`` elementwise (:func:`elementwise`), for v >= 0 or NaN: 0 ** p is inf for p < 0, NaN stays NaN."""
    return elementwise(lambda e: e ** p if e > 0 else e if math.isnan(e) else math.inf if p < 0 else 0.0, v)


def row_sum(v: Tensor) -> Tensor:
    """Per-row sum of (k, D) -> (k,), rounded the same whatever k: one row alone is summed beside a copy of itself, as
    torch reduces a single row of many values (a full reduction) in another order than the rows of a batch."""
    return v.sum(1) if v.shape[0] > 1 else v.repeat(2, 1).sum(1)[:1]


def _rms(v: Tensor) -> Tensor:
    """Per-row root mean square of (k, D) -> (k,)."""
    return (row_sum(v.square()) / v.shape[1]).sqrt()


def _error_norm(tab: Tableau, k: list, h: Tensor, scale: Tensor) -> Tensor:
    """Each row's error estimate relative to ``scale`` (the step is accepted below 1)."""
    if tab.e3 is None:
        return _rms(_combine(tab.e, k) * h / scale)
    err5 = row_sum((_combine(tab.e, k) / scale).square())
    err3 = row_sum((_combine(tab.e3, k) / scale).square())
    error = h.view(-1).abs() * err5 / ((err5 + 0.01 * err3) * scale.shape[1]).sqrt()
    return torch.where((err5 == 0) & (err3 == 0), 0.0, error)  # NaN stays NaN: a rejected step


def _initial_step(f: RHS, t0: float, y0: Tensor, f0: Tensor, t1: float, order: int, rtol: float,
                  atol: float) -> Tensor:
    """Each row's first step size (Hairer et al., II.4: from the sizes of y, f and f's change along an Euler step);
    one evaluation."""
    direction, length = math.copysign(1.0, t1 - t0), abs(t1 - t0)
    scale = atol + y0.abs() * rtol
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1).clamp(max=length)
    f1 = f(None, t0 + h0 * direction, y0 + (h0 * direction).unsqueeze(1) * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    h1 = torch.where((d1 <= 1e-15) & (d2 <= 1e-15), (h0 * 1e-3).clamp(min=1e-6),
                     _pow(0.01 / torch.maximum(d1, d2), 1.0 / (order + 1)))
    return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, length))


def solve(f: RHS, t0: float, y0: Tensor, t1: float, method: str, rtol: float, atol: float,
          on_step: Optional[Callable[[Tensor, Tensor], None]] = None) -> Tensor:
    """Solve every row of ``y0`` (shape (B, D), float64) from ``t0`` to ``t1`` with ``method`` (RK23, RK45, DOP853),
    each row with its own steps; returns the rows at ``t1``, shape (B, D).

    ``on_step(t, y)`` is called after each round of step attempts with every row's time (B,) and state (B, D) (the
    last accepted step; live tensors). Raises :class:`StepTooSmall` when rows' step sizes underflow.
    """
    tab = tableau(method)
    direction = math.copysign(1.0, t1 - t0)
    exponent = -1.0 / (tab.order + 1)
    B = y0.shape[0]
    t = torch.full((B,), float(t0), dtype=y0.dtype, device=y0.device)
    y = y0.clone()
    fy = f(None, t, y)
    h_abs = _initial_step(f, t0, y, fy, t1, tab.order, rtol, atol)
    retry = torch.zeros(B, dtype=torch.bool, device=y0.device)  # rejected: this step is being retried
    live = torch.ones(B, dtype=torch.bool, device=y0.device)
    toward = torch.full_like(t, direction * math.inf)
    while bool(live.any()):
        rows = None if bool(live.all()) else live.nonzero().view(-1)
        ta, ya, fa, ha, ra = (v if rows is None else v[rows] for v in (t, y, fy, h_abs, retry))
        min_step = 10 * (torch.nextafter(ta, toward[:ta.shape[0]]) - ta).abs()
        if bool((ra & (ha < min_step)).any()):
            bad = (ra & (ha < min_step)).nonzero().view(-1)
            bad_rows = bad if rows is None else rows[bad]
            raise StepTooSmall(bad_rows.tolist(), ta[bad].tolist())
        ha = torch.where(ra, ha, torch.maximum(ha, min_step))  # a new step starts at least at min_step
        t_new = ta + ha * direction
        t_new = torch.where(direction * (t_new - t1) > 0, t1, t_new)
        h = (t_new - ta).unsqueeze(1)
        k = [fa]
        for i in range(1, tab.stages):  # the stages: k_i = f(t + c_i h, y + h sum_j a_ij k_j)
            k.append(f(rows, ta + tab.c[i] * h.view(-1), ya + h * _combine(tab.a[i], k)))
        y_new = ya + h * _combine(tab.b, k)
        k.append(f(rows, t_new, y_new))  # the slope at the new point: the next step's k_0 (first same as last)
        scale = atol + torch.maximum(ya.abs(), y_new.abs()) * rtol
        err = _error_norm(tab, k, h, scale)
        accept = err < 1
        factor = SAFETY * _pow(err, exponent)  # inf where err is 0
        grow = factor.clamp(max=MAX_FACTOR)
        grow = torch.where(ra, grow.clamp(max=1.0), grow)  # no growth right after a rejection
        shrink = torch.where(factor > MIN_FACTOR, factor, MIN_FACTOR)  # also for a NaN error (an overflowed step)
        ha = (t_new - ta).abs()  # the step actually taken (cut at t1)
        new = (torch.where(accept, t_new, ta), torch.where(accept.unsqueeze(1), y_new, ya),
               torch.where(accept.unsqueeze(1), k[-1], fa), ha * torch.where(accept, grow, shrink), ~accept)
        if rows is None:
            t, y, fy, h_abs, retry = new
        else:
            for whole, part in zip((t, y, fy, h_abs, retry), new):
                whole[rows] = part
        live &= ~(direction * (t - t1) >= 0)
        if on_step is not None:
            on_step(t, y)
    return y
