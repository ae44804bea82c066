"""Noise schedules: the forward process ``x_t = m(t) * x0 + sigma(t) * eps`` as small value objects.

A schedule is fully described by its log-SNR ``lambda(t) = log(m^2 / sigma^2)`` and by its family:
variance preserving (VP, ``m^2 + sigma^2 = 1``, DDPM) or variance exploding (VE, ``m = 1``, NCSN).
All arithmetic is float64 numpy; time labels follow each model's own convention (``first_index``):
DDPM's paper counts t = 1..T, diffusers counts 0..T-1, NCSN indexes sigmas with 0 = sigma_max.

Discrete schedules answer at fractional time too, by interpolating log-SNR linearly between trained
labels; ``t_from_log_snr`` is the exact inverse of that interpolation (clamped to the trained range).
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np

from ._checks import check_int, short

Array = Union[float, np.ndarray]

__all__ = [
    "Schedule",
    "DiscreteVP",
    "DiscreteVE",
    "ContinuousVP",
    "ContinuousVE",
    "ContinuousSubVP",
    "m_sigma_from_log_snr",
    "transition",
    "schedule_from_config",
    "ncsnv2_levels",
    "ncsnv2_sigma_max",
    "ve_levels",
    "MAX_LEVELS",
]

#: The most levels a discrete schedule may have (DDPM's T, NCSN's L; the published ones use 1000 and 232).
#: The bound is checked before any array is made, so an edited config cannot allocate gigabytes.
MAX_LEVELS = 100_000


def m_sigma_from_log_snr(log_snr: Array, variance_preserving: bool) -> tuple[Array, Array]:
    """Signal scale m and noise std sigma of the level with this log-SNR, in VP or VE coordinates."""
    lam = np.asarray(log_snr, dtype=np.float64)
    if variance_preserving:
        # m^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda), written to stay finite for large |lambda|.
        m = np.sqrt(1.0 / (1.0 + np.exp(-lam)))
        sigma = np.sqrt(1.0 / (1.0 + np.exp(lam)))
    else:
        m = np.ones_like(lam)
        sigma = np.exp(-0.5 * lam)
    if np.ndim(log_snr) == 0:
        return float(m), float(sigma)
    return m, sigma


def transition(m_t: float, sigma_t: float, m_s: float, sigma_s: float) -> tuple[float, float, float]:
    """The one-step forward kernel between a less noisy level s and a noisier level t.

    ``x_t | x_s ~ N(sqrt(alpha_ts) x_s, beta_ts I)`` with ``alpha_ts = (m_t / m_s)^2`` and
    ``beta_ts = sigma_t^2 - alpha_ts sigma_s^2``; the posterior ``q(x_s | x_t, x0)`` has variance
    ``beta_tilde_ts = beta_ts sigma_s^2 / sigma_t^2``. For consecutive DDPM steps these are
    exactly alpha_t, beta_t and beta_tilde_t (Ho et al. 2020, eq. 7); on a VE grid alpha_ts = 1 and
    beta_ts = sigma_t^2 - sigma_s^2. Returns ``(alpha_ts, beta_ts, beta_tilde_ts)``.
    """
    alpha_ts = (m_t / m_s) ** 2
    beta_ts = sigma_t**2 - alpha_ts * sigma_s**2
    if not beta_ts > 0.0:
        raise ValueError(
            f"level (m={m_s:.6g}, sigma={sigma_s:.6g}) is not less noisy than (m={m_t:.6g}, sigma={sigma_t:.6g}); "
            "a sampling grid must be ordered from the noisiest level to the cleanest"
        )
    return alpha_ts, beta_ts, beta_ts * sigma_s**2 / sigma_t**2


def _check_first_index(first_index) -> int:
    return check_int("first_index (the label of the first level)", first_index, -2**31, 2**31 - 1)


def _normal_cdf(v: float) -> float:
    return 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))


def ncsnv2_levels(sigma_max: float, sigma_min: float, dim: int) -> int:
    """Number of geometric levels by Song & Ermon (2020), technique 2, with NCSN's L = 10 as the floor.

    The ratio gamma = sigma_{i-1} / sigma_i solves ``Phi(sqrt(2D)(gamma - 1) + 3 gamma) -
    Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 0.5`` so that consecutive noise shells overlap in dimension D
    (CIFAR-10's D = 3072, sigma 50 -> 0.01 gives L = 220; NCSNv2 used 232); low dimensions have no
    such gamma and keep L = 10.
    """
    root2d = math.sqrt(2.0 * dim)
    overlap = lambda g: _normal_cdf(root2d * (g - 1) + 3 * g) - _normal_cdf(root2d * (g - 1) - 3 * g)  # noqa: E731
    lo, hi = 1.0, 1e3
    if overlap(hi) > 0.5:
        return 10
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if overlap(mid) > 0.5 else (lo, mid)
    return max(10, 1 + math.ceil(math.log(sigma_max / sigma_min) / math.log(hi)))


def ncsnv2_sigma_max(x, max_points: int = 2000) -> float:
    """Song & Ermon (2020), technique 1: sigma_max = the largest Euclidean distance between two data points.

    ``x`` is the data, shape (N, ...) (a tensor or an array); the distance is taken over its first ``max_points``
    points, in float64 (``torch.cdist``): exactly the value :func:`scoregen.training.recipes.ncsn_schedule` gives an
    NCSN network's first sigma, and what ``scoregen train`` records as ``meta.data.sigma_max`` so that Langevin starts
    at the data's scale on any trained model. 0.0 for fewer than two distinct points.
    """
    import torch

    max_points = check_int("max_points", max_points)
    x = torch.as_tensor(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"the data must have shape (N, ...) with N >= 1 points, got shape {tuple(x.shape)}")
    flat = x.reshape(x.shape[0], -1)[:max_points].double()
    return float(torch.cdist(flat, flat).max())


def _check_1d_finite(name: str, values: np.ndarray) -> np.ndarray:
    if hasattr(values, "__len__") and len(values) > MAX_LEVELS:  # before converting: a huge list is refused unread
        raise ValueError(f"{name} has {len(values)} entries; a schedule has at most MAX_LEVELS = {MAX_LEVELS} levels")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite; found NaN or inf at positions {np.flatnonzero(~np.isfinite(values))[:5].tolist()}")
    return values


class Schedule:
    """Base class. Subclasses set ``variance_preserving`` and implement log_snr / t_from_log_snr."""

    variance_preserving: bool
    #: Trained time labels ordered from the noisiest level to the cleanest, or None (continuous time).
    times: np.ndarray | None = None

    def log_snr(self, t: Array) -> Array:
        raise NotImplementedError

    def to_config(self) -> dict:
        """A JSON-able description that :func:`schedule_from_config` turns back into an equal schedule."""
        return {"type": type(self).__name__, **self._config}

    def t_from_log_snr(self, log_snr: Array) -> Array:
        raise NotImplementedError

    def m(self, t: Array) -> Array:
        return m_sigma_from_log_snr(self.log_snr(t), self.variance_preserving)[0]

    def sigma(self, t: Array) -> Array:
        return m_sigma_from_log_snr(self.log_snr(t), self.variance_preserving)[1]

    def nearest_time(self, log_snr: Array) -> Array:
        """The trained label whose log-SNR is nearest; continuous schedules answer exactly."""
        return self.t_from_log_snr(log_snr)

    def grid(self, steps: int | None = None) -> np.ndarray:
        """Time labels for a sampler, noisiest first: ``steps`` evenly spaced trained levels (all if None)."""
        raise NotImplementedError

    def levels(self, steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(m, sigma)`` arrays of ``grid(steps)``, noisiest first, in this schedule's own coordinates."""
        t = self.grid(steps)
        return m_sigma_from_log_snr(self.log_snr(t), self.variance_preserving)


class _Discrete(Schedule):
    """A finite set of trained levels with integer labels; fractional labels interpolate log-SNR."""

    def __init__(self, log_snr_per_label: np.ndarray, first_index: int):
        self.first_index = _check_first_index(first_index)
        self.labels = np.arange(len(log_snr_per_label), dtype=np.float64) + self.first_index
        self._lsnr = np.asarray(log_snr_per_label, dtype=np.float64)
        order = np.argsort(self._lsnr)
        self._lsnr_sorted = self._lsnr[order]
        self._labels_by_lsnr = self.labels[order]
        self.times = self._labels_by_lsnr.copy()  # ascending log-SNR == noisiest first

    def __len__(self) -> int:
        return len(self._lsnr)

    def log_snr(self, t: Array) -> Array:
        t_arr = np.asarray(t, dtype=np.float64)
        lo, hi = self.labels[0], self.labels[-1]
        if not np.all((t_arr >= lo - 1e-9) & (t_arr <= hi + 1e-9)):  # also refuses NaN
            raise ValueError(f"time label {t} is outside this schedule's trained range [{lo:g}, {hi:g}]")
        out = np.interp(t_arr, self.labels, self._lsnr)
        return float(out) if np.ndim(t) == 0 else out

    def t_from_log_snr(self, log_snr: Array) -> Array:
        out = np.interp(np.asarray(log_snr, dtype=np.float64), self._lsnr_sorted, self._labels_by_lsnr)
        return float(out) if np.ndim(log_snr) == 0 else out

    def nearest_time(self, log_snr: Array) -> Array:
        lam = np.asarray(log_snr, dtype=np.float64)
        if len(self) == 1:
            out = np.full_like(lam, self.labels[0])
        else:
            i = np.clip(np.searchsorted(self._lsnr_sorted, lam), 1, len(self) - 1)
            take_lower = (lam - self._lsnr_sorted[i - 1]) <= (self._lsnr_sorted[i] - lam)
            out = self._labels_by_lsnr[np.where(take_lower, i - 1, i)]
        return float(out) if np.ndim(log_snr) == 0 else out

    def grid(self, steps: int | None = None) -> np.ndarray:
        if steps is None:
            return self.times.copy()
        steps = check_int("steps", steps)
        if steps > len(self):
            raise ValueError(f"steps must be between 1 and the {len(self)} trained levels, got {steps}")
        idx = np.unique(np.round(np.linspace(0, len(self) - 1, steps)).astype(np.int64))
        return self.times[idx]


class DiscreteVP(_Discrete):
    """DDPM's discrete variance-preserving schedule from its betas (Ho et al. 2020).

    Label ``t`` (``first_index`` .. ``first_index + T - 1``; the paper's convention is 1) has
    ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``, ``m = sqrt(abar_t)``,
    ``sigma = sqrt(1 - abar_t)``. Arrays ``beta, alpha, abar, beta_tilde, vlb_weight`` are indexed by
    position ``t - first_index``.
    """

    variance_preserving = True

    def __init__(self, betas, first_index: int = 1):
        first_index = _check_first_index(first_index)
        beta = _check_1d_finite("betas", betas)
        bad = np.flatnonzero((beta <= 0) | (beta >= 1))
        if bad.size:
            raise ValueError(
                f"every beta must lie in the open interval (0, 1); beta[{bad[0]}] = {beta[bad[0]]!r}. "
                "DDPM's linear schedule is DiscreteVP.linear(1000, 1e-4, 0.02)"
            )
        self._config = {"betas": beta.tolist(), "first_index": int(first_index)}
        self.beta = beta
        self.alpha = 1.0 - beta
        self.abar = np.cumprod(self.alpha)
        abar_prev = np.concatenate([[1.0], self.abar[:-1]])
        self.beta_tilde = beta * (1.0 - abar_prev) / (1.0 - self.abar)
        super().__init__(np.log(self.abar) - np.log1p(-self.abar), first_index)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, first_index: int = 1) -> "DiscreteVP":
        """Ho et al. (2020): betas linear from 1e-4 to 0.02 over T = 1000 steps (T at most MAX_LEVELS)."""
        T = check_int("T (the number of levels)", T, 1, MAX_LEVELS)
        out = cls(np.linspace(beta_start, beta_end, T, dtype=np.float64), first_index)
        out._config = {"recipe": "linear", "T": T, "beta_start": beta_start, "beta_end": beta_end, "first_index": out.first_index}
        return out

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999, first_index: int = 1) -> "DiscreteVP":
        """Nichol & Dhariwal (2021), eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2); T at most MAX_LEVELS."""
        T = check_int("T (the number of levels)", T, 1, MAX_LEVELS)
        f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        out = cls(np.minimum(1.0 - f[1:] / f[:-1], max_beta), first_index)
        out._config = {"recipe": "cosine", "T": T, "s": s, "max_beta": max_beta, "first_index": out.first_index}
        return out

    @property
    def vlb_weight(self) -> np.ndarray:
        """Coefficient of ||eps - eps_theta||^2 in L_{t-1} (Ho et al. eq. 12): beta^2 / (2 beta_tilde alpha (1 - abar)).

        Infinite at the first label, where beta_tilde = 0 (that term is the decoder, not a KL).
        """
        with np.errstate(divide="ignore"):
            return self.beta**2 / (2.0 * self.beta_tilde * self.alpha * (1.0 - self.abar))

    def __repr__(self) -> str:
        return f"DiscreteVP(T={len(self)}, beta=[{self.beta[0]:.3g}..{self.beta[-1]:.3g}], first_index={self.first_index})"


class DiscreteVE(_Discrete):
    """NCSN's variance-exploding levels: ``m = 1`` and a strictly decreasing sigma sequence.

    Label ``i`` (``first_index`` .. ; 0 = sigma_max, the NCSN convention) has ``sigma_i``.
    Fractional labels interpolate log sigma linearly, which is exact for a geometric sequence.
    """

    variance_preserving = False

    def __init__(self, sigmas, first_index: int = 0):
        first_index = _check_first_index(first_index)
        sig = _check_1d_finite("sigmas", sigmas)
        if np.any(sig <= 0):
            raise ValueError(f"every sigma must be positive, got min {sig.min()!r}")
        if np.any(np.diff(sig) >= 0):
            i = int(np.flatnonzero(np.diff(sig) >= 0)[0])
            raise ValueError(
                f"sigmas must be strictly decreasing (sigma_max first, NCSN convention); "
                f"sigma[{i}] = {sig[i]!r} <= sigma[{i + 1}] = {sig[i + 1]!r}"
            )
        self.sigmas = sig
        self._config = {"sigmas": sig.tolist(), "first_index": int(first_index)}
        super().__init__(-2.0 * np.log(sig), first_index)

    @classmethod
    def geometric(cls, sigma_max: float = 1.0, sigma_min: float = 0.01, L: int = 10, first_index: int = 0) -> "DiscreteVE":
        """Song & Ermon (2019): L sigmas in geometric progression from sigma_max down to sigma_min (2 <= L <= MAX_LEVELS)."""
        if not (sigma_max > sigma_min > 0):
            raise ValueError(f"need sigma_max > sigma_min > 0, got sigma_max={sigma_max!r}, sigma_min={sigma_min!r}")
        L = check_int("L (the number of levels of a geometric sequence)", L, 2, MAX_LEVELS)
        return cls(np.geomspace(sigma_max, sigma_min, L), first_index)

    def __repr__(self) -> str:
        return f"DiscreteVE(L={len(self)}, sigma=[{self.sigmas[0]:.4g}..{self.sigmas[-1]:.4g}], first_index={self.first_index})"


class _Continuous(Schedule):
    """Continuous time in [0, t_max]; ``t_from_log_snr`` clamps to [t_min, t_max], the range the model is
    queried in, so a level cleaner than t_min is answered at t_min (never at sigma = 0)."""

    t_min: float
    t_max: float = 1.0

    def _check_t(self, t: Array) -> np.ndarray:
        t_arr = np.asarray(t, dtype=np.float64)
        if not np.all((t_arr >= 0.0) & (t_arr <= self.t_max)):  # also refuses NaN
            raise ValueError(f"time {t} is outside [0, {self.t_max:g}]")
        return t_arr

    def grid(self, steps: int | None = None) -> np.ndarray:
        """``steps`` uniform times from t_max down to t_min (default 1000)."""
        steps = 1000 if steps is None else check_int("steps", steps)
        return np.linspace(self.t_max, self.t_min, steps)


class ContinuousVP(_Continuous):
    """Score-SDE's VP SDE (Song et al. 2021): ``log abar(t) = -beta_min t - (beta_max - beta_min) t^2 / 2``, t in [0, 1]."""

    variance_preserving = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not (0 < beta_min < beta_max):
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min!r}, {beta_max!r}")
        self.beta_min, self.beta_max, self.t_min = float(beta_min), float(beta_max), float(t_min)
        self._config = {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}

    def log_snr(self, t: Array) -> Array:
        t_arr = self._check_t(t)
        neg_log_abar = self.beta_min * t_arr + 0.5 * (self.beta_max - self.beta_min) * t_arr**2
        with np.errstate(divide="ignore"):
            out = -np.log(np.expm1(neg_log_abar))  # log(abar / (1 - abar))
        return float(out) if np.ndim(t) == 0 else out

    def t_from_log_snr(self, log_snr: Array) -> Array:
        u = np.logaddexp(0.0, -np.asarray(log_snr, dtype=np.float64))  # -log abar = softplus(-lambda)
        d = self.beta_max - self.beta_min
        out = np.clip((np.sqrt(self.beta_min**2 + 2.0 * d * u) - self.beta_min) / d, self.t_min, self.t_max)
        return float(out) if np.ndim(log_snr) == 0 else out

    def __repr__(self) -> str:
        return f"ContinuousVP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


class ContinuousVE(_Continuous):
    """Score-SDE's VE SDE: ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, t in [0, 1], m = 1."""

    variance_preserving = False

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5):
        if not (sigma_max > sigma_min > 0):
            raise ValueError(f"need sigma_max > sigma_min > 0, got sigma_max={sigma_max!r}, sigma_min={sigma_min!r}")
        self.sigma_min, self.sigma_max, self.t_min = float(sigma_min), float(sigma_max), float(t_min)
        self._config = {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_min": self.t_min}

    def log_snr(self, t: Array) -> Array:
        t_arr = self._check_t(t)
        out = -2.0 * (math.log(self.sigma_min) + t_arr * math.log(self.sigma_max / self.sigma_min))
        return float(out) if np.ndim(t) == 0 else out

    def t_from_log_snr(self, log_snr: Array) -> Array:
        log_sigma = -0.5 * np.asarray(log_snr, dtype=np.float64)
        out = np.clip((log_sigma - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min), self.t_min, self.t_max)
        return float(out) if np.ndim(log_snr) == 0 else out

    def __repr__(self) -> str:
        return f"ContinuousVE(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"


class ContinuousSubVP(_Continuous):
    """Score-SDE's sub-VP SDE (Song et al. 2021, eq. 29), t in [0, 1]: with ``B(t) = beta_min t + (beta_max -
    beta_min) t^2 / 2`` (the VP SDE's integrated beta), ``m(t) = exp(-B / 2)`` (the VP SDE's signal scale) and
    ``sigma(t) = 1 - exp(-B)`` (below the VP SDE's ``sqrt(1 - exp(-B))``), so ``m^2 + sigma^2 != 1``.

    Neither VP nor VE: :meth:`m`, :meth:`sigma` and :meth:`levels` answer in the sub-VP coordinates the network was
    trained in, which :class:`~scoregen.LevelMap` uses to rescale a caller's input. ``variance_preserving`` is True
    because samplers that build levels from log-SNR alone put them in VP coordinates, the family sub-VP approaches at
    both ends (``x_1`` is nearly N(0, I) and ``m`` is exactly VP's); the network never sees those coordinates.
    """

    variance_preserving = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not (0 < beta_min < beta_max):
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min!r}, {beta_max!r}")
        if not (0 < t_min < self.t_max):
            raise ValueError(f"need 0 < t_min < {self.t_max:g}, got t_min={t_min!r}")
        self.beta_min, self.beta_max, self.t_min = float(beta_min), float(beta_max), float(t_min)
        self._config = {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}

    def _integrated_beta(self, t: Array) -> np.ndarray:
        t_arr = self._check_t(t)
        return self.beta_min * t_arr + 0.5 * (self.beta_max - self.beta_min) * t_arr**2

    def log_snr(self, t: Array) -> Array:
        b = self._integrated_beta(t)
        with np.errstate(divide="ignore"):
            out = -b - 2.0 * np.log(-np.expm1(-b))  # log(m^2 / sigma^2); +inf at t = 0
        return float(out) if np.ndim(t) == 0 else out

    def t_from_log_snr(self, log_snr: Array) -> Array:
        # lambda = log(u / (1 - u)^2) with u = exp(-B) in (0, 1): the root u < 1 of a quadratic. Two forms of
        # B = -log u that never overflow: log1p(a/2 + sqrt(a + a^2/4)), a = e^-lambda, for lambda > 0, and
        # -lambda + log(e^lambda + (1 + sqrt(1 + 4 e^lambda)) / 2) for lambda <= 0.
        lam = np.asarray(log_snr, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.exp(-np.maximum(lam, 0.0))
            e = np.exp(np.minimum(lam, 0.0))
            b = np.where(lam > 0, np.log1p(0.5 * a + np.sqrt(a + 0.25 * a * a)),
                         -lam + np.log(e + 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * e))))
        d = self.beta_max - self.beta_min
        # t solves d/2 t^2 + beta_min t = B; written without cancellation for small B
        with np.errstate(invalid="ignore"):  # B = inf (log-SNR -inf): inf / inf, answered as t_max below
            t = np.where(b == np.inf, np.inf, 2.0 * b / (np.sqrt(self.beta_min**2 + 2.0 * d * b) + self.beta_min))
        out = np.clip(t, self.t_min, self.t_max)
        return float(out) if np.ndim(log_snr) == 0 else out

    def m(self, t: Array) -> Array:
        """``exp(-B(t) / 2)``: the signal scale, as the VP SDE's."""
        out = np.exp(-0.5 * self._integrated_beta(t))
        return float(out) if np.ndim(t) == 0 else out

    def sigma(self, t: Array) -> Array:
        """``1 - exp(-B(t))``: the noise std in sub-VP coordinates (score-SDE's ``marginal_prob`` std)."""
        out = -np.expm1(-self._integrated_beta(t))
        return float(out) if np.ndim(t) == 0 else out

    def levels(self, steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(m, sigma)`` of ``grid(steps)`` in sub-VP coordinates (not VP's: see the class docstring)."""
        t = self.grid(steps)
        return self.m(t), self.sigma(t)

    def __repr__(self) -> str:
        return f"ContinuousSubVP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


def ve_levels(schedule: Schedule) -> tuple[float, float]:
    """(largest, smallest) VE noise level ``sigma / m`` of the schedule's trained levels (continuous: its grid's): the
    range of the karras and logsnr step grids, and of a model's ``sigma_range``."""
    m, sigma = schedule.levels()
    ve = np.asarray(sigma, dtype=np.float64) / np.asarray(m, dtype=np.float64)
    return float(ve.max()), float(ve.min())


def schedule_from_config(config: dict) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.to_config`; an unknown type or field is a clear error."""
    kinds = {"DiscreteVP": DiscreteVP, "DiscreteVE": DiscreteVE, "ContinuousVP": ContinuousVP, "ContinuousVE": ContinuousVE,
             "ContinuousSubVP": ContinuousSubVP}
    if not isinstance(config, dict):
        raise ValueError(f"a schedule config is a dict with a 'type' (see Schedule.to_config()), got {type(config).__name__}")
    cfg = dict(config)
    kind = cfg.pop("type", None)
    kind = kinds.get(kind) if isinstance(kind, str) else None
    if kind is None:
        raise ValueError(f"unknown schedule type {config.get('type')!r}; expected one of {sorted(kinds)}")
    recipe = cfg.pop("recipe", None)
    build = getattr(kind, recipe) if recipe in ("linear", "cosine") and kind is DiscreteVP else kind
    if recipe is not None and build is kind:
        raise ValueError(f"unknown {kind.__name__} recipe {recipe!r}; expected 'linear' or 'cosine'")
    try:
        return build(**cfg)
    except (TypeError, OverflowError) as e:  # unknown or missing fields, or values of the wrong type
        raise ValueError(f"bad {kind.__name__} config {short(config, 300)}: {e}") from None
