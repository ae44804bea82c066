"""The reverse step's variance: the width of ``p(x_s | x_t)`` between two levels t (noisier) and s.

Every reverse step of the ancestral sampler and every term of the variational bound uses the Gaussian posterior
``q(x_s | x_t, x0) = N(a x_t + b x0, beta_tilde I)`` (:class:`Kernel`) with x0 replaced by the model's estimate, and
one of four variances (:data:`VARIANCES`):

* ``beta_tilde``: the posterior's own variance, optimal when the data is a point mass (Ho et al. 2020);
* ``beta``: the forward step's variance, optimal for data ~ N(0, I);
* ``learned``: a network's per-dimension interpolation in log space, ``exp(v log beta + (1 - v) log beta_tilde)``
  (Nichol & Dhariwal 2021, eq. 15; :meth:`scoregen.ScoreModel.eps_and_variance` answers ``v``);
* ``analytic``: the KL-optimal isotropic variance (Bao et al. 2022, Analytic-DPM),
  ``beta_tilde + b^2 E||x0 - x0_hat||^2 / D`` where ``E||x0 - x0_hat||^2 / D = (sigma_t / m_t)^2 (1 - Gamma_t)``
  and ``Gamma_t = E||eps_theta(x_t)||^2 / D`` over the data (:class:`AnalyticVariance` estimates it). It lies between
  ``beta_tilde`` (Gamma = 1) and, for data of bounded range [lo, hi], ``beta_tilde + b^2 ((hi - lo) / 2)^2``
  (Analytic-DPM's Theorem 2): the estimate is clipped to these bounds.

At the last step (s clean) beta_tilde is 0; a decoder needs a width, so :attr:`Kernel.beta_tilde_clipped` there is
the step above's (improved-diffusion's ``posterior_log_variance_clipped``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from ._checks import check_int
from ._progress import progress as _progress
from .io import atomic_write, cache_dir
from .models import ModelTransform, ScoreModel
from .schedules import transition

__all__ = ["VARIANCES", "Kernel", "kernels", "step_variance", "variance_source", "AnalyticVariance", "analytic_variance", "eps_moments"]

VARIANCES = ("beta_tilde", "beta", "learned", "analytic")


@dataclass(frozen=True)
class Kernel:
    """One reverse step t -> s in the caller's coordinates: the forward kernel ``x_t | x_s ~ N(sqrt(alpha) x_s, beta)``
    and the posterior ``q(x_s | x_t, x0) = N(a x_t + b x0, beta_tilde)``; ``err`` is ``(sigma_t / m_t)^2``, the factor
    turning an eps error into an x0 error. All Python floats."""

    alpha: float
    beta: float
    beta_tilde: float
    beta_tilde_clipped: float
    a: float
    b: float
    err: float


def kernels(m: Sequence[float], sigma: Sequence[float]) -> list[Kernel]:
    """The reverse kernels between consecutive levels of a grid ``(m[i], sigma[i])``, noisiest first; the last level
    may be clean (sigma = 0). One per step: ``len(m) - 1``."""
    out = []
    for i in range(len(m) - 1):
        alpha, beta, beta_tilde = transition(m[i], sigma[i], m[i + 1], sigma[i + 1])
        a = math.sqrt(alpha) * sigma[i + 1] ** 2 / sigma[i] ** 2
        b = m[i + 1] * beta / sigma[i] ** 2
        out.append(Kernel(alpha, beta, beta_tilde, beta_tilde, a, b, (sigma[i] / m[i]) ** 2))
    if out and not out[-1].beta_tilde > 0:  # the decoder step: the step above's width (a one-step grid: beta)
        last = out[-1]
        width = out[-2].beta_tilde if len(out) > 1 else last.beta
        out[-1] = Kernel(last.alpha, last.beta, last.beta_tilde, width, last.a, last.b, last.err)
    return out


_NO_LEARNED = ("variance='learned' needs a model with learned variance channels (model.learned_variance, a network "
               "trained with objective 'hybrid'); this one has none: use 'beta_tilde', 'beta' or 'analytic'")
_NO_ANALYTIC = ("variance='analytic' needs the model's mean squared eps at each level: wrap the model with "
                "scoregen.analytic_variance(model, data) (data: samples of its training data)")


def variance_source(kind: str, model: object) -> Optional["AnalyticVariance"]:
    """Check before any work that ``model`` can give the variance ``kind``: a known kind, variance channels for
    ``learned``, an :class:`AnalyticVariance` in the stack for ``analytic`` (returned; None otherwise)."""
    if kind not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {kind!r}")
    if kind == "learned" and not getattr(model, "learned_variance", False):
        raise ValueError(_NO_LEARNED)
    if kind != "analytic":
        return None
    moments = eps_moments(model)
    if moments is None:
        raise ValueError(_NO_ANALYTIC)
    return moments


def step_variance(kind: str, k: Kernel, *, v: Optional[Tensor] = None, gamma: Optional[float] = None,
                  x0_bound: Optional[float] = None) -> Union[float, Tensor]:
    """The variance of the reverse step ``k`` for ``kind`` in :data:`VARIANCES` (a float; a tensor shaped like ``v``
    for ``learned``). ``v``: the learned weight (``learned``); ``gamma``: ``E||eps_theta||^2 / D`` at the step's upper
    level and ``x0_bound``: half the data range, or None (``analytic``). The last step's width is the clipped one."""
    if kind == "beta_tilde":
        return k.beta_tilde_clipped
    if kind == "beta":
        return k.beta
    if kind == "learned":
        if v is None:
            raise ValueError(_NO_LEARNED)
        return torch.exp(v * math.log(k.beta) + (1.0 - v) * math.log(k.beta_tilde_clipped))
    if kind == "analytic":
        if gamma is None:
            raise ValueError(_NO_ANALYTIC)
        if not math.isfinite(gamma):
            raise ValueError(f"the estimate of E||eps||^2 / D is {gamma}: the model returned NaN or inf on the data")
        x0_err = k.err * max(1.0 - gamma, 0.0)  # E||x0 - x0_hat||^2 / D >= 0 (Gamma <= 1)
        if x0_bound is not None:
            x0_err = min(x0_err, x0_bound**2)  # bounded data: Analytic-DPM's Theorem 2
        # the decoder step's beta_tilde is 0: where the data is recovered exactly (Gamma = 1) its width would be 0 and
        # the bound infinite, so it keeps the clipped width as its floor (the other steps' floor is beta_tilde itself)
        return max(k.beta_tilde + k.b**2 * x0_err, k.beta_tilde_clipped)
    raise ValueError(f"unknown variance {kind!r}; expected one of {VARIANCES}")


# ------------------------------------------------------------------------------------------ Analytic-DPM
#: Bumped whenever the estimate of Gamma changes: part of the cache key, so an old cache file is not reused.
ESTIMATOR_VERSION = 2


class AnalyticVariance(ModelTransform):
    """``model`` unchanged, plus what ``variance="analytic"`` needs: ``Gamma(s) = E||eps_theta(x0 + s z, s)||^2 / D``
    over the data at VE level ``s`` (:meth:`eps_sq_mean`), estimated on first use from ``n`` data points and one
    noise draw per point (the same ones at every level, so the estimates are smooth in s), kept in memory and,
    with a ``cache_dir``, in a JSON file keyed by the model, the data and the estimator's settings.

    The estimate is ``1 - (mean ||z||^2 - mean ||eps_theta||^2) / D``: the noises' own mean square (1 in expectation)
    as a control variate. Where the data is nearly recovered (eps_theta close to z) the plain mean of ``||eps||^2``
    carries the noises' sampling error (sd sqrt(2 / (n D))) into ``1 - Gamma``, which is then often negative; the
    difference cancels it.

    Use :func:`analytic_variance` to build one."""

    role = "the analytic variance"
    reads_input_only = True

    def __init__(self, model: ScoreModel, data: Tensor, *, n: int = 1024, seed: int = 0,
                 data_range: Union[str, tuple[float, float], None] = "auto", batch_size: int = 256,
                 y: Optional[Tensor] = None, cache_dir: Union[str, os.PathLike, None] = None,
                 progress: Optional[bool] = None):
        super().__init__(model)
        if not isinstance(data, Tensor) or data.ndim < 2 or not data.is_floating_point():
            raise ValueError(f"data must be a float tensor of shape (N, *shape), got "
                             f"{tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__}")
        shape = tuple(getattr(model, "shape", ()) or ())
        if shape and tuple(data.shape[1:]) != shape:
            raise ValueError(f"data has samples of shape {tuple(data.shape[1:])}, the model takes {shape}")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data has NaN or inf values")
        self.n, self.seed = check_int("n (data points for the estimate)", n, 2), int(seed)
        self.batch_size = check_int("batch_size", batch_size, 1)
        g = torch.Generator().manual_seed(self.seed)
        pick = torch.randperm(data.shape[0], generator=g)[: self.n] if data.shape[0] > self.n else torch.arange(data.shape[0])
        self.x0 = data[pick].detach()
        self.y = None if y is None else torch.as_tensor(y)[pick]
        self.z = torch.randn(self.x0.shape, generator=g, dtype=self.x0.dtype).to(self.x0.device)
        self._z_sq = float(self.z.double().pow(2).mean())  # the control variate: 1 in expectation
        if data_range == "auto":
            data_range = (float(data.min()), float(data.max()))
        self.x0_bound = None if data_range is None else (float(data_range[1]) - float(data_range[0])) / 2.0
        self.progress = progress
        self._gamma: dict[float, float] = {}
        self._path = None if cache_dir is None else self._cache_file(os.fspath(cache_dir))
        if self._path is not None and os.path.isfile(self._path):
            try:
                with open(self._path) as f:
                    self._gamma = {float(k): float(v) for k, v in json.load(f)["gamma"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self._gamma = {}  # a damaged entry is estimated again and replaced

    def _cache_file(self, directory: str) -> Optional[str]:
        from .samplers.tune import model_fingerprint
        if isinstance(self.model, ModelTransform):  # the fingerprint sees through x0 hooks, whose eps differ
            return None
        try:
            fp = model_fingerprint(self.model)
        except ValueError:
            return None  # a model that cannot be identified is estimated in memory only
        h = hashlib.sha256()
        for part in (fp, str(self.n), str(self.seed), str(self.x0_bound), f"estimator={ESTIMATOR_VERSION}"):
            h.update(part.encode() + b"\0")
        for t in (self.x0, self.z) + (() if self.y is None else (self.y,)):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return os.path.join(directory, f"gamma-{h.hexdigest()[:32]}.json")

    def eps_and_variance(self, x: Tensor, sigma, m=1.0, y: Optional[Tensor] = None):
        return self.model.eps_and_variance(x, sigma, m, y)

    @torch.no_grad()
    def eps_sq_mean(self, s: Sequence[float]) -> np.ndarray:
        """``Gamma`` at each VE level ``s[i] = sigma / m`` (> 0), estimating the levels not known yet."""
        s = [float(v) for v in s]
        todo = [v for v in dict.fromkeys(s) if v not in self._gamma]
        if todo:
            D = self.x0[0].numel()
            with _progress(len(todo), self.progress, "analytic variance", "level", leave=False) as bar:
                for level in todo:
                    total = 0.0
                    for i in range(0, self.x0.shape[0], self.batch_size):
                        x0, z = self.x0[i:i + self.batch_size], self.z[i:i + self.batch_size]
                        yb = None if self.y is None else self.y[i:i + self.batch_size]
                        eps = self.model.eps(x0 + level * z, level, 1.0, yb)
                        total += float(eps.double().pow(2).sum())
                    self._gamma[level] = 1.0 - (self._z_sq - total / (self.x0.shape[0] * D))
                    bar.update()
            self._save()
        return np.array([self._gamma[v] for v in s])

    def _save(self) -> None:
        if self._path is None:
            return
        try:
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            with atomic_write(self._path) as f:
                json.dump({"format": "scoregen-analytic-variance", "version": ESTIMATOR_VERSION,
                           "gamma": {repr(k): v for k, v in sorted(self._gamma.items())}}, f)
        except (OSError, ValueError):
            pass  # the cache is an optimisation: the estimate in memory stands

    def __repr__(self) -> str:
        return f"AnalyticVariance({self.model!r}, n={self.x0.shape[0]}, x0_bound={self.x0_bound})"


def analytic_variance(model: ScoreModel, data: Tensor, *, n: int = 1024, seed: int = 0,
                      data_range: Union[str, tuple[float, float], None] = "auto", batch_size: int = 256,
                      y: Optional[Tensor] = None, cache: bool = True, progress: Optional[bool] = None) -> AnalyticVariance:
    """``model`` ready for ``variance="analytic"`` (Analytic-DPM) in :func:`~scoregen.samplers.ddpm` and
    :func:`scoregen.likelihood.vlb`.

    Args:
        data: samples of the training data, shape (N, *model.shape), in the model's data scale; ``n`` of them (a
            seeded random subset when N > n) estimate ``E||eps_theta||^2 / D`` at each level a sampler asks for.
        data_range: ``(lo, hi)`` bounds the data's support (images: (-1, 1)): the variance is clipped to
            Analytic-DPM's upper bound; ``"auto"``: the range of ``data``; None: no upper clipping.
        y: class labels of ``data`` for a class-conditional model (the estimate is then of the conditional model).
        cache: keep the estimates in ``$SCOREGEN_CACHE/analytic`` , keyed by the model's
            weights, the data points, their noise and these settings; a model whose weights cannot be fingerprinted is
            estimated in memory only.
    Cost: one evaluation of each of the ``n`` points per new level (a 20-step grid: 20 x n evaluations, once).
    """
    return AnalyticVariance(model, data, n=n, seed=seed, data_range=data_range, batch_size=batch_size, y=y,
                            cache_dir=cache_dir("analytic") if cache else None, progress=progress)


def eps_moments(model: object) -> Optional[AnalyticVariance]:
    """The :class:`AnalyticVariance` in a model stack (``model`` itself or a model a transform wraps), or None."""
    while model is not None:
        if isinstance(model, AnalyticVariance):
            return model
        model = getattr(model, "model", None) if isinstance(model, ModelTransform) else None
    return None
