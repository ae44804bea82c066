"""Statistical checks of a sample set against an exact isotropic Gaussian mixture.

Imported by the test modules as ``from stats import ...``: pytest's default "prepend" import mode puts
tests/ (which has no __init__.py) on sys.path.

Every statistic is an estimate whose standard error (SE) under the null hypothesis "the samples are i.i.d.
draws from the mixture" follows from the sample size and the exact mixture parameters:

* mode weights: ``n_k ~ Binomial(n, w_k)``, so ``z = (n_k - n w_k) / sqrt(n w_k (1 - w_k))``;
* component k's mean, per coordinate j: the n_k assigned samples have std s_k, so
  ``z = (mean_j - mu_kj) / (s_k / sqrt(n_k))``;
* component k's variance, pooled over the d coordinates around the *known* mean mu_k:
  ``v = sum ||x - mu_k||^2 / (n_k d)`` has mean s_k^2 and variance ``2 s_k^4 / (n_k d)`` (chi-square with
  n_k d degrees of freedom), so ``z = (v - s_k^2) / (s_k^2 sqrt(2 / (n_k d)))``;
* overall mean, per coordinate j: ``z = (xbar_j - E[x]_j) / sqrt(Cov[x]_jj / n)`` with the exact mixture
  mean and covariance.

Each z is approximately standard normal (CLT; the helper refuses expected counts below 100 per
component, where the approximation is poor). With M statistics tested at once, a family-wise
false-alarm probability equal to that of a single two-sided test at ``z`` (z = 5: 5.7e-7) needs each
statistic tested at the Bonferroni threshold ``z_M = -Phi^{-1}(Phi(-z) / M)`` with M = K (d + 2) + d
(z = 5: 5.49 for 3 components in 2-D, 5.64 for ring2d's 8).

Samples are assigned to components by ``argmax_k p(k | x)`` under the clean mixture. That is only an
unbiased split when components barely overlap, so the helper requires, for every pair of components,
``|mu_i - mu_j| >= 4 (s_i + s_j)``: the decision boundary then lies about 4 std from each mean (unequal
weights shift it slightly), and the misassigned mass (about 3e-5 per neighbour) is far below the resolution
of any test here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

import scoregen as sg

__all__ = [
    "Stat",
    "bonferroni_z",
    "mixture_stats",
    "assert_matches_mixture",
    "assert_proportion_above",
    "binomial_se",
    "ExactEpsNet",
    "network_model",
]

_N01 = NormalDist()
MIN_EXPECTED_COUNT = 100
MIN_SEPARATION = 4.0


@dataclass
class Stat:
    """One estimated statistic, its exact expected value and its standard error at this sample size."""

    name: str
    value: float
    expected: float
    se: float

    @property
    def z(self) -> float:
        return (self.value - self.expected) / self.se

    def __str__(self) -> str:
        return f"{self.name} = {self.value:.5g} (exact {self.expected:.5g}, SE {self.se:.3g}): {self.z:+.2f} SE"


def bonferroni_z(z: float, m: int) -> float:
    """Per-test two-sided threshold for m tests with the family-wise error of one two-sided test at z."""
    return -_N01.inv_cdf(_N01.cdf(-z) / m)


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1.0 - p) / n)


def _check_separated(mixture) -> None:
    mu, s = np.asarray(mixture.means), np.asarray(mixture.stds)
    for i in range(len(s)):
        for j in range(i + 1, len(s)):
            ratio = np.linalg.norm(mu[i] - mu[j]) / (s[i] + s[j])
            if ratio < MIN_SEPARATION:
                raise ValueError(
                    f"components {i} and {j} of {mixture!r} are {ratio:.2f} (s_i + s_j) apart; per-component "
                    f"checks need >= {MIN_SEPARATION} so that argmax assignment is unbiased"
                )


def mixture_stats(samples, mixture) -> list[Stat]:
    """Every statistic described in the module docstring, for ``samples`` of shape (n, d)."""
    x = torch.as_tensor(samples).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[1] != mixture.dim:
        raise ValueError(f"expected samples of shape (n, {mixture.dim}), got {tuple(x.shape)}")
    n, d = x.shape
    w, mu, s = np.asarray(mixture.weights), np.asarray(mixture.means), np.asarray(mixture.stds)
    if n * w.min() < MIN_EXPECTED_COUNT:
        raise ValueError(f"n = {n} gives an expected count of {n * w.min():.0f} < {MIN_EXPECTED_COUNT} for the lightest component")
    _check_separated(mixture)
    k = mixture.component_posterior(x).argmax(-1).numpy()
    xs = x.numpy()
    out: list[Stat] = []
    for c in range(len(w)):
        n_c = int((k == c).sum())
        out.append(Stat(f"weight of component {c}", n_c / n, w[c], binomial_se(w[c], n)))
        if n_c < 2:
            continue  # its weight statistic already fails by a wide margin
        xc = xs[k == c]
        for j in range(d):
            out.append(Stat(f"mean[{j}] of component {c}", xc[:, j].mean(), mu[c, j], s[c] / math.sqrt(n_c)))
        v = ((xc - mu[c]) ** 2).sum() / (n_c * d)
        out.append(Stat(f"variance of component {c}", v, s[c] ** 2, s[c] ** 2 * math.sqrt(2.0 / (n_c * d))))
    mean, cov = mixture.mean(), mixture.cov()
    for j in range(d):
        out.append(Stat(f"overall mean[{j}]", xs[:, j].mean(), mean[j], math.sqrt(cov[j, j] / n)))
    return out


def assert_matches_mixture(samples, mixture, z: float = 5.0, what: str = "samples") -> list[Stat]:
    """Fail, naming every offending statistic and its distance in standard errors, unless ``samples`` are
    consistent with i.i.d. draws from ``mixture`` (family-wise two-sided level of a single z test).

    Returns the statistics, so callers can report or further test them."""
    stats = mixture_stats(samples, mixture)
    # Mode weights, means and variances are only computed for components that received >= 2 samples; a
    # missing component's weight already fails. Count what *would* be tested so the threshold is fixed.
    m = len(mixture.weights) * (mixture.dim + 2) + mixture.dim
    limit = bonferroni_z(z, m)
    bad = [st for st in stats if not abs(st.z) <= limit]  # `not <=` also catches NaN
    if bad:
        lines = "\n  ".join(str(st) for st in bad)
        raise AssertionError(
            f"{what} do not match {mixture!r}: {len(bad)} of {len(stats)} statistics beyond "
            f"{limit:.2f} SE (family-wise z = {z}, Bonferroni over {m} tests):\n  {lines}"
        )
    return stats


def assert_proportion_above(p_hi: float, p_lo: float, n_hi: int, n_lo: int, z: float = 5.0, what: str = "proportion"):
    """Assert that an observed proportion p_hi exceeds p_lo by more than z standard errors of the
    difference of two independent binomial proportions, ``sqrt(p_hi(1-p_hi)/n_hi + p_lo(1-p_lo)/n_lo)``."""
    se = math.sqrt(p_hi * (1 - p_hi) / n_hi + p_lo * (1 - p_lo) / n_lo)
    se = max(se, 0.5 / min(n_hi, n_lo))  # both proportions at 0 or 1: at least half a sample's worth
    diff = p_hi - p_lo
    assert diff > z * se, (
        f"{what}: {p_hi:.4f} - {p_lo:.4f} = {diff:+.4f} is {diff / se:+.2f} SE of the difference (SE {se:.4f}); "
        f"expected more than {z} SE"
    )


# ------------------------------------------------------------------ exact stand-ins for trained networks


class ExactEpsNet:
    """A stand-in for a trained eps-network: ``net(x, t)`` is the mixture's exact eps at the level that the
    schedule assigns to the (possibly fractional) label t, in the schedule's own coordinates.

    It knows the level only through t, as a real network would, so a wrong log-SNR -> t mapping or a wrong
    input rescaling in NetworkScoreModel lands the sampler on the wrong distribution. Counts its calls.
    """

    def __init__(self, mixture: "sg.GaussianMixture", schedule):
        self.mixture, self.schedule, self.calls = mixture, schedule, 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        labels = t.detach().to("cpu", torch.float64).numpy()
        m = torch.as_tensor(self.schedule.m(labels), dtype=x.dtype, device=x.device)
        sigma = torch.as_tensor(self.schedule.sigma(labels), dtype=x.dtype, device=x.device)
        return self.mixture.eps(x, sigma, m, y)


def network_model(mixture, schedule) -> sg.NetworkScoreModel:
    return sg.NetworkScoreModel(ExactEpsNet(mixture, schedule), schedule, time="fractional", shape=mixture.shape)
