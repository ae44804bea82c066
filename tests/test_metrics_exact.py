"""The metrics against an exact Gaussian mixture (scoregen.metrics, after "Metrics against an exact Gaussian mixture"),
checked against exact math: closed forms, brute-force computations written out here, and scipy.

Random checks use fixed seeds and tolerances derived from their sample sizes (stated at each check). Samples are
float64 throughout so that rounding never competes with the statistical tolerances.
"""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
from scipy import optimize, stats

from scoregen.metrics import (Estimate, component_frechet, frechet_distance, frechet_gaussians, mixture_quantiles,
                              mmd_bandwidth, mmd_to_mixture, sliced_w2_to_mixture)
from scoregen.targets.mixture import GaussianMixture

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mix2d3(weights=(0.3, 0.7), stds=(0.5, 1.0), shift=0.0) -> GaussianMixture:
    """Two overlapping components in d=3 (the second 3 apart along x, optionally moved by ``shift`` along y)."""
    return GaussianMixture(list(weights), [[0.0, 0.0, 0.0], [3.0, shift, 0.0]], list(stds))


# ---------------------------------------------------------------------------------------------------------------
# The test's own oracle: expectations of the Gaussian kernel under isotropic Gaussian mixtures.


def kernel_mean(p, q, h2: float) -> float:
    """``E k(x, y)`` for independent ``x ~ p``, ``y ~ q``, ``k(x, y) = exp(-|x - y|^2 / (2 h2))``.

    p, q: (weights (K,), means (K, d), stds (K,)) of isotropic mixtures (a std of 0 is a point mass). Per pair of
    components the d coordinates are independent, and in 1-D ``E exp(-(x - y)^2 / (2 h2))`` with
    ``x - y ~ N(m1 - m2, s1^2 + s2^2)`` is ``sqrt(h2 / v) exp(-(m1 - m2)^2 / (2 v))``, ``v = h2 + s1^2 + s2^2``
    (checked by quadrature in test_kernel_mean_oracle_matches_quadrature); the product over coordinates gives the
    d-dimensional form ``(h2 / v)^(d/2) exp(-|m1 - m2|^2 / (2 v))``.
    """
    (w1, m1, s1), (w2, m2, s2) = ((np.asarray(a, dtype=np.float64) for a in t) for t in (p, q))
    d = m1.shape[1]
    v = h2 + s1[:, None] ** 2 + s2[None, :] ** 2
    dist2 = ((m1[:, None, :] - m2[None, :, :]) ** 2).sum(-1)
    return float((w1[:, None] * w2[None, :] * (h2 / v) ** (d / 2) * np.exp(-dist2 / (2 * v))).sum())


def params(t: GaussianMixture):
    return t.weights, t.means, t.stds


def population_mmd2(target: GaussianMixture, sampler: GaussianMixture, h2: float) -> float:
    """MMD^2 between the sampler's distribution q and the target p: ``E_qq k - 2 E_pq k + E_pp k``."""
    p, q = params(target), params(sampler)
    return kernel_mean(q, q, h2) - 2 * kernel_mean(p, q, h2) + kernel_mean(p, p, h2)


def test_kernel_mean_oracle_matches_quadrature():
    # 1-D: the double integral of N(x; m1, s1^2) N(y; m2, s2^2) k(x, y) on a fine grid (the trapezoid rule is
    # accurate to rounding for Gaussians over +-12 std)
    m1, s1, m2, s2, h2 = 0.4, 0.7, -0.5, 1.3, 0.8
    x = np.linspace(m1 - 12 * s1, m1 + 12 * s1, 1601)
    y = np.linspace(m2 - 12 * s2, m2 + 12 * s2, 1601)
    integrand = (stats.norm.pdf(x, m1, s1)[:, None] * stats.norm.pdf(y, m2, s2)[None, :]
                 * np.exp(-(x[:, None] - y[None, :]) ** 2 / (2 * h2)))
    numeric = np.trapezoid(np.trapezoid(integrand, y, axis=1), x)
    assert kernel_mean(([1.0], [[m1]], [s1]), ([1.0], [[m2]], [s2]), h2) == pytest.approx(numeric, rel=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# mmd_to_mixture


def test_mmd_bandwidth_is_the_documented_formula():
    t = mix2d3()
    assert mmd_bandwidth(t) == pytest.approx(math.sqrt(3 * (0.3 * 0.5**2 + 0.7 * 1.0**2)), rel=1e-14)
    assert mmd_bandwidth(GaussianMixture([1.0], [[0.0] * 4], [1.0])) == pytest.approx(2.0, rel=1e-14)


ONE = GaussianMixture([1.0], [[0.0] * 4], [1.0])
CLOSED_FORM_CASES = {
    # target, the sampler's distribution (a deliberately wrong one), bandwidth (None: the default)
    "shifted mean": (ONE, GaussianMixture([1.0], [[0.3, 0.0, 0.0, 0.0]], [1.0]), None),
    "variance error (std 1.1 s)": (ONE, GaussianMixture([1.0], [[0.0] * 4], [1.1]), None),
    "mode weight error": (mix2d3(), mix2d3(weights=(0.45, 0.55)), None),
    "component shape error, h=1": (mix2d3(), mix2d3(stds=(0.5, 1.25)), 1.0),
}


@pytest.mark.parametrize("case", list(CLOSED_FORM_CASES))
def test_mmd_matches_the_closed_form_population_value(case):
    target, sampler, bandwidth = CLOSED_FORM_CASES[case]
    h = mmd_bandwidth(target) if bandwidth is None else bandwidth
    exact = population_mmd2(target, sampler, h * h)
    x = sampler.sample(4000, gen(11), dtype=F64)
    est = mmd_to_mixture(x, target, bandwidth)
    assert isinstance(est, Estimate) and est.se > 0
    # the estimate is unbiased with standard error se: 4 se is a 6e-5 two-sided false alarm for a normal estimate
    assert abs(est.value - exact) < 4 * est.se, (case, est, exact)
    # and each error is large enough at n=4000 to be detected (exact >= 7 se by design, so this holds unless the
    # estimate were 4 se low)
    assert exact > 7 * est.se and est.value > 3 * est.se, (case, est, exact)


def test_mmd_of_exact_samples_is_calibrated():
    """40 independent exact draws: z = value / se should be ~N(0, 1). The mean of 40 z has sd 1/sqrt(40) = 0.158,
    so |mean| < 4 * 0.158 = 0.63; the sample std of 40 normal z has sd ~1/sqrt(2 * 39) = 0.113, so it must lie in
    1 +- 4 * 0.113 = [0.55, 1.45]. (This draw: mean -0.26, std 0.65: the se is conservative, see
    test_mmd_standard_error_is_not_conservative_for_exact_samples.)"""
    target = mix2d3()
    z = []
    for seed in range(40):
        est = mmd_to_mixture(target.sample(400, gen(1000 + seed), dtype=F64), target, block=200)
        z.append(est.value / est.se)
    z = np.array(z)
    assert abs(z.mean()) < 0.63, z
    assert 0.55 < z.std(ddof=1) < 1.45, z


def test_mmd_standard_error_is_never_too_small_for_exact_samples():
    """The same check with 400 draws (n = 200, one block, cheap), resolving the std of z to 1/sqrt(2 * 399) = 0.035.
    The documented behaviour near MMD^2 = 0: the error is conservative (zeta_1's estimate is clamped at 0), the z
    std about 0.65 at these settings; it must never exceed 1 + 4 * 0.035 = 1.14 (an error too small would make the
    benchmark call exact samples off their floor), nor fall below 0.5 (an error useless for ranking)."""
    target = mix2d3()
    z = []
    for seed in range(400):
        est = mmd_to_mixture(target.sample(200, gen(5000 + seed), dtype=F64), target, block=200)
        z.append(est.value / est.se)
    assert 0.5 < np.std(z, ddof=1) < 1.14


def brute_force_u_statistic(x: np.ndarray, target: GaussianMixture, h2: float):
    """The complete U-statistic over all pairs i != j of ``h(x, x') = k(x, x') - c(x) - c(x') + S`` (explicit
    kernel, c and S from the oracle above), and the documented standard error
    ``sqrt(4 zeta_1 / n + 2 zeta_2 / (n (n - 1)))``."""
    n = len(x)
    k = np.exp(-((x[:, None, :] - x[None, :, :]) ** 2).sum(-1) / (2 * h2))
    c = np.array([kernel_mean(params(target), ([1.0], [xi], [0.0]), h2) for xi in x])
    S = kernel_mean(params(target), params(target), h2)
    hij = k - c[:, None] - c[None, :] + S
    off = ~np.eye(n, dtype=bool)
    u = hij[off].mean()
    rows = np.where(off, hij, 0.0).sum(1) / (n - 1)
    zeta2 = max((hij[off] ** 2).mean() - u * u, 0.0)
    zeta1 = max(rows.var(ddof=1) - zeta2 / (n - 1), 0.0)
    return u, math.sqrt(4 * zeta1 / n + 2 * zeta2 / (n * (n - 1)))


def test_mmd_with_one_block_is_the_complete_u_statistic():
    target = mix2d3()
    x = mix2d3(weights=(0.5, 0.5), shift=0.5).sample(300, gen(3), dtype=F64)
    h2 = mmd_bandwidth(target) ** 2
    u, se = brute_force_u_statistic(x.numpy(), target, h2)
    assert abs(u) > 1e-3  # a value worth comparing (the samples are from a different mixture)
    for block in (300, 1000, 10**9):  # block >= n: one block, all pairs
        est = mmd_to_mixture(x, target, block=block)
        assert est.value == pytest.approx(u, abs=1e-10)
        assert est.se == pytest.approx(se, rel=1e-8)
    # block=100: three blocks of 100 consecutive samples, each its own complete U-statistic; equal sizes, so the
    # estimate is their plain mean
    blocks = [brute_force_u_statistic(x[i:i + 100].numpy(), target, h2)[0] for i in (0, 100, 200)]
    assert mmd_to_mixture(x, target, block=100).value == pytest.approx(np.mean(blocks), abs=1e-10)


def test_mmd_refuses_bad_input():
    target = mix2d3()
    x = target.sample(50, gen(4), dtype=F64)
    for bad in (x[:, :2], torch.cat([x, x[:, :1]], 1), x[:, 0], x[:1]):
        with pytest.raises(ValueError, match="needs samples of shape"):
            mmd_to_mixture(bad, target)
    for value in (math.nan, math.inf):
        y = x.clone()
        y[7, 1] = value
        with pytest.raises(ValueError, match="NaN or inf"):
            mmd_to_mixture(y, target)
    for bandwidth in (0.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="bandwidth must be a positive finite number"):
            mmd_to_mixture(x, target, bandwidth=bandwidth)


def test_mmd_refuses_a_negative_bandwidth():
    target = mix2d3()
    with pytest.raises(ValueError, match="bandwidth must be a positive finite number"):
        mmd_to_mixture(target.sample(50, gen(4), dtype=F64), target, bandwidth=-1.0)


# ---------------------------------------------------------------------------------------------------------------
# frechet_gaussians, frechet_distance


def fd_scipy(m1, c1, m2, c2) -> float:
    """FID's textbook formula with scipy's general matrix square root."""
    return float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real)


def rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_frechet_gaussians_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_gaussians([0.5], [[0.7**2]], [-1.0], [[1.9**2]]) == pytest.approx(1.5**2 + 1.2**2, rel=1e-12)
    # commuting (diagonal) covariances: |m1 - m2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([0.3, 1.0, 4.0, 2.5]), np.array([1.2, 0.2, 4.0, 0.9])
    m1, m2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 1.0, 0.0])
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_gaussians(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # singular covariances: the Gaussians on two orthogonal lines through 0 are sqrt(2) * s apart on average
    assert frechet_gaussians([0, 0], np.diag([1.0, 0.0]), [0, 0], np.diag([0.0, 1.0])) == pytest.approx(2.0, rel=1e-12)
    assert frechet_gaussians([0, 0], np.zeros((2, 2)), [1, 1], np.diag([2.0, 3.0])) == pytest.approx(7.0, rel=1e-12)


def test_frechet_gaussians_rotated_anisotropic_against_scipy():
    d = 5
    r1, r2 = rotation(d, 1), rotation(d, 2)
    c1 = r1 @ np.diag([0.01, 0.5, 1.0, 3.0, 9.0]) @ r1.T
    c2 = r2 @ np.diag([0.2, 0.2, 2.0, 4.0, 6.0]) @ r2.T
    m1, m2 = np.arange(d) * 0.3, np.ones(d)
    expected = fd_scipy(m1, c1, m2, c2)
    got = frechet_gaussians(m1, c1, m2, c2)
    assert got == pytest.approx(expected, rel=1e-9)
    assert frechet_gaussians(m2, c2, m1, c1) == pytest.approx(got, rel=1e-10)  # symmetric
    # identical Gaussians are 0 apart (up to rounding of the traces, ~1e-15 * 14)
    assert abs(frechet_gaussians(m1, c1, m1, c1)) < 1e-10
    assert abs(frechet_gaussians(m2, torch.tensor(c2), m2, c2)) < 1e-10


def test_frechet_distance_is_frechet_gaussians_of_the_fitted_gaussians():
    g = np.random.default_rng(7)
    a = g.standard_normal((300, 4)) @ rotation(4, 3) * np.array([0.5, 1.0, 2.0, 1.5]) + 0.2
    b = g.standard_normal((250, 4)) * 1.3
    expected = fd_scipy(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))  # unbiased (N - 1)
    assert frechet_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, rel=1e-9)
    # F = 1: (mean difference)^2 + (difference of the unbiased stds)^2
    a1, b1 = a[:, :1], b[:, :1]
    expected1 = (a1.mean() - b1.mean()) ** 2 + (a1.std(ddof=1) - b1.std(ddof=1)) ** 2
    assert frechet_distance(torch.tensor(a1), torch.tensor(b1)) == pytest.approx(expected1, rel=1e-10)
    for x, y in ((a, b[:, :3]), (a[:1], b), (a[:, 0], b[:, 0])):
        with pytest.raises(ValueError, match="frechet_distance needs"):
            frechet_distance(torch.tensor(x), torch.tensor(y))


# ---------------------------------------------------------------------------------------------------------------
# component_frechet

SEPARATED = GaussianMixture([0.4, 0.6], [[-5.0, 0.0], [5.0, 0.0]], [0.5, 1.0])  # 10 apart: posteriors ~hard


def exact_floor(target: GaussianMixture, n: int) -> float:
    """E[component_frechet] of n exact samples, to first order in 1/n_k (n_k = w_k n samples in component k).

    The fitted mean adds ``E|mean - mu_k|^2 = d s_k^2 / n_k``. The covariance term is ``sum_i (sqrt(l_i) - s_k)^2``
    over the eigenvalues l_i of the fitted covariance C, ~ ``|C - s_k^2 I|_F^2 / (4 s_k^2)``, whose mean is
    ``(d * 2 s_k^4 + d (d - 1) s_k^4) / n_k / (4 s_k^2) = d (d + 1) s_k^2 / (4 n_k)``. Weighted by w_k:
    ``sum_k s_k^2 (d + d (d + 1) / 4) / n``."""
    d = target.dim
    return float(sum(s * s for s in target.stds)) * (d + d * (d + 1) / 4) / n


def test_component_frechet_is_the_posterior_weighted_fit():
    """Overlapping components, so every sample is shared: against the exact posterior computed here (scipy's
    normal log-densities), numpy's weighted mean and reliability-weighted unbiased covariance
    (``np.cov(aweights=r_k)``: divisor ``V1 - V2 / V1``), and the scipy Fréchet formula."""
    target = mix2d3()
    x = mix2d3(stds=(0.6, 0.9), shift=0.4).sample(500, gen(8), dtype=F64).numpy()
    log_joint = np.stack([math.log(w) + stats.multivariate_normal(m, s * s * np.eye(3)).logpdf(x)
                          for w, m, s in zip(*params(target))], 1)
    r = np.exp(log_joint - scipy.special.logsumexp(log_joint, axis=1, keepdims=True))
    assert r.min() < 0.05 and (r[:, 0] * r[:, 1]).max() > 0.2  # the soft weights matter here
    expected = sum(w * fd_scipy(np.average(x, axis=0, weights=r[:, k]), np.cov(x, rowvar=False, aweights=r[:, k]),
                                m, s * s * np.eye(3))
                   for k, (w, m, s) in enumerate(zip(*params(target))))
    assert component_frechet(torch.tensor(x), target) == pytest.approx(expected, rel=1e-9)


def test_component_frechet_of_exact_samples_is_its_floor():
    """Mean over 20 draws of n=4000 against exact_floor. One draw's value is a sum of scaled chi-squares (mean term
    chi2_d, covariance term ~chi2_{d(d+1)/2} / 2): per component a relative sd of sqrt(2d + 3/2) / 3.5 = 0.67, and
    0.55 for the sum of the two here (0.52 measured); the mean of 20 has relative sd 0.123, so +-4 sd is +-49%
    (less for the skewed weights below)."""
    n = 4000
    values = [component_frechet(SEPARATED.sample(n, gen(200 + i), dtype=F64), SEPARATED) for i in range(20)]
    floor = exact_floor(SEPARATED, n)
    assert np.mean(values) == pytest.approx(floor, rel=0.49)
    # the weights of the mode do not enter (mode_tv's job): exact components in other proportions are as close
    other = GaussianMixture([0.1, 0.9], SEPARATED.means, SEPARATED.stds)
    skewed = np.mean([component_frechet(other.sample(n, gen(300 + i), dtype=F64), SEPARATED) for i in range(20)])
    # component 0 now has n_k = 0.1 n instead of 0.4 n: its term is 4x larger, component 1's 2/3 as large
    skewed_floor = (SEPARATED.stds[0] ** 2 * 0.4 / 0.1 + SEPARATED.stds[1] ** 2 * 0.6 / 0.9) * (2 + 1.5) / n
    assert skewed == pytest.approx(skewed_floor, rel=0.49)


def test_component_frechet_of_scaled_components_is_closed_form():
    """Samples ``mu_k + c (x - mu_k)`` of each component are N(mu_k, c^2 s_k^2 I): Fréchet distance d s_k^2 (c-1)^2
    from N(mu_k, s_k^2 I), so the score is ``sum_k w_k d s_k^2 (c - 1)^2``. The fitted covariance's trace error e
    (relative variance 2d/n_k) moves each term by ``(c-1) c s_k^2 e`` to first order: sd
    ``sqrt(sum_k (w_k (c-1) c s_k^2)^2 2 d / n_k)``; the floor (times c^2) adds a positive bias."""
    n, c, d = 20000, 1.2, 2
    x, k = SEPARATED.sample(n, gen(9), dtype=F64, return_components=True)
    mu = torch.as_tensor(SEPARATED.means)[k]
    got = component_frechet(mu + c * (x - mu), SEPARATED)
    w, s = SEPARATED.weights, SEPARATED.stds
    exact = float(sum(w * d * s**2 * (c - 1) ** 2))
    sd = math.sqrt(sum((w * (c - 1) * c * s**2) ** 2 * 2 * d / (w * n)))
    bias = c * c * exact_floor(SEPARATED, n)
    assert abs(got - exact - bias) < 4 * sd + bias, (got, exact, sd, bias)
    # a 20% scale error stands out from the exact samples' floor
    assert got > 10 * exact_floor(SEPARATED, n)


def test_component_frechet_of_a_missed_mode_is_inf():
    x = SEPARATED.sample(1000, gen(10), y=0, dtype=F64)  # component 0 only
    assert component_frechet(x, SEPARATED) == math.inf
    # one sample's worth of mass is not enough for a covariance either
    assert component_frechet(torch.cat([x, torch.tensor([[5.0, 0.0]], dtype=F64)]), SEPARATED) == math.inf
    with pytest.raises(ValueError, match="component_frechet needs samples of shape"):
        component_frechet(x[:, :1], SEPARATED)


# ---------------------------------------------------------------------------------------------------------------
# mixture_quantiles, sliced_w2_to_mixture


def exact_quantile(weights, centers, stds, q: float) -> float:
    """The q-quantile of the 1-D mixture sum_k w_k N(c_k, s_k^2): brentq on its exact CDF (scipy.stats.norm)."""
    cdf = lambda t: float(np.sum(weights * stats.norm.cdf((t - centers) / stds))) - q  # noqa: E731
    return optimize.brentq(cdf, np.min(centers - 40 * stds), np.max(centers + 40 * stds), xtol=1e-14, rtol=1e-15)


def exact_quantiles(weights, centers, stds, levels: np.ndarray) -> np.ndarray:
    """exact_quantile at many levels at once: bisection on the exact CDF, 200 halvings of +-40 std (to rounding)."""
    lo = np.full(len(levels), np.min(centers - 40 * stds))
    hi = np.full(len(levels), np.max(centers + 40 * stds))
    for _ in range(200):
        mid = (lo + hi) / 2
        below = (weights * stats.norm.cdf((mid[:, None] - centers) / stds)).sum(1) < levels
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


def unit_directions(d: int, p: int, seed: int) -> torch.Tensor:
    u = torch.randn(d, p, generator=gen(seed), dtype=F64)
    return u / u.norm(dim=0, keepdim=True)


# down to 1e-12 (7 std out: the documented grid spans +-12 s_k); the upper tail stops at 1 - 1e-6, where rounding of
# the CDF near 1 (1e-16 / pdf) is still far below the Newton tolerance
QS = torch.tensor([1e-12, 1e-9, 1e-4, 0.01, 0.1, 0.3, 0.5, 0.77, 0.99, 1 - 1e-6], dtype=F64)


@pytest.mark.parametrize("newton_steps, tol", [(0, 1e-4), (1, 5e-8)])
def test_mixture_quantiles_against_brentq(newton_steps, tol):
    """Documented: interpolation error ~4e-5 s_k; tolerance 1e-4 * the smallest std. One Newton step from an error
    e0 leaves ``|F''/(2F')| e0^2``, about ``|z| / (2 s) * e0^2`` in a tail 7 std out: at most 3.5e-8 s for
    e0 = 1e-4 s (the docstring's "~1e-10 s_k" holds near the center only: 1.1e-8 s_min is measured at 1 - 1e-6)."""
    target = mix2d3()
    u = unit_directions(3, 4, 0)
    got = mixture_quantiles(target, u, QS, newton_steps=newton_steps)
    assert got.shape == (len(QS), 4) and got.dtype == F64
    for p in range(4):
        centers = target.means @ u[:, p].numpy()
        for i, q in enumerate(QS.tolist()):
            exact = exact_quantile(target.weights, centers, target.stds, q)
            assert abs(float(got[i, p]) - exact) < tol * target.stds.min(), (p, q, float(got[i, p]), exact)


def test_mixture_quantiles_are_monotone_in_q():
    target = GaussianMixture([0.2, 0.5, 0.3], [[-4.0, 0.0], [0.0, 1.0], [5.0, -1.0]], [0.3, 1.0, 0.6])
    u = unit_directions(2, 8, 1)
    q = torch.linspace(1e-5, 1 - 1e-5, 2001, dtype=F64)
    for steps in (0, 1):
        got = mixture_quantiles(target, u, q, newton_steps=steps)
        assert bool((got.diff(dim=0) > 0).all())


def test_sliced_w2_to_a_one_dimensional_gaussian_is_the_exact_w2():
    """In 1-D every direction is +-1 and both give the same value (the Gaussian is symmetric about its mean): the W2
    between the sorted samples and the exact quantiles mu + s ppf((i + 1/2) / n). The quantiles are documented to
    ~4e-5 s, which moves the root-mean-square by at most that much."""
    mu, s, n = 1.5, 0.8, 1000
    target = GaussianMixture([1.0], [[mu]], [s])
    x = 0.3 + 1.2 * torch.randn(n, 1, generator=gen(12), dtype=F64)
    q = mu + s * stats.norm.ppf((np.arange(n) + 0.5) / n)
    expected = math.sqrt(np.mean((np.sort(x[:, 0].numpy()) - q) ** 2))
    assert sliced_w2_to_mixture(x, target) == pytest.approx(expected, abs=1e-4 * s)
    assert sliced_w2_to_mixture(x, target, projections=3, seed=5) == pytest.approx(expected, abs=1e-4 * s)


def test_sliced_w2_to_a_mixture_projects_on_the_documented_directions():
    """d=3, two components, 4 projections: the documented directions (unit columns of a randn(d, P) drawn from
    ``seed``, as in sliced_w2) and the quantiles of each projected mixture by bisection on the exact CDF."""
    target, n, p = mix2d3(), 300, 4
    x = mix2d3(stds=(0.6, 1.0)).sample(n, gen(13), dtype=F64)
    u = unit_directions(3, p, 7)
    levels = (np.arange(n) + 0.5) / n
    sq = 0.0
    for j in range(p):
        centers = target.means @ u[:, j].numpy()
        q = exact_quantiles(target.weights, centers, target.stds, levels)
        sq += np.mean((np.sort((x @ u[:, j]).numpy()) - q) ** 2)
    expected = math.sqrt(sq / p)
    cache: dict = {}
    first = sliced_w2_to_mixture(x, target, projections=p, seed=7, _quantiles_cache=cache)
    assert first == pytest.approx(expected, abs=1e-4 * target.stds.min())
    assert len(cache) == 1 and sliced_w2_to_mixture(x, target, projections=p, seed=7, _quantiles_cache=cache) == first
    with pytest.raises(ValueError, match="sliced_w2_to_mixture: the samples contain NaN"):
        sliced_w2_to_mixture(torch.full((5, 3), math.nan), target)


def test_sliced_w2_to_mixture_sees_a_scale_error():
    """Samples ``mu + c (z - mu)`` of a 1-D N(mu, s^2) with exact z. Sorted, their residuals against the exact
    quantiles q_i are ``c (z_(i) - q_i) + (c - 1)(q_i - mu)``, so by the triangle inequality for the root mean
    square, ``|W(scaled) - |c - 1| rms(q - mu)| <= c W(exact)`` (plus the quantiles' documented ~4e-5 s error on
    each side): an exact bound, whatever the draw. rms(q - mu) is s(1 - O(log n / n)), so at large n the score
    is |c - 1| s up to the exact samples' own floor."""
    mu, s, c, n = -0.5, 2.0, 1.1, 20000
    target = GaussianMixture([1.0], [[mu]], [s])
    z = target.sample(n, gen(14), dtype=F64)
    exact_w = sliced_w2_to_mixture(z, target, projections=4)  # in 1-D every direction gives the same value
    scaled_w = sliced_w2_to_mixture(mu + c * (z - mu), target, projections=4)
    rms_q = s * math.sqrt(np.mean(stats.norm.ppf((np.arange(n) + 0.5) / n) ** 2))
    assert abs(scaled_w - (c - 1) * rms_q) <= c * exact_w + (1 + c) * 1e-4 * s
    # the exact samples' own floor: E W^2 = (1/n^2) sum_i p_i (1 - p_i) / phi(ppf(p_i))^2 s^2 (delta method)
    # = 3.57 s^2 / n at this n (3.55 measured over 300 draws, none above 5.2x that); 10x bounds W at
    # sqrt(35.7 / n) s = 0.042 s, against the error (c - 1) s = 0.1 s: then the bound above implies that the scale
    # error scores higher
    p = (np.arange(n) + 0.5) / n
    mean_sq = float(np.sum(p * (1 - p) / stats.norm.pdf(stats.norm.ppf(p)) ** 2)) / n**2
    assert mean_sq == pytest.approx(3.57 / n, rel=0.01)
    assert exact_w < math.sqrt(10 * mean_sq) * s
    assert scaled_w > exact_w
