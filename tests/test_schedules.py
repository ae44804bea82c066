"""Schedules: the forward process x_t = m(t) x0 + sigma(t) eps as small value objects.

Every expected value here is recomputed from the papers' definitions (betas -> abar by products,
Nichol & Dhariwal's f(t)/f(0), NCSN's geometric sigmas, Score-SDE's closed forms), never read back
from the code under test.
"""

import math

import numpy as np
import pytest

from scoregen.schedules import (
    ContinuousVE,
    ContinuousVP,
    DiscreteVE,
    DiscreteVP,
    m_sigma_from_log_snr,
    transition,
)

# ----------------------------------------------------------------------------- factories

DISCRETE = {
    "vp_linear_t1": lambda: DiscreteVP.linear(1000, 1e-4, 0.02, first_index=1),
    "vp_linear_t0": lambda: DiscreteVP.linear(1000, 1e-4, 0.02, first_index=0),
    "vp_cosine": lambda: DiscreteVP.cosine(1000),
    "vp_short": lambda: DiscreteVP.linear(20, 0.05, 0.3),
    "ve_geometric_i0": lambda: DiscreteVE.geometric(1.0, 0.01, 10, first_index=0),
    "ve_geometric_i1": lambda: DiscreteVE.geometric(50.0, 0.01, 232, first_index=1),
}
CONTINUOUS = {
    "cvp": lambda: ContinuousVP(0.1, 20.0),
    "cve": lambda: ContinuousVE(0.01, 50.0),
}
ALL = {**DISCRETE, **CONTINUOUS}


def _params(d):
    return pytest.mark.parametrize("make", list(d.values()), ids=list(d))


def _linear_betas(T=1000, b0=1e-4, b1=0.02):
    return np.array([b0 + (b1 - b0) * i / (T - 1) for i in range(T)], dtype=np.float64)


def _abar_by_products(betas):
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return np.array(out)


def _cosine_f(T, s=0.008):
    t = np.arange(T + 1, dtype=np.float64)
    return np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2


def _lsnr_of_labels(sch):
    return np.array([sch.log_snr(float(t)) for t in sch.labels])


# ----------------------------------------------------------------------------- values of the levels


@pytest.mark.parametrize("first_index", [0, 1])
def test_vp_linear_abar_is_product_of_alphas(first_index):
    sch = DiscreteVP.linear(1000, 1e-4, 0.02, first_index=first_index)
    betas = _linear_betas()
    abar = _abar_by_products(betas)
    labels = np.arange(1000) + first_index
    np.testing.assert_allclose(sch.beta, betas, rtol=1e-12)
    np.testing.assert_allclose(sch.abar, abar, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(sch.m(labels)) ** 2, abar, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(sch.sigma(labels)) ** 2, 1 - abar, rtol=1e-9)
    # The cleanest label's level is one DDPM step from the data: m^2 = 1 - beta_1.
    assert sch.m(float(first_index)) ** 2 == pytest.approx(1 - 1e-4, rel=1e-12)
    # beta_tilde (Ho et al. eq. 7), computed from its definition
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    np.testing.assert_allclose(sch.beta_tilde, betas * (1 - abar_prev) / (1 - abar), rtol=1e-9)


def test_vp_cosine_matches_nichol_dhariwal_where_unclipped():
    T, max_beta = 1000, 0.999
    sch = DiscreteVP.cosine(T, s=0.008, max_beta=max_beta)
    f = _cosine_f(T)
    raw_beta = 1 - f[1:] / f[:-1]
    unclipped = np.cumprod(raw_beta < max_beta).astype(bool)  # labels t whose betas 1..t are all unclipped
    assert unclipped.sum() > 900
    t = np.arange(1, T + 1)[unclipped]
    expected = f[t] / f[0]
    np.testing.assert_allclose(sch.abar[unclipped], expected, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(sch.m(t.astype(float))) ** 2, expected, rtol=1e-8)
    # and the clipping itself: no beta above max_beta
    assert sch.beta.max() <= max_beta
    np.testing.assert_allclose(sch.beta, np.minimum(raw_beta, max_beta), rtol=1e-12)


@pytest.mark.parametrize("first_index", [0, 1])
def test_ve_geometric_levels(first_index):
    smax, smin, L = 50.0, 0.01, 232
    sch = DiscreteVE.geometric(smax, smin, L, first_index=first_index)
    expected = np.array([smax * (smin / smax) ** (i / (L - 1)) for i in range(L)])
    labels = np.arange(L) + first_index
    np.testing.assert_allclose(sch.sigma(labels.astype(float)), expected, rtol=1e-10)
    np.testing.assert_array_equal(sch.m(labels.astype(float)), np.ones(L))
    # NCSN convention: the first index is sigma_max, the last sigma_min
    assert sch.sigma(float(first_index)) == pytest.approx(smax, rel=1e-12)
    assert sch.sigma(float(first_index + L - 1)) == pytest.approx(smin, rel=1e-12)
    # fractional labels interpolate log sigma: exact for a geometric sequence
    frac = labels[:-1] + 0.3
    expected_frac = smax * (smin / smax) ** ((frac - first_index) / (L - 1))
    np.testing.assert_allclose(sch.sigma(frac), expected_frac, rtol=1e-9)


def test_continuous_vp_closed_form():
    bmin, bmax = 0.1, 20.0
    sch = ContinuousVP(bmin, bmax)
    t = np.linspace(1e-3, 1.0, 37)
    abar = np.exp(-bmin * t - 0.5 * (bmax - bmin) * t**2)
    np.testing.assert_allclose(np.asarray(sch.m(t)) ** 2, abar, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(sch.sigma(t)) ** 2, 1 - abar, rtol=1e-10)


def test_continuous_ve_closed_form():
    smin, smax = 0.01, 50.0
    sch = ContinuousVE(smin, smax)
    t = np.linspace(0.0, 1.0, 41)
    np.testing.assert_allclose(sch.sigma(t), smin * (smax / smin) ** t, rtol=1e-10)
    np.testing.assert_array_equal(sch.m(t), np.ones_like(t))


@_params(ALL)
def test_family_invariant(make):
    sch = make()
    if sch.times is not None:
        t = np.concatenate([sch.labels, sch.labels[:-1] + 0.37])
    else:
        t = np.linspace(sch.t_min, sch.t_max, 101)
    m, sigma = np.asarray(sch.m(t)), np.asarray(sch.sigma(t))
    assert np.all(np.isfinite(m)) and np.all(np.isfinite(sigma)) and np.all(sigma > 0)
    if sch.variance_preserving:
        np.testing.assert_allclose(m**2 + sigma**2, 1.0, rtol=1e-12)
    else:
        np.testing.assert_array_equal(m, 1.0)
    # log-SNR really is log(m^2 / sigma^2)
    np.testing.assert_allclose(np.asarray(sch.log_snr(t)), np.log(m**2 / sigma**2), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("lam", [-1000.0, -50.0, -3.0, 0.0, 2.5, 50.0, 1000.0])
def test_m_sigma_from_log_snr_stays_finite(lam):
    with np.errstate(over="ignore"):
        m_vp, s_vp = m_sigma_from_log_snr(lam, True)
        m_ve, s_ve = m_sigma_from_log_snr(np.array([lam]), False)
    assert isinstance(m_vp, float) and isinstance(s_vp, float)
    assert math.isfinite(m_vp) and math.isfinite(s_vp)
    assert m_vp**2 + s_vp**2 == pytest.approx(1.0, rel=1e-12)
    sig = 1 / (1 + math.exp(-lam)) if lam > -700 else 0.0  # sigmoid, computed the plain way where it can be
    assert m_vp**2 == pytest.approx(sig, rel=1e-12, abs=1e-300)
    assert m_ve[0] == 1.0
    if abs(lam) < 700:
        assert s_ve[0] == pytest.approx(math.exp(-lam / 2), rel=1e-12)


# ----------------------------------------------------------------------------- round trips


@_params(DISCRETE)
def test_discrete_round_trip_integer_labels(make):
    sch = make()
    labels = sch.labels
    assert np.array_equal(labels, np.arange(len(sch)) + sch.first_index)
    lam = sch.log_snr(labels)
    assert isinstance(lam, np.ndarray) and lam.shape == labels.shape
    np.testing.assert_allclose(sch.t_from_log_snr(lam), labels, rtol=0, atol=1e-9)
    for t in labels[:: max(1, len(labels) // 17)]:
        lam_t = sch.log_snr(float(t))
        assert isinstance(lam_t, float)
        back = sch.t_from_log_snr(lam_t)
        assert isinstance(back, float) and back == pytest.approx(t, abs=1e-9)
        assert sch.nearest_time(lam_t) == t


@_params(DISCRETE)
def test_discrete_round_trip_fractional_labels(make):
    sch = make()
    rng = np.random.default_rng(0)
    t = rng.uniform(sch.labels[0], sch.labels[-1], size=(7, 9))
    lam = sch.log_snr(t)
    assert lam.shape == (7, 9)
    np.testing.assert_allclose(sch.t_from_log_snr(lam), t, rtol=0, atol=1e-8)
    # and the other way: any log-SNR inside the trained range comes back unchanged
    lo, hi = lam.min(), lam.max()
    lam2 = np.linspace(lo, hi, 50)
    np.testing.assert_allclose(sch.log_snr(sch.t_from_log_snr(lam2)), lam2, rtol=0, atol=1e-9)
    # scalar path equals array path
    for i in range(0, 50, 7):
        assert sch.t_from_log_snr(float(lam2[i])) == pytest.approx(sch.t_from_log_snr(lam2)[i], abs=1e-12)
    # fractional labels lie strictly between the neighbouring labels' log-SNRs
    a = float(sch.labels[3])
    l0, l1, lf = sch.log_snr(a), sch.log_snr(a + 1), sch.log_snr(a + 0.5)
    assert min(l0, l1) < lf < max(l0, l1)
    assert lf == pytest.approx(0.5 * (l0 + l1), rel=1e-12)


@_params(CONTINUOUS)
def test_continuous_round_trip(make):
    sch = make()
    t = np.linspace(sch.t_min, sch.t_max, 200).reshape(20, 10)
    lam = sch.log_snr(t)
    assert lam.shape == (20, 10)
    np.testing.assert_allclose(sch.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    for ti in [sch.t_min, 0.25, 0.5, 0.9, 1.0]:
        lam_i = sch.log_snr(ti)
        assert isinstance(lam_i, float)
        assert sch.t_from_log_snr(lam_i) == pytest.approx(ti, rel=1e-9, abs=1e-9)
        assert sch.nearest_time(lam_i) == pytest.approx(ti, rel=1e-9, abs=1e-9)


@_params(ALL)
def test_t_from_log_snr_clamps_to_trained_range(make):
    sch = make()
    lam = np.asarray(sch.log_snr(sch.grid(2)))  # noisiest, cleanest
    noisiest_t, cleanest_t = sch.t_from_log_snr(lam[0]), sch.t_from_log_snr(lam[1])
    assert sch.t_from_log_snr(lam[0] - 5.0) == pytest.approx(noisiest_t if sch.times is not None else sch.t_max)
    if sch.times is not None:
        assert sch.t_from_log_snr(lam[1] + 5.0) == pytest.approx(cleanest_t)


@pytest.mark.parametrize(
    "pair",
    [
        (lambda i: DiscreteVP.linear(first_index=i)),
        (lambda i: DiscreteVP.cosine(first_index=i)),
        (lambda i: DiscreteVE.geometric(1.0, 0.01, 10, first_index=i)),
    ],
    ids=["vp_linear", "vp_cosine", "ve_geometric"],
)
def test_first_index_shifts_labels_by_one(pair):
    s0, s1 = pair(0), pair(1)
    n = len(s0)
    np.testing.assert_array_equal(s0.labels, np.arange(n))
    np.testing.assert_array_equal(s1.labels, np.arange(n) + 1)
    t0 = np.arange(n, dtype=float)
    np.testing.assert_array_equal(s0.log_snr(t0), s1.log_snr(t0 + 1))
    np.testing.assert_allclose(s0.log_snr(t0[:-1] + 0.4), s1.log_snr(t0[:-1] + 1.4), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(s0.grid(), s1.grid() - 1)
    np.testing.assert_array_equal(s0.grid(7), s1.grid(7) - 1)
    lam = np.linspace(-12, 12, 41)
    np.testing.assert_array_equal(s0.nearest_time(lam), s1.nearest_time(lam) - 1)
    np.testing.assert_allclose(s0.t_from_log_snr(lam), s1.t_from_log_snr(lam) - 1, atol=1e-12)
    # the label past the end of one convention is out of range, not silently clamped
    with pytest.raises(ValueError, match="range"):
        s0.log_snr(float(n))
    with pytest.raises(ValueError, match="range"):
        s1.log_snr(0.0)


# ----------------------------------------------------------------------------- nearest_time


@_params(DISCRETE)
def test_nearest_time_is_argmin_in_log_snr(make):
    sch = make()
    lsnr = _lsnr_of_labels(sch)
    lo, hi = lsnr.min(), lsnr.max()
    rng = np.random.default_rng(1)
    lam = np.concatenate([rng.uniform(lo - 2, hi + 2, 400), lsnr[::13], [-np.inf, np.inf, lo - 100, hi + 100]])
    brute = np.array([sch.labels[np.argmin(np.abs(lsnr - v))] if np.isfinite(v) else np.nan for v in lam])
    brute[lam == -np.inf] = sch.labels[np.argmin(lsnr)]
    brute[lam == np.inf] = sch.labels[np.argmax(lsnr)]
    arr = sch.nearest_time(lam)
    np.testing.assert_array_equal(arr, brute)
    scal = np.array([sch.nearest_time(float(v)) for v in lam])
    np.testing.assert_array_equal(scal, brute)
    assert all(isinstance(sch.nearest_time(float(v)), float) for v in lam[:5])
    # only trained labels come back
    assert set(arr.tolist()) <= set(sch.labels.tolist())


def test_nearest_time_between_two_labels():
    sch = DiscreteVP.linear()
    l300, l301 = sch.log_snr(300.0), sch.log_snr(301.0)
    assert sch.nearest_time(l300 + 0.3 * (l301 - l300)) == 300.0
    assert sch.nearest_time(l300 + 0.7 * (l301 - l300)) == 301.0
    assert list(sch.nearest_time(np.array([l300 + 0.3 * (l301 - l300), l300 + 0.7 * (l301 - l300)]))) == [300.0, 301.0]


# ----------------------------------------------------------------------------- grids and levels


@_params(DISCRETE)
@pytest.mark.parametrize("steps", [2, 3, 7, "half", "all_but_one", "all", None])
def test_discrete_grid(make, steps):
    sch = make()
    n = len(sch)
    steps = {"half": n // 2, "all_but_one": n - 1, "all": n}.get(steps, steps)
    g = sch.grid(steps)
    k = n if steps is None else steps
    assert len(g) == k
    lsnr = _lsnr_of_labels(sch)
    order = sch.labels[np.argsort(lsnr)]  # noisiest (lowest log-SNR) first, computed independently
    pos = np.array([int(np.flatnonzero(order == t)[0]) for t in g])
    assert pos[0] == 0 and pos[-1] == n - 1  # both ends
    d = np.diff(pos)
    assert np.all(d > 0)  # a subsequence, noisiest first
    assert d.max() - d.min() <= 1  # evenly spaced
    np.testing.assert_allclose(pos, np.linspace(0, n - 1, k), atol=0.5 + 1e-9)
    # noisiest first: log-SNR strictly increasing along the grid
    assert np.all(np.diff(sch.log_snr(g)) > 0)
    m, sigma = sch.levels(steps)
    np.testing.assert_allclose(m, sch.m(g), rtol=1e-12)
    np.testing.assert_allclose(sigma, sch.sigma(g), rtol=1e-12)
    assert np.all(np.diff(sigma / m) < 0)


def test_discrete_grid_one_step_is_noisiest_level():
    sch = DiscreteVP.linear()
    np.testing.assert_array_equal(sch.grid(1), [1000.0])
    np.testing.assert_array_equal(DiscreteVE.geometric().grid(1), [0.0])


def test_ve_levels_are_the_sigmas():
    sigmas = np.array([5.0, 2.0, 0.7, 0.1])
    sch = DiscreteVE(sigmas)
    m, sigma = sch.levels()
    np.testing.assert_allclose(sigma, sigmas, rtol=1e-12)
    np.testing.assert_array_equal(m, np.ones(4))
    np.testing.assert_array_equal(sch.grid(), [0.0, 1.0, 2.0, 3.0])


@_params(CONTINUOUS)
@pytest.mark.parametrize("steps", [1, 2, 10, None])
def test_continuous_grid(make, steps):
    sch = make()
    g = sch.grid(steps)
    k = 1000 if steps is None else steps
    assert len(g) == k
    assert g[0] == sch.t_max
    if k > 1:
        assert g[-1] == pytest.approx(sch.t_min)
        np.testing.assert_allclose(np.diff(g), (sch.t_min - sch.t_max) / (k - 1), rtol=1e-9)
    m, sigma = sch.levels(steps)
    assert np.all(np.diff(sigma / m) < 0) if k > 1 else True
    np.testing.assert_allclose(sigma, sch.sigma(g), rtol=1e-12)


# ----------------------------------------------------------------------------- transition()


def test_transition_consecutive_ddpm_steps_are_alpha_beta_beta_tilde():
    sch = DiscreteVP.linear()
    betas = _linear_betas()
    abar = _abar_by_products(betas)
    for t in [2, 3, 10, 500, 999, 1000]:
        a, b, bt = transition(sch.m(float(t)), sch.sigma(float(t)), sch.m(float(t - 1)), sch.sigma(float(t - 1)))
        assert a == pytest.approx(1 - betas[t - 1], rel=1e-10)
        assert b == pytest.approx(betas[t - 1], rel=1e-7)
        assert bt == pytest.approx(betas[t - 1] * (1 - abar[t - 2]) / (1 - abar[t - 1]), rel=1e-7)


def test_transition_ve_pair():
    a, b, bt = transition(1.0, 3.0, 1.0, 0.5)
    assert a == 1.0
    assert b == pytest.approx(9.0 - 0.25, rel=1e-14)
    assert bt == pytest.approx((9.0 - 0.25) * 0.25 / 9.0, rel=1e-14)


@pytest.mark.parametrize(
    "levels",
    [
        (0.9, math.sqrt(1 - 0.81), 0.5, math.sqrt(0.75)),  # VP, s noisier than t
        (1.0, 0.5, 1.0, 3.0),  # VE, s noisier than t
        (1.0, 2.0, 1.0, 2.0),  # the same level twice
        (0.6, 0.8, 0.6, 0.8),
    ],
    ids=["vp_reversed", "ve_reversed", "ve_equal", "vp_equal"],
)
def test_transition_rejects_grids_not_noisiest_first(levels):
    with pytest.raises(ValueError, match="noisiest"):
        transition(*levels)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "betas, match",
    [
        ([0.1, 1.0], r"\(0, 1\)"),
        ([0.1, 1.5], r"\(0, 1\)"),
        ([0.0, 0.1], r"\(0, 1\)"),
        ([0.1, -0.01], r"\(0, 1\)"),
        ([0.1, float("nan")], "NaN"),
        ([0.1, float("inf")], "finite|NaN|inf"),
        ([], "non-empty"),
        ([[0.1, 0.2]], "1-D"),
    ],
)
def test_discrete_vp_rejects_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVP(betas)


@pytest.mark.parametrize(
    "sigmas, match",
    [
        ([1.0, 1.0, 0.5], "decreasing"),
        ([0.5, 1.0], "decreasing"),
        ([1.0, 0.5, 0.0], "positive"),
        ([1.0, -0.5], "positive"),
        ([1.0, float("nan")], "NaN"),
        ([], "non-empty"),
    ],
)
def test_discrete_ve_rejects_bad_sigmas(sigmas, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVE(sigmas)


@pytest.mark.parametrize(
    "ctor",
    [
        lambda: DiscreteVE.geometric(0.01, 1.0, 10),
        lambda: DiscreteVE.geometric(1.0, 0.0, 10),
        lambda: DiscreteVE.geometric(1.0, 0.01, 1),
        lambda: ContinuousVP(0.0, 20.0),
        lambda: ContinuousVP(20.0, 0.1),
        lambda: ContinuousVE(50.0, 0.01),
        lambda: ContinuousVE(0.0, 50.0),
    ],
    ids=["geom_reversed", "geom_zero", "geom_L1", "cvp_zero", "cvp_reversed", "cve_reversed", "cve_zero"],
)
def test_constructors_reject_bad_parameters(ctor):
    with pytest.raises(ValueError):
        ctor()


@pytest.mark.parametrize(
    "make, t",
    [
        (DISCRETE["vp_linear_t1"], 0.0),
        (DISCRETE["vp_linear_t1"], 1000.5),
        (DISCRETE["vp_linear_t1"], np.array([5.0, 1001.0])),
        (DISCRETE["vp_linear_t0"], 1000.0),
        (DISCRETE["vp_linear_t0"], -0.5),
        (DISCRETE["ve_geometric_i0"], -1.0),
        (DISCRETE["ve_geometric_i0"], 10.0),
        (CONTINUOUS["cvp"], -0.1),
        (CONTINUOUS["cvp"], 1.5),
        (CONTINUOUS["cve"], np.array([0.5, 2.0])),
    ],
)
@pytest.mark.parametrize("method", ["log_snr", "m", "sigma"])
def test_out_of_range_time_label(make, t, method):
    sch = make()
    with pytest.raises(ValueError, match="range|outside"):
        getattr(sch, method)(t)


@pytest.mark.parametrize("make", [DISCRETE["vp_linear_t1"], DISCRETE["ve_geometric_i0"], CONTINUOUS["cvp"]],
                         ids=["vp_linear_t1", "ve_geometric_i0", "cvp"])
def test_nan_time_label_is_rejected(make):
    """A NaN label is no trained level: it must not flow on silently as a NaN log-SNR."""
    sch = make()
    with pytest.raises(ValueError):
        sch.log_snr(float("nan"))
    with pytest.raises(ValueError):
        sch.log_snr(np.array([0.5, float("nan")]) + (sch.labels[0] if sch.times is not None else 0.0))


@_params(DISCRETE)
@pytest.mark.parametrize("bad", [0, -1, "too_many"])
def test_discrete_grid_steps_out_of_range(make, bad):
    sch = make()
    steps = len(sch) + 1 if bad == "too_many" else bad
    with pytest.raises(ValueError, match="steps"):
        sch.grid(steps)


@_params(CONTINUOUS)
def test_continuous_grid_steps_out_of_range(make):
    with pytest.raises(ValueError, match="steps"):
        make().grid(0)
