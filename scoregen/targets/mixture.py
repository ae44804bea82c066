"""Isotropic Gaussian mixtures: targets whose score is exact at every noise level.

``p(x0) = sum_k w_k N(mu_k, s_k^2 I)``. Noised at level (m, sigma) the marginal is again a mixture,
``sum_k w_k N(m mu_k, (m^2 s_k^2 + sigma^2) I)``, so eps, the score, the component and class posteriors
and the exact conditional ``p(x | y)`` are closed form. A sampler run on such a target has zero model
error: what remains is its own discretisation error.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..io import atomic_write, read_json
from ..models import Level, ScoreModel, _col, check_level, class_labels
from .._checks import check_int, short
from ..schedules import DiscreteVP, Schedule

__all__ = ["GaussianMixture"]

#: A mixture file is a few kB (gmm64: 10 components in 64 dimensions); 1000 components in 1000 dimensions
#: take about 20 MB of JSON. Larger files are refused before they are parsed.
MAX_TARGET_BYTES = 64 * 2**20


class GaussianMixture(ScoreModel):
    """An isotropic Gaussian mixture in R^d, usable directly as an exact score model.

    Args:
        weights: (K,) positive mixture weights (normalised to sum to 1).
        means: (K, d) component means.
        stds: (K,) positive component standard deviations.
        labels: optional (K,) class of each component; default: each component its own class. Classes are
            dense: the C classes are 0..C-1 and each has at least one component (so C <= K), since
            guidance toward a class without components has no target, and the classifier enumerates 0..C-1.
        schedule: the grid samplers use by default (DDPM's linear T=1000); the score is exact at any level.
        name: shown in tables.
    """

    protects_input = True  # every computation reads x; nothing writes to it

    def __init__(
        self,
        weights: Sequence[float],
        means: Sequence[Sequence[float]],
        stds: Sequence[float],
        labels: Optional[Sequence[int]] = None,
        *,
        schedule: Optional[Schedule] = None,
        name: str = "mixture",
    ):
        w, mu, s, lab = _validate(weights, means, stds, labels)
        self.weights, self.means, self.stds, self.labels = w / w.sum(), mu, s, lab
        self.num_classes = int(lab.max()) + 1
        self.shape = (mu.shape[1],)
        self.schedule = schedule if schedule is not None else DiscreteVP.linear()
        self.name = name
        self._cast: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_json(cls, path: str | os.PathLike, **kwargs) -> "GaussianMixture":
        """Load ``{"weights": [...], "means": [[...], ...], "stds": [...], "labels": [...]}`` (labels optional)."""
        try:
            spec = read_json(path, MAX_TARGET_BYTES, "a mixture target file")
        except FileNotFoundError:
            raise FileNotFoundError(f"target file {str(path)!r} does not exist") from None
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: expected a JSON object with keys weights, means, stds[, labels], got {type(spec).__name__}")
        missing = [k for k in ("weights", "means", "stds") if k not in spec]
        unknown = sorted(set(spec) - {"weights", "means", "stds", "labels", "name"})
        if missing or unknown:
            raise ValueError(
                f"{path}: missing keys {missing} / unknown keys {unknown}; "
                'expected {"weights": [...], "means": [[...], ...], "stds": [...], "labels": [...] (optional)}'
            )
        kwargs.setdefault("name", spec.get("name", os.path.splitext(os.path.basename(str(path)))[0]))
        try:
            return cls(spec["weights"], spec["means"], spec["stds"], spec.get("labels"), **kwargs)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_json(self, path: str | os.PathLike) -> None:
        spec = {
            "name": self.name,
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "stds": self.stds.tolist(),
            "labels": self.labels.tolist(),
        }
        with atomic_write(path) as f:
            json.dump(spec, f)

    def conditional(self, y: int) -> "GaussianMixture":
        """The exact conditional p(x | y): the components of class y, weights renormalised; a one-class mixture
        (its components all have label 0). ``y``: an int or a one-element integer tensor, one of 0..C-1."""
        y = int(class_labels(y, 1, None, self.num_classes, f"{self.name}: ")[0])
        keep = self.labels == y
        return GaussianMixture(self.weights[keep], self.means[keep], self.stds[keep], np.zeros(int(keep.sum()), dtype=np.int64),
                               schedule=self.schedule, name=f"{self.name}|y={y}")

    # ------------------------------------------------------------------ exact quantities
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def sigma_range(self) -> tuple[float, float]:
        """Langevin's default: sigma_max = the largest RMS distance between two data points
        (Song & Ermon 2020, technique 1), sigma_min = 0.01 (NCSN)."""
        d2 = ((self.means[:, None, :] - self.means[None, :, :]) ** 2).sum(-1)
        d2 = d2 + self.dim * (self.stds[:, None] ** 2 + self.stds[None, :] ** 2)
        return float(np.sqrt(d2.max())), 0.01

    @property
    def sigma_max_source(self) -> str:
        return "the target's largest RMS distance between two data points, NCSNv2's technique 1"

    def mean(self) -> np.ndarray:
        return self.weights @ self.means

    def cov(self) -> np.ndarray:
        mu = self.mean()
        second = (self.weights[:, None, None] * (self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second + np.eye(self.dim) * (self.weights @ self.stds**2) - np.outer(mu, mu)

    def _params(self, x: Tensor):
        key = (x.dtype, x.device)
        if key not in self._cast:
            to = lambda a: torch.as_tensor(a, dtype=x.dtype, device=x.device)  # noqa: E731
            self._cast[key] = (
                to(np.log(self.weights)), to(self.means), to(self.stds**2),
                (to(self.means) ** 2).sum(-1), torch.as_tensor(self.labels, device=x.device),
            )
        return self._cast[key]

    def _flat(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{self.name}: expected x of shape (batch, {self.dim}), got {tuple(x.shape)}")
        return x

    def _log_joint(self, x: Tensor, sigma: Level, m: Level, y: Optional[Tensor] = None):
        """log w_k + log N(x; m mu_k, v_k I) of shape (B, K), and v_k = m^2 s_k^2 + sigma^2."""
        check_level(sigma, m, x)
        log_w, mu, s2, mu2, labels = self._params(x)
        m, sigma = _col(m, x), _col(sigma, x)
        v = m * m * s2 + sigma * sigma
        dist2 = (x * x).sum(-1, keepdim=True) - 2 * m * _row_product(x, mu.T) + m * m * mu2
        log_joint = log_w - 0.5 * self.dim * torch.log(2 * math.pi * v) - 0.5 * dist2.clamp_min(0) / v
        if y is not None:
            y = class_labels(y, x.shape[0], x.device, self.num_classes, f"{self.name}: ")
            log_joint = log_joint.masked_fill(labels[None, :] != y[:, None], -math.inf)
        return log_joint, v

    def score(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        """Exact ``grad_x log p_t(x)`` (conditional on class y when given); finite also at sigma = 0."""
        x = self._flat(x)
        log_joint, v = self._log_joint(x, sigma, m, y)
        r_over_v = _softmax_components(log_joint) / v
        return _col(m, x) * _row_product(r_over_v, self._params(x)[1]) - x * r_over_v.sum(-1, keepdim=True)

    def eps(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        return -_col(sigma, x) * self.score(x, sigma, m, y)

    def log_prob(self, x: Tensor, sigma: Level = 0.0, m: Level = 1.0) -> Tensor:
        """Exact log density of the noised marginal at level (m, sigma), shape (B,)."""
        return torch.logsumexp(self._log_joint(self._flat(x), sigma, m)[0], dim=-1)

    def component_posterior(self, x: Tensor, sigma: Level = 0.0, m: Level = 1.0) -> Tensor:
        """p(k | x_t), shape (B, K)."""
        return _softmax_components(self._log_joint(self._flat(x), sigma, m)[0])

    def classifier(self, x: Tensor, sigma: Level = 0.0, m: Level = 1.0) -> Tensor:
        """Exact class log-posterior ``log p(y | x_t)`` of shape (B, num_classes): the noisy classifier for guidance."""
        log_joint = self._log_joint(self._flat(x), sigma, m)[0]
        labels = self._params(x)[4]
        per_class = torch.stack(
            [torch.logsumexp(log_joint.masked_fill(labels != c, -math.inf), -1) for c in range(self.num_classes)], -1
        )
        return per_class - torch.logsumexp(log_joint, -1, keepdim=True)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, y: Optional[int] = None,
               dtype: torch.dtype = torch.float32, return_components: bool = False):
        """n exact samples of p(x0) (of p(x0 | y) when y is given), shape (n, d)."""
        n = check_int("n", n)
        if y is not None:
            return self.conditional(y).sample(n, generator, dtype=dtype, return_components=return_components)
        k = torch.multinomial(torch.as_tensor(self.weights), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (torch.as_tensor(self.means)[k] + torch.as_tensor(self.stds)[k, None] * z).to(dtype)
        return (x, k) if return_components else x

    def eval_bytes_per_sample(self, dtype: torch.dtype) -> int:
        """Memory one evaluation holds per sample beyond x and its result, for :func:`scoregen.sample`'s estimate:
        about six (B, K) temporaries (distances, log joint, posterior; autograd keeps a few for guidance) and
        four (B, d) ones, in ``dtype``."""
        return (6 * len(self.weights) + 4 * self.dim) * torch.empty((), dtype=dtype).element_size()

    def __repr__(self) -> str:
        return f"GaussianMixture(name={self.name!r}, K={len(self.weights)}, d={self.dim}, classes={self.num_classes})"


#: Rows below which BLAS takes its small-matrix paths (measured on the CPU: 1-7 rows round differently from 8 and
#: more, which all agree); a smaller batch is padded to this many rows.
_MIN_GEMM_ROWS = 16


def _row_product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for a (B, k) batch, each row's result the same in any batch: BLAS computes products of a few rows with
    other kernels (gemv for one row), which round differently, so a small batch is padded with zero rows."""
    if a.shape[0] < _MIN_GEMM_ROWS:
        return (torch.cat([a, a.new_zeros(_MIN_GEMM_ROWS - a.shape[0], a.shape[1])]) @ b)[: a.shape[0]]
    return a @ b


def _softmax_components(log_joint: Tensor) -> Tensor:
    """``softmax(log_joint, -1)`` over the K components of a (B, K) tensor, written out (max, exp, sum, divide).

    Two reasons, both measured on the CPU: torch's softmax along a short last dimension is 4x slower (1.8 ms against
    0.47 ms for B = 10000, K = 8), and the faster softmax over dim 0 of the transpose vectorizes across samples, so a
    sample's result depends on its position in the batch (the scalar tail differs in the last bit). Each operation
    here works along the rows only, so a sample's eps is the same in any batch: what keeps seeded samples identical
    whatever the batch size or the split across processes."""
    e = (log_joint - log_joint.amax(-1, keepdim=True)).exp()  # out of place: guidance and the ODE likelihood differentiate it
    return e / e.sum(-1, keepdim=True)


def _validate(weights, means, stds, labels):
    def arr(name, v, ndim, want=None):
        want = want or ("a list of numbers" if ndim == 1 else "a list of equal-length lists of numbers")
        try:
            # bools and numeric strings convert to float64 silently: refused from the elements as given
            given = np.asarray(v, dtype=object).ravel()
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"'{name}' must be {want}") from None
        if any(isinstance(e, (bool, np.bool_, str, bytes)) for e in given):
            raise ValueError(f"'{name}' must be {want}, not booleans or strings")
        if a.ndim != ndim:
            raise ValueError(f"'{name}' must be {ndim}-dimensional, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"'{name}' contains NaN or inf")
        return a

    w, mu, s = arr("weights", weights, 1), arr("means", means, 2), arr("stds", stds, 1)
    K = len(w)
    if K == 0:
        raise ValueError("a mixture needs at least one component; 'weights' is empty")
    if mu.shape[0] != K or len(s) != K:
        raise ValueError(f"'weights' has {K} entries but 'means' has {mu.shape[0]} and 'stds' {len(s)}; one per component")
    if mu.shape[1] == 0:
        raise ValueError("'means' must have at least one coordinate per component")
    if np.any(w <= 0):
        raise ValueError(f"every weight must be positive; weights[{int(np.argmin(w))}] = {w.min()!r}")
    if np.any(s <= 0):
        raise ValueError(f"every std must be positive; stds[{int(np.argmin(s))}] = {s.min()!r}")
    if labels is None:
        return w, mu, s, np.arange(K)
    lab = arr("labels", labels, 1, "non-negative integers (the class of each component)")
    if len(lab) != K:
        raise ValueError(f"'labels' has {len(lab)} entries, 'weights' {K}; one class label per component")
    if np.any(lab < 0) or np.any(lab != np.round(lab)):
        raise ValueError("'labels' must be non-negative integers (the class of each component)")
    # dense classes 0..C-1, each with a component. The gaps are found among the distinct labels (at most K of them),
    # never by enumerating 0..max: a label of 1e9 is refused here at once, instead of making the classifier loop
    # over a billion classes
    present = np.unique(lab)
    top = present[-1]
    n_missing = top + 1 - present.size
    if n_missing:
        # 0..K+9 holds at most K distinct labels, so the first 10 gaps (or all of them, below top) lie in it
        gaps = np.setdiff1d(np.arange(int(min(top + 1, K + 10))), present)[:10]
        shown = ", ".join(str(int(c)) for c in gaps) + (f", ... ({n_missing:.15g} in all)" if n_missing > len(gaps) else "")
        raise ValueError(
            f"'labels' must name classes 0..C-1, each with at least one component (so at most {K} classes for {K} "
            f"components): {'class' if n_missing == 1 else 'classes'} {shown} {'has' if n_missing == 1 else 'have'} no "
            f"component (largest label {top:.15g}, for {K} components); relabel the classes 0..C-1 in order, e.g. "
            f"labels {short(np.unique(lab, return_inverse=True)[1].tolist(), 80)}")
    lab = lab.astype(np.int64)
    return w, mu, s, lab
