"""Exponential integrators in half log-SNR: the pieces DDIM, DPM-Solver++, UniPC and DEIS share.

The solvers step in VE coordinates (state ``x / m``, noise ``s = sigma / m``; see :mod:`~scoregen.samplers.ode`),
where the half log-SNR is ``lam = log(m / sigma) = -log s``. With ``x0_hat = x - s eps``, the probability-flow ODE
``dx/ds = eps(x, s)`` is linear in x when written in lam::

    dx/dlam = -x + x0_hat(x, lam),

so from level s to level t, ``h = lam_t - lam_s > 0``, its exact solution is the variation-of-constants formula
(DPM-Solver++, Lu et al. 2022; DPM-Solver eq. 3.4 is its noise-prediction twin)::

    x_t = e^{-h} x_s + int_0^h e^{-(h - u)} x0_hat(lam_s + u) du          (data prediction)
        = x_s - s_s int_0^h e^{-u} eps(lam_s + u) du                     (noise prediction)

A polynomial in u through past model outputs integrates in closed form with the phi functions (:func:`phi`)::

    int_0^h e^{-(h - u)} u^k / k! du = h^{k+1} phi_{k+1}(-h),   int_0^h e^{-u} u^k / k! du = e^{-h} h^{k+1} phi_{k+1}(h)

Order 1 (x0_hat held constant) is DPM-Solver++(1), which is DDIM with eta = 0 (:func:`first_order`). The multistep
solvers differ only in the polynomial: each coefficient function below returns, for one step, the weights of
``x_next = a x + sum_j w[j] out[j]`` on the model outputs ``out[0]`` (the newest), ``out[1]``, ... as Python floats;
the solvers compute them once per run and apply them with :meth:`History.apply`.

At ``s_next = 0`` (lam = inf) only the first-order step is defined (``h^{k+1} phi_{k+1}(-h)`` grows like h^k): it
lands on x0_hat. Every solver here therefore takes its last step, onto s = 0, at first order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np
from torch import Tensor

__all__ = ["lam", "phi", "first_order", "sde_noise", "dpmpp_2m", "dpmpp_3m", "unipc", "deis", "adams_bashforth", "History"]


def lam(s: float) -> float:
    """The half log-SNR ``lam = log(m / sigma) = -log s`` of VE level ``s`` (inf at s = 0)."""
    return math.inf if s == 0 else -math.log(s)


def phi(k: int, z: float) -> float:
    """``phi_k(z) = int_0^1 e^{(1 - v) z} v^{k-1} / (k-1)! dv = sum_{j>=0} z^j / (j + k)!`` (k >= 1), ``phi_0 = e^z``.

    Computed by the recursion ``phi_1(z) = expm1(z) / z``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z`` for |z| >= 1, and
    by the series for |z| < 1, where the recursion cancels (phi_k(0) = 1/k!)."""
    if k == 0:
        return math.exp(z)
    if abs(z) < 1.0:
        term, total, j = 1.0 / math.factorial(k), 0.0, 0
        while abs(term) > 1e-18 * (1.0 / math.factorial(k)) and j < 40:
            total += term
            j += 1
            term *= z / (j + k)
        return total
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def first_order(s: float, s_next: float, noise: float = 0.0) -> tuple[float, float]:
    """One first-order step from VE level ``s`` to ``s_next``: ``x_next = a x + b x0_hat + noise * z``; returns (a, b).

    ``a = sqrt(s_next^2 - noise^2) / s`` and ``b = 1 - a``: x0_hat keeps its prediction and the part of the noise
    ``eps = (x - x0_hat) / s`` that is not replaced by fresh noise (DDIM eq. 12 in VE coordinates, Song et al. 2021).

    * ``noise = 0``: ``a = s_next / s = e^{-h}``, ``b = h phi_1(-h) = -expm1(-h)``: DPM-Solver++(1), i.e. DDIM eta = 0,
      i.e. the exact solution above with x0_hat constant. At ``s_next = 0``: a = 0, b = 1, the step lands on x0_hat.
    * ``noise = eta sqrt(beta_tilde) / m_next = eta s_next sqrt(1 - e^{-2h})``: DDIM with eta (eta = 1 is DDPM's
      posterior q(x_next | x, x0_hat)).
    * ``noise = s_next sqrt(1 - e^{-2 eta h})``: SDE-DPM-Solver++(1) (``a = e^{-(1 + eta) h}``), k-diffusion's eta.
    """
    if s_next == 0:
        return 0.0, 1.0
    if noise == 0:
        h = math.log(s / s_next)
        return s_next / s, -math.expm1(-h)
    a = math.sqrt(max(s_next * s_next - noise * noise, 0.0)) / s
    return a, 1.0 - a


def sde_noise(s: float, s_next: float, eta: float) -> float:
    """The noise std ``s_next sqrt(1 - e^{-2 eta h})`` of SDE-DPM-Solver++ with k-diffusion's ``eta`` (0 at s = 0)."""
    if s_next == 0 or eta == 0:
        return 0.0
    return s_next * math.sqrt(-math.expm1(-2.0 * eta * math.log(s / s_next)))


def dpmpp_2m(b: float, r: float) -> tuple[float, float]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, lines 7-10): weights on (x0_hat_i, x0_hat_{i-1}).

    ``D = (1 + 1/(2r)) x0_hat_i - 1/(2r) x0_hat_{i-1}`` with ``r = h_last / h`` replaces x0_hat_i in the first-order
    step ``x_next = a x + b D`` (:func:`first_order`): ``b = h phi_1(-h)`` for the ODE, and with noise it is
    k-diffusion's DPM-Solver++(2M) SDE, midpoint variant (``b = 1 - e^{-(1 + eta) h}``). Returns ``(b (1 + 1/(2r)),
    -b / (2r))``.
    """
    return b * (1.0 + 0.5 / r), -b * 0.5 / r


def dpmpp_3m(lam_2: float, lam_1: float, lam_0: float, lam_next: float, *,
             taylor: bool) -> tuple[float, tuple[float, float, float]]:
    """Third-order multistep DPM-Solver++ (data prediction), weights on (x0_hat_i, x0_hat_{i-1}, x0_hat_{i-2}).

    As the reference implementations (Lu et al.'s dpm_solver_pytorch.py, diffusers' DPMSolverMultistepScheduler with
    solver_order=3, k-diffusion's sample_dpmpp_3m_sde), with ``h = lam_next - lam_0``, ``r0 = (lam_0 - lam_1) / h``,
    ``r1 = (lam_1 - lam_2) / h`` and the divided differences ``D1_0 = (m0 - m1) / r0``, ``D1_1 = (m1 - m2) / r1``,
    ``D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)`` (about h x0_hat'), ``D2 = (D1_0 - D1_1) / (r0 + r1)``::

        x_next = e^{-h} x + h phi_1(-h) m0 + h phi_2(-h) D1 + h phi_3(-h) D2.

    D2 is about h^2 x0_hat'' / 2, so the Taylor term ``h^3 phi_3(-h) x0_hat''`` would be ``2 h phi_3(-h) D2``: the
    references' last term is half of it, which makes the method second order asymptotically (measured on
    ``dx/dlam = -x + sin(lam)``: global error ratio 4 per halved step, against 8 with the factor 2). At practical
    budgets the references' coefficient is the more accurate one on ring2d and gmm64 (ODE error at 10-40 steps lower
    than with the factor 2; the factor 2 wins from about 80 steps). ``taylor=True`` takes the factor 2 (third order);
    ``taylor=False`` the references' coefficient, which reproduces them step for step.
    """
    h = lam_next - lam_0
    r0, r1 = (lam_0 - lam_1) / h, (lam_1 - lam_2) / h
    d1_0 = np.array([1.0, -1.0, 0.0]) / r0
    d1_1 = np.array([0.0, 1.0, -1.0]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    w = h * phi(1, -h) * np.array([1.0, 0.0, 0.0]) + h * phi(2, -h) * d1 + (2 if taylor else 1) * h * phi(3, -h) * d2
    return math.exp(-h), tuple(float(v) for v in w)


def unipc(lams: Sequence[float], lam_next: float, order: int) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    """UniPC-p with B(h) = e^{-h} - 1 ("bh2"), data prediction (Zhao et al. 2023, UniP-p and UniC-p, Sec. 3).

    ``lams``: the half log-SNRs of the last ``order`` model outputs, newest first (``lams[0]`` is the current
    level). With ``h = lam_next - lams[0]``, ``r_k = (lams[k] - lams[0]) / h`` (k = 1..p-1, and r_p = 1 for the
    corrector's new output), ``D_k = (m_k - m0) / r_k`` and ``hh = -h``::

        UniP-p:  x_next  = e^{-h} x - expm1(-h) m0 - B(h) sum_k rho^p_k D_k
        UniC-p:  x_next^c = e^{-h} x - expm1(-h) m0 - B(h) (sum_k rho^c_k D_k + rho^c_p (m_next - m0))

    where ``m_next`` is x0_hat at the predicted ``x_next`` (the corrector costs no evaluation). The rho solve the
    order conditions ``sum_k rho_k r_k^(i-1) = b_i``, ``b_i = i! hh phi_{i+1}(hh) / B(h)``, i = 1..p (the corrector,
    p x p) and i = 1..p-1 (the predictor; rho^p = 1/2 at p = 2, which makes UniP-2 DPM-Solver++(2M)); at p = 1,
    rho^c = 1/2. These are diffusers' ``UniPCMultistepScheduler(solver_type="bh2", predict_x0=True)`` formulas.

    Returns ``(a, predictor, corrector)``: ``x_next = a x + sum_j predictor[j] m_j`` (m_0 newest), and the corrector
    as an increment on the predicted state, ``x_next^c = x_next + sum_j corrector[j] n_j`` on the outputs
    ``n = (m_next, m_0, ..., m_{p-1})`` (it shares a x and the m0 term with the predictor).
    """
    p = order
    h = lam_next - lams[0]
    hh = -h
    big_b = math.expm1(hh)
    rks = [(lams[k] - lams[0]) / h for k in range(1, p)] + [1.0]
    b = np.array([math.factorial(i) * hh * phi(i + 1, hh) / big_b for i in range(1, p + 1)])
    R = np.array([[rk ** i for rk in rks] for i in range(p)])
    rho_p = np.array([]) if p == 1 else np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
    rho_c = np.array([0.5]) if p == 1 else np.linalg.solve(R, b)
    # the D_k = (m_k - m0) / r_k expanded into weights on m_0..m_{p-1}
    pred = np.zeros(p)
    pred[0] = -math.expm1(-h)
    for k in range(1, p):
        pred[k] -= big_b * rho_p[k - 1] / rks[k - 1]
        pred[0] += big_b * rho_p[k - 1] / rks[k - 1]
    corr = np.zeros(p + 1)  # on (m_next, m_0, ..., m_{p-1})
    corr[0] = -big_b * rho_c[-1]
    corr[1] = big_b * rho_c[-1]
    for k in range(1, p):
        extra = rho_c[k - 1] - rho_p[k - 1]
        corr[k + 1] -= big_b * extra / rks[k - 1]
        corr[1] += big_b * extra / rks[k - 1]
    return math.exp(-h), tuple(float(v) for v in pred), tuple(float(v) for v in corr)


def adams_bashforth(nodes: Sequence[float], s_next: float) -> tuple[float, ...]:
    """Variable-step Adams-Bashforth in s: weights on (eps_i, eps_{i-1}, ...) of ``x_next = x + sum_j w[j] eps_j``,
    ``w_j = int_{s_i}^{s_next} L_j(rho) drho`` with L_j the Lagrange basis through ``nodes`` (the levels of the
    outputs, newest first, ``nodes[0] = s_i``). With ``h = s_next - s_i`` and ``v = (rho - s_i) / h``:
    ``w_j = h sum_k a_jk / (k + 1)`` for ``L_j = sum_k a_jk v^k``. On equally spaced nodes these are the classical
    fixed weights (3/2, -1/2), (23, -16, 5)/12, (55, -59, 37, -9)/24 (linear_multistep in k-diffusion's ``sample_lms``
    integrates the same polynomials numerically)."""
    h = s_next - nodes[0]
    v = np.array([(n - nodes[0]) / h for n in nodes])
    vinv = np.linalg.inv(np.vander(v, increasing=True))
    return tuple(float(w) for w in h * (1.0 / np.arange(1, len(v) + 1)) @ vinv)


def deis(lams: Sequence[float], lam_next: float, s_next: float) -> tuple[float, ...]:
    """tAB-DEIS (Zhang & Chen 2022): weights on (eps_i, eps_{i-1}, ...) of ``x_next = x + sum_j w[j] eps_j``.

    eps is interpolated by the Lagrange polynomial in lam through the history ``lams`` (newest first; DEIS's
    "log-rho" tAB, rho = s), and the noise-prediction integral above is taken exactly::

        w_j = int_{s}^{s_next} L_j(-log rho) drho = -s_next h sum_k a_jk k! phi_{k+1}(h),

    where ``L_j(lams[0] + h v) = sum_k a_jk v^k`` (the Lagrange basis in the scaled ``v``, nodes
    ``(lams[k] - lams[0]) / h``). One node is Euler's step ``w = s_next - s``, i.e. DDIM. These are the integrals
    that diffusers' ``DEISMultistepScheduler`` (algorithm_type="deis") evaluates in closed form in rho.
    """
    h = lam_next - lams[0]
    nodes = np.array([(v - lams[0]) / h for v in lams])
    vinv = np.linalg.inv(np.vander(nodes, increasing=True))  # column j: the monomial coefficients of L_j
    moments = np.array([math.factorial(k) * phi(k + 1, h) for k in range(len(lams))])
    return tuple(float(v) for v in -s_next * h * (moments @ vinv))


class History:
    """The last ``k`` model outputs, newest first: references to the tensors the model returned, never copies.

    The solvers never write to these tensors; the model returns a new tensor at every evaluation."""

    def __init__(self, k: int):
        self._items: deque = deque(maxlen=k)

    def push(self, out: Tensor) -> None:
        self._items.appendleft(out)

    def apply(self, x: Tensor, a: float, weights: Sequence[float]) -> Tensor:
        """``x <- a x + sum_j weights[j] out[j]`` in place (out[0] the newest); a = 0 drops x (the landing step)."""
        if a == 0:
            x.zero_()
        elif a != 1:
            x.mul_(a)
        for w, out in zip(weights, self._items):
            if w != 0:
                x.add_(out, alpha=w)
        return x
