"""The design brief's identities, each checked against an independent computation.

(a) closed-form q(x_t | x_0) against the step-by-step forward chain (exact recursion and Monte Carlo),
(b) the posterior q(x_s | x_t, x_0) of ``transition()`` against Bayes' rule on the joint Gaussian,
(c) DDPM's variational-bound weight against the Gaussian KL computed directly,
(d) score = -eps / sqrt(1 - abar_t) for a network model at a trained level,
(e) eps is the same in VE and VP coordinates at matched SNR; the mixture score is grad log p.
"""

import math

import numpy as np
import pytest
import torch

from scoregen.models import NetworkScoreModel
from scoregen.schedules import DiscreteVE, DiscreteVP, transition
from scoregen.targets import GaussianMixture

SCHEDULES = {
    "linear": lambda: DiscreteVP.linear(1000, 1e-4, 0.02),
    "cosine": lambda: DiscreteVP.cosine(1000),
    "short": lambda: DiscreteVP.linear(20, 0.05, 0.3),
}


def _betas(sch):
    """The betas the schedule was built from, recomputed independently of its abar arrays."""
    return np.asarray(sch.beta, dtype=np.float64)


# ----------------------------------------------------------------------------- (a) forward chain


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_closed_form_marginal_equals_forward_chain_recursion(name):
    """x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps, from x_0: mean coefficient c_t, variance v_t."""
    sch = SCHEDULES[name]()
    c, v = 1.0, 0.0
    coef, var = [], []
    for b in _betas(sch):
        c = math.sqrt(1.0 - b) * c
        v = (1.0 - b) * v + b
        coef.append(c)
        var.append(v)
    t = sch.labels
    np.testing.assert_allclose(sch.m(t), coef, rtol=1e-9)
    np.testing.assert_allclose(sch.sigma(t), np.sqrt(var), rtol=1e-8)
    np.testing.assert_allclose(np.sqrt(sch.abar), coef, rtol=1e-9)


@pytest.mark.parametrize("name, n", [("short", 40000), ("linear", 8000)])
def test_closed_form_marginal_monte_carlo(name, n):
    sch = SCHEDULES[name]()
    betas = _betas(sch)
    T = len(betas)
    checkpoints = sorted({1, 2, T // 4, T // 2, T})
    x0 = torch.tensor([-1.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(1234)
    x = x0.expand(n, -1).clone()
    for t in range(1, T + 1):
        b = float(betas[t - 1])
        x = math.sqrt(1 - b) * x + math.sqrt(b) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if t in checkpoints:
            m, sigma = sch.m(float(t)), sch.sigma(float(t))
            mean, var = x.mean(0), x.var(0)
            se_mean = sigma / math.sqrt(n)
            se_var = sigma**2 * math.sqrt(2.0 / (n - 1))
            assert torch.all((mean - m * x0).abs() < 5 * se_mean), (t, mean, m * x0)
            assert torch.all((var - sigma**2).abs() < 5 * se_var), (t, var, sigma**2)
            # no correlation between coordinates (isotropic noise)
            xc = (x - mean) / x.std(0)
            corr = (xc.T @ xc / (n - 1)).fill_diagonal_(0)
            assert corr.abs().max() < 5 / math.sqrt(n)


# ----------------------------------------------------------------------------- (b) Bayes posterior


def _condition(mean, cov, x_t, d):
    """Condition the joint N(mean, cov) of (x_s, x_t) (each of dim d) on x_t: generic linear algebra."""
    S11, S12, S22 = cov[:d, :d], cov[:d, d:], cov[d:, d:]
    K = np.linalg.solve(S22.T, S12.T).T  # S12 S22^{-1}
    mu = mean[:d] + K @ (x_t - mean[d:])
    var = S11 - K @ S12.T
    return mu, var


def _joint_chain(x0, m_s, sigma_s, gain, noise_var):
    """x_s = m_s x0 + sigma_s e1,  x_t = gain * x_s + sqrt(noise_var) e2 (e1, e2 ~ N(0, I) independent)."""
    d = len(x0)
    I = np.eye(d)
    mean = np.concatenate([m_s * x0, gain * m_s * x0])
    cov = np.block([[sigma_s**2 * I, gain * sigma_s**2 * I], [gain * sigma_s**2 * I, (gain**2 * sigma_s**2 + noise_var) * I]])
    return mean, cov


def _vp_pair(sch, s, t):
    """Gain and noise variance of the chain from label s to label t, multiplied out step by step from the betas."""
    gain, nv = 1.0, 0.0
    for k in range(s + 1, t + 1):
        b = sch.beta[k - sch.first_index]
        gain *= math.sqrt(1 - b)
        nv = (1 - b) * nv + b
    return gain, nv


def _check_posterior(m_t, sigma_t, m_s, sigma_s, mean, cov, x0, x_t):
    d = len(x0)
    mu_bayes, var_bayes = _condition(mean, cov, x_t, d)
    alpha_ts, beta_ts, beta_tilde = transition(m_t, sigma_t, m_s, sigma_s)
    eps = (x_t - m_t * x0) / sigma_t
    mu = (x_t - beta_ts / sigma_t * eps) / math.sqrt(alpha_ts)
    np.testing.assert_allclose(mu, mu_bayes, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(var_bayes, beta_tilde * np.eye(d), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("s, t", [(1, 2), (9, 10), (499, 500), (999, 1000), (100, 400), (3, 900)])
def test_vp_posterior_is_bayes(name, s, t):
    sch = SCHEDULES[name]()
    rng = np.random.default_rng(s * 1000 + t)
    x0 = rng.normal(size=3)
    gain, nv = _vp_pair(sch, s, t)
    m_s, sigma_s = sch.m(float(s)), sch.sigma(float(s))
    m_t, sigma_t = sch.m(float(t)), sch.sigma(float(t))
    x_t = m_t * x0 + sigma_t * rng.normal(size=3)
    mean, cov = _joint_chain(x0, m_s, sigma_s, gain, nv)
    _check_posterior(m_t, sigma_t, m_s, sigma_s, mean, cov, x0, x_t)
    if t == s + 1:  # consecutive DDPM steps: exactly alpha_t, beta_t, beta_tilde_t (Ho et al. eq. 7)
        a, b, bt = transition(m_t, sigma_t, m_s, sigma_s)
        beta = sch.beta[t - 1]
        abar = np.cumprod(1 - sch.beta)
        abar_prev = abar[t - 2] if t >= 2 else 1.0
        assert a == pytest.approx(1 - beta, rel=1e-9)
        assert b == pytest.approx(beta, rel=1e-6)
        assert bt == pytest.approx(beta * (1 - abar_prev) / (1 - abar[t - 1]), rel=1e-6)


@pytest.mark.parametrize("i_t, i_s", [(0, 1), (3, 4), (0, 9), (2, 7)])
def test_ve_posterior_is_bayes(i_t, i_s):
    """NCSN levels: x_s = x0 + sigma_s e1, x_t = x_s + sqrt(sigma_t^2 - sigma_s^2) e2."""
    sch = DiscreteVE.geometric(10.0, 0.01, 10)
    sig_t, sig_s = sch.sigmas[i_t], sch.sigmas[i_s]
    rng = np.random.default_rng(10 * i_t + i_s)
    x0 = rng.normal(size=2)
    x_t = x0 + sig_t * rng.normal(size=2)
    mean, cov = _joint_chain(x0, 1.0, sig_s, 1.0, sig_t**2 - sig_s**2)
    _check_posterior(1.0, sig_t, 1.0, sig_s, mean, cov, x0, x_t)


def test_mixed_family_pair_is_bayes():
    """A VP level followed by a noisier VE-scaled level: transition() is family-agnostic."""
    m_s, sigma_s = 0.8, 0.6
    gain, nv = 0.5, 1.3
    m_t, sigma_t = gain * m_s, math.sqrt(gain**2 * sigma_s**2 + nv)
    rng = np.random.default_rng(7)
    x0 = rng.normal(size=4)
    x_t = m_t * x0 + sigma_t * rng.normal(size=4)
    mean, cov = _joint_chain(x0, m_s, sigma_s, gain, nv)
    _check_posterior(m_t, sigma_t, m_s, sigma_s, mean, cov, x0, x_t)


# ----------------------------------------------------------------------------- (c) the VLB weight


def _gauss_kl(mu0, S0, mu1, S1):
    """KL(N(mu0, S0) || N(mu1, S1)), the general multivariate formula."""
    k = len(mu0)
    S1inv = np.linalg.inv(S1)
    dmu = mu1 - mu0
    _, ld0 = np.linalg.slogdet(S0)
    _, ld1 = np.linalg.slogdet(S1)
    return 0.5 * (np.trace(S1inv @ S0) + dmu @ S1inv @ dmu - k + ld1 - ld0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [2, 5, 100, 500, 999, 1000])
def test_vlb_weight_is_the_kl(name, t):
    sch = SCHEDULES[name]()
    d = 3
    rng = np.random.default_rng(t)
    x0 = rng.normal(size=d)
    eps = rng.normal(size=d)
    eps_theta = eps + 0.3 * rng.normal(size=d)
    m_t, sigma_t = sch.m(float(t)), sch.sigma(float(t))
    m_s, sigma_s = sch.m(float(t - 1)), sch.sigma(float(t - 1))
    x_t = m_t * x0 + sigma_t * eps
    # q(x_{t-1} | x_t, x0) by Bayes' rule on the joint Gaussian, built from beta_t alone
    beta = sch.beta[t - 1]
    mean, cov = _joint_chain(x0, m_s, sigma_s, math.sqrt(1 - beta), beta)
    mu_q, S_q = _condition(mean, cov, x_t, d)
    # p_theta(x_{t-1} | x_t): Ho et al. eq. 11 with eps_theta, variance beta_tilde (the same as q's)
    abar_t = np.prod(1 - sch.beta[:t])
    mu_p = (x_t - beta / math.sqrt(1 - abar_t) * eps_theta) / math.sqrt(1 - beta)
    kl = _gauss_kl(mu_q, S_q, mu_p, S_q)
    lhs = sch.vlb_weight[t - sch.first_index] * np.sum((eps - eps_theta) ** 2)
    assert lhs == pytest.approx(kl, rel=1e-6)
    assert kl > 0


def test_vlb_weight_is_infinite_at_the_decoder_term():
    sch = DiscreteVP.linear()
    assert np.isinf(sch.vlb_weight[0])
    assert np.all(np.isfinite(sch.vlb_weight[1:])) and np.all(sch.vlb_weight[1:] > 0)


# ----------------------------------------------------------------------------- (d) score from eps


def _known_eps(x, t):
    """A fixed, t-dependent function standing in for a trained eps network."""
    tt = t.to(x).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.sin(x) * (tt / 1000.0) + 0.3 * x - 0.1 * torch.cos(3 * x + tt / 100.0)


@pytest.mark.parametrize("t", [1, 2, 10, 250, 999, 1000])
def test_score_is_minus_eps_over_sqrt_one_minus_abar(t):
    sch = DiscreteVP.linear()
    seen = []

    def net(x, tt):
        seen.append(tt.clone())
        return _known_eps(x, tt)

    model = NetworkScoreModel(net, sch)
    abar_t = float(np.prod(1.0 - np.linspace(1e-4, 0.02, 1000)[:t]))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    s = model.score(x, math.sqrt(1 - abar_t), math.sqrt(abar_t))
    assert torch.all(seen[-1] == t)  # queried at a trained level: the network sees exactly that label
    expected = -_known_eps(x, torch.full((5,), float(t))) / math.sqrt(1 - abar_t)
    torch.testing.assert_close(s, expected, rtol=1e-9, atol=1e-12)
    # per-sample tensor levels give the same answer
    s_vec = model.score(x, torch.full((5,), math.sqrt(1 - abar_t), dtype=torch.float64),
                        torch.full((5,), math.sqrt(abar_t), dtype=torch.float64))
    torch.testing.assert_close(s_vec, expected, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- (e) coordinate invariance


def _mixture():
    return GaussianMixture(
        [0.2, 0.5, 0.3],
        [[-2.0, 0.5, 1.0], [1.0, 1.0, -1.0], [0.5, -2.0, 0.0]],
        [0.3, 0.8, 0.5],
        labels=[0, 1, 0],
    )


def _vp_of_ve(sigma_ve):
    k = math.sqrt(1.0 + sigma_ve**2)
    return 1.0 / k, sigma_ve / k, k  # m_VP, sigma_VP, the scale x_VE / x_VP


SIGMAS_VE = [0.02, 0.3, 1.0, 4.0, 30.0]


@pytest.mark.parametrize("sigma_ve", SIGMAS_VE)
def test_mixture_eps_is_coordinate_invariant(sigma_ve):
    gm = _mixture()
    g = torch.Generator().manual_seed(3)
    x0 = gm.sample(64, generator=g, dtype=torch.float64)
    x_ve = x0 + sigma_ve * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    m_vp, s_vp, k = _vp_of_ve(sigma_ve)
    x_vp = x_ve / k
    eps_ve = gm.eps(x_ve, sigma_ve, 1.0)
    eps_vp = gm.eps(x_vp, s_vp, m_vp)
    torch.testing.assert_close(eps_vp, eps_ve, rtol=1e-9, atol=1e-10)
    # and the scores differ by exactly the coordinate scale
    torch.testing.assert_close(gm.score(x_vp, s_vp, m_vp), k * gm.score(x_ve, sigma_ve, 1.0), rtol=1e-9, atol=1e-10)
    # x0_hat too is the same data-space estimate
    torch.testing.assert_close(gm.x0(x_vp, s_vp, m_vp), gm.x0(x_ve, sigma_ve, 1.0), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("sigma_ve", [0.02, 0.3, 1.0, 4.0, 30.0])
def test_network_model_eps_is_coordinate_invariant(sigma_ve):
    """A VP-trained network (fractional time) whose output is the mixture's exact eps at its own level
    answers VE queries with the mixture's VE eps."""
    gm = _mixture()
    sch = DiscreteVP.linear()
    seen = []

    def net(x, t):
        seen.append(t.clone())
        tn = t.double().numpy()
        m = torch.as_tensor(sch.m(tn), dtype=x.dtype)
        s = torch.as_tensor(sch.sigma(tn), dtype=x.dtype)
        return gm.eps(x, s, m)

    model = NetworkScoreModel(net, sch, time="fractional")
    g = torch.Generator().manual_seed(4)
    x0 = gm.sample(32, generator=g, dtype=torch.float64)
    x_ve = x0 + sigma_ve * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    m_vp, s_vp, k = _vp_of_ve(sigma_ve)
    expected = gm.eps(x_ve, sigma_ve, 1.0)
    got_ve = model.eps(x_ve, sigma_ve, 1.0)
    torch.testing.assert_close(got_ve, expected, rtol=1e-8, atol=1e-9)
    # the network was asked at the label whose log-SNR is the caller's
    assert sch.log_snr(float(seen[-1][0])) == pytest.approx(-2 * math.log(sigma_ve), rel=1e-9, abs=1e-9)
    got_vp = model.eps(x_ve / k, s_vp, m_vp)
    torch.testing.assert_close(got_vp, expected, rtol=1e-8, atol=1e-9)
    # per-sample levels, half VE half VP coordinates
    B = x_ve.shape[0]
    half = torch.arange(B) < B // 2
    sig = torch.where(half, torch.tensor(sigma_ve, dtype=torch.float64), torch.tensor(s_vp, dtype=torch.float64))
    mm = torch.where(half, torch.tensor(1.0, dtype=torch.float64), torch.tensor(m_vp, dtype=torch.float64))
    x_mixed = torch.where(half[:, None], x_ve, x_ve / k)
    torch.testing.assert_close(model.eps(x_mixed, sig, mm), expected, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("level", [(1.0, 0.0), (1.0, 0.4), (1.0, 3.0), (0.6, 0.8), (0.1, math.sqrt(0.99))],
                         ids=["clean", "ve_small", "ve_large", "vp_mid", "vp_noisy"])
def test_mixture_score_is_grad_log_prob(level):
    m, sigma = level
    gm = _mixture()
    g = torch.Generator().manual_seed(5)
    x = (m * gm.sample(50, generator=g, dtype=torch.float64)
         + sigma * torch.randn(50, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    lp = gm.log_prob(x, sigma, m)
    (grad,) = torch.autograd.grad(lp.sum(), x)
    torch.testing.assert_close(gm.score(x.detach(), sigma, m), grad, rtol=1e-8, atol=1e-10)
    # log_prob itself against the mixture density written out with numpy
    xn = x.detach().numpy()
    dens = np.zeros(len(xn))
    for w, mu, s in zip(gm.weights, gm.means, gm.stds):
        v = m**2 * s**2 + sigma**2
        dens += w * np.exp(-0.5 * ((xn - m * mu) ** 2).sum(-1) / v) / (2 * math.pi * v) ** 1.5
    np.testing.assert_allclose(lp.detach().numpy(), np.log(dens), rtol=1e-9)
