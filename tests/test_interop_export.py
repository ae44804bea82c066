"""Interop: score models exported as plain functions (score_fn, eps_fn, denoiser) and denoisers / eps
callables wrapped back into score models, checked against closed-form values on Gaussian mixtures,
under torch.autograd and torch.func (grad, vmap over x and over levels), and against k-diffusion's own
wrappers and samplers where k_diffusion can be imported."""

import math

import numpy as np
import pytest
import torch
from torch.func import grad, jacrev, vmap

import scoregen as sg
from scoregen.interop.export import denoiser, eps_fn, score_fn
from scoregen.interop.kdiffusion import DenoiserScoreModel, from_denoiser
from scoregen.networks.mlp import MLPScoreNet
from scoregen.samplers.ddim import ddim

F64 = torch.float64
WEIGHTS = [0.2, 0.5, 0.3]
MEANS = [[-2.0, 0.0], [1.5, 1.0], [0.0, -2.5]]
STDS = [0.3, 0.6, 0.45]
LABELS = [0, 1, 1]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mixture(**kwargs):
    return sg.GaussianMixture(WEIGHTS, MEANS, STDS, LABELS, **kwargs)


def exact_score(x, sigma, m=1.0, keep=None):
    """grad_x log sum_k w_k N(x; m mu_k, (m^2 s_k^2 + sigma^2) I), written out independently of scoregen.

    sigma, m: floats or (B,) tensors; keep: optional component mask (a class-conditional mixture)."""
    w, mu, s = torch.tensor(WEIGHTS, dtype=F64), torch.tensor(MEANS, dtype=F64), torch.tensor(STDS, dtype=F64)
    if keep is not None:
        w, mu, s = w[keep], mu[keep], s[keep]
    sigma = torch.as_tensor(sigma, dtype=F64).reshape(-1, 1)
    m = torch.as_tensor(m, dtype=F64).reshape(-1, 1)
    v = m**2 * s**2 + sigma**2  # (B, K)
    diff = x[:, None, :] - m[:, :, None] * mu[None]  # (B, K, d)
    logr = torch.log(w / w.sum()) - 0.5 * x.shape[1] * torch.log(2 * math.pi * v) - 0.5 * (diff**2).sum(-1) / v
    r = torch.softmax(logr, dim=-1)
    return -(r[:, :, None] * diff / v[:, :, None]).sum(1)


def _x(n=6, seed=0, scale=2.0):
    return scale * torch.randn(n, 2, generator=_gen(seed), dtype=F64)


# --------------------------------------------------------------------------- the VP time <-> (m, sigma) mapping, independently


LINEAR_BETAS = np.linspace(1e-4, 0.02, 1000)
LINEAR_ABAR = np.cumprod(1.0 - LINEAR_BETAS)


def linear_vp_level(t, first_index=1):
    """(m, sigma) of DDPM's linear schedule at label t; fractional labels interpolate log-SNR linearly."""
    lam = np.log(LINEAR_ABAR / (1.0 - LINEAR_ABAR))
    pos = np.asarray(t, dtype=np.float64) - first_index
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(lam) - 1)
    w = pos - lo
    lam_t = (1 - w) * lam[lo] + w * lam[hi]
    abar = 1.0 / (1.0 + np.exp(-lam_t))
    return np.sqrt(abar), np.sqrt(1.0 - abar)


def continuous_vp_level(t, beta_min=0.1, beta_max=20.0):
    abar = np.exp(-(beta_min * np.asarray(t) + 0.5 * (beta_max - beta_min) * np.asarray(t) ** 2))
    return np.sqrt(abar), np.sqrt(1.0 - abar)


def test_linear_vp_reference_is_ddpm():
    """The test's own level formula: integer labels are sqrt(abar_t) with abar_t = prod (1 - beta_s)."""
    m, sigma = linear_vp_level(np.array([1.0, 500.0, 1000.0]))
    np.testing.assert_allclose(m**2, [1 - 1e-4, LINEAR_ABAR[499], LINEAR_ABAR[-1]], rtol=1e-12)
    np.testing.assert_allclose(m**2 + sigma**2, 1.0, rtol=1e-14)


# --------------------------------------------------------------------------- score_fn: values


@pytest.mark.parametrize("kind", ["float", "0d", "per_sample"])
def test_score_fn_ve_matches_closed_form(kind):
    target = _mixture()
    x = _x()
    sigmas = torch.tensor([0.05, 0.3, 1.0, 2.5, 7.0, 40.0], dtype=F64)
    f = score_fn(target, "ve")
    if kind == "per_sample":
        torch.testing.assert_close(f(x, sigmas), exact_score(x, sigmas), rtol=1e-10, atol=1e-12)
    else:
        for s in sigmas.tolist():
            level = s if kind == "float" else torch.tensor(s, dtype=F64)
            torch.testing.assert_close(f(x, level), exact_score(x, s), rtol=1e-10, atol=1e-12)
    # an unbatched sample is answered like a batch of one
    torch.testing.assert_close(f(x[2], 0.7), exact_score(x[2:3], 0.7)[0], rtol=1e-10, atol=1e-12)
    assert f(x[2], torch.tensor(0.7, dtype=F64)).shape == (2,)


@pytest.mark.parametrize("labels", [[1.0, 10.0, 500.0, 999.0, 1000.0], [1.5, 10.25, 499.75, 999.5]])
def test_score_fn_vp_discrete_times(labels):
    """VP level = the schedule's own label t: x = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, fractional t too."""
    target = _mixture()  # its schedule: DDPM's linear T = 1000, labels 1..1000
    t = torch.tensor(labels, dtype=F64)
    x = _x(len(labels), seed=1)
    m, sigma = linear_vp_level(t.numpy())
    want = exact_score(x, torch.tensor(sigma), torch.tensor(m))
    f = score_fn(target, "vp")
    torch.testing.assert_close(f(x, t), want, rtol=1e-9, atol=1e-10)  # per-sample times
    for i, ti in enumerate(labels):  # one time for the batch, as a float
        torch.testing.assert_close(f(x[i : i + 1], ti), want[i : i + 1], rtol=1e-9, atol=1e-10)
    # the same numbers through the model's own interface at (m, sigma)
    torch.testing.assert_close(f(x, t), target.score(x, torch.tensor(sigma), torch.tensor(m)), rtol=1e-9, atol=1e-10)
    # and the eps export is -sigma * score
    torch.testing.assert_close(eps_fn(target, "vp")(x, t), -torch.tensor(sigma)[:, None] * want, rtol=1e-9, atol=1e-10)


def test_score_fn_vp_other_schedules():
    target = _mixture()
    x = _x(4, seed=2)
    t = torch.tensor([0.01, 0.2, 0.5, 1.0], dtype=F64)
    m, sigma = continuous_vp_level(t.numpy())
    f = score_fn(target, "vp", schedule=sg.ContinuousVP())
    torch.testing.assert_close(f(x, t), exact_score(x, torch.tensor(sigma), torch.tensor(m)), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(f(x, 0.2), exact_score(x, float(sigma[1]), float(m[1])), rtol=1e-9, atol=1e-10)
    # diffusers' 0-based labels: label 0 is DDPM's t = 1
    f0 = score_fn(target, "vp", schedule=sg.DiscreteVP.linear(first_index=0))
    torch.testing.assert_close(f0(x, 0.0), score_fn(target, "vp")(x, 1.0), rtol=1e-12, atol=1e-12)
    m1, s1 = linear_vp_level(1.0)
    torch.testing.assert_close(f0(x, 0.0), exact_score(x, float(s1), float(m1)), rtol=1e-9, atol=1e-10)


def test_score_fn_class_label():
    target = _mixture()
    x = _x(5, seed=3)
    y = torch.tensor([1] * 5)
    want = exact_score(x, 0.8, keep=torch.tensor([False, True, True]))
    torch.testing.assert_close(score_fn(target, "ve", y=y)(x, 0.8), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(score_fn(target, "ve")(x, 0.8, y=y), want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(score_fn(target, "ve")(x, 0.8), want)


def test_score_fn_errors():
    target = _mixture()
    x = _x(3)
    with pytest.raises(ValueError, match="unknown convention 'edm'.*'ve'.*'vp'"):
        score_fn(target, "edm")
    with pytest.raises(ValueError, match="unknown convention"):
        eps_fn(target, "VP")
    with pytest.raises(ValueError, match="variance exploding"):
        score_fn(target, "vp", schedule=sg.DiscreteVE.geometric())
    with pytest.raises(ValueError, match="only applies to convention='vp'"):
        score_fn(target, "ve", schedule=sg.ContinuousVP())
    f = score_fn(target, "vp")
    with pytest.raises(ValueError, match="outside"):
        f(x, 1001.0)  # beyond the trained labels
    with pytest.raises(ValueError, match="outside"):
        f(x, torch.tensor([1.0, 2.0, 0.5], dtype=F64))
    g = score_fn(target, "ve")
    with pytest.raises(ValueError, match=r"shape \(batch, \*\(2,\)\)"):
        g(torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="0-d"):
        g(torch.zeros(2), torch.ones(2))  # one unbatched sample takes one level
    with pytest.raises(ValueError, match=r"shape \(batch,\) = \(3,\)"):
        g(x, torch.ones(2))
    with pytest.raises(ValueError, match="sigma >= 0"):
        g(x, -1.0)
    with pytest.raises(TypeError, match="float or a tensor"):
        g(x, "1.0")


# --------------------------------------------------------------------------- torch.func and autograd


def _single_gaussian():
    return sg.GaussianMixture([1.0], [[0.5, -1.0]], [0.7])


@pytest.mark.parametrize("convention,level", [("ve", 0.9), ("vp", 300.0)])
def test_func_grad_exact_on_a_gaussian(convention, level):
    """For one Gaussian N(m mu, v I) the score is -(x - m mu) / v, its Jacobian -I / v: grad of <w, score> is -w / v."""
    model = _single_gaussian()
    if convention == "ve":
        m, sigma = 1.0, level
    else:
        m, sigma = (float(a) for a in linear_vp_level(level))
    v = m**2 * 0.7**2 + sigma**2
    f = score_fn(model, convention)
    x = _x(1, seed=4)[0]
    w = torch.tensor([0.3, -1.7], dtype=F64)
    torch.testing.assert_close(f(x, level), -(x - m * torch.tensor([0.5, -1.0], dtype=F64)) / v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad(lambda xi: (w * f(xi, level)).sum())(x), -w / v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jacrev(lambda xi: f(xi, level))(x), -torch.eye(2, dtype=F64) / v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("convention,level", [("ve", 0.6), ("vp", 120.5)])
def test_func_grad_matches_autograd_and_finite_differences(convention, level):
    f = score_fn(_mixture(), convention)
    x = _x(1, seed=5)[0]
    w = torch.tensor([1.0, -0.5], dtype=F64)
    phi = lambda xi: (w * f(xi, level)).sum() + (f(xi, level) ** 2).sum()  # noqa: E731
    g_func = grad(phi)(x)
    xr = x.clone().requires_grad_(True)
    g_auto = torch.autograd.grad(phi(xr), xr)[0]
    h = 1e-6
    g_fd = torch.stack([(phi(x + h * e) - phi(x - h * e)) / (2 * h) for e in torch.eye(2, dtype=F64)])
    torch.testing.assert_close(g_func, g_auto, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_func, g_fd, rtol=1e-6, atol=1e-6)
    # an exact score is a gradient: its Jacobian (the Hessian of log p) is symmetric
    J = jacrev(lambda xi: f(xi, level))(x)
    torch.testing.assert_close(J, J.T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("convention,levels", [("ve", [0.05, 0.4, 1.0, 3.0, 10.0, 0.7]), ("vp", [1.0, 50.0, 250.5, 600.0, 999.0, 10.0])])
def test_vmap_over_x_and_levels(convention, levels):
    target = _mixture()
    f = score_fn(target, convention)
    x = _x(6, seed=6)
    lv = torch.tensor(levels, dtype=F64)
    batched = f(x, lv)
    rows = torch.stack([f(x[i : i + 1], float(lv[i]))[0] for i in range(6)])  # the float fast path, row by row
    torch.testing.assert_close(batched, rows, rtol=1e-12, atol=1e-12)
    # vmap over unbatched samples with per-sample levels
    torch.testing.assert_close(vmap(f)(x, lv), batched, rtol=1e-12, atol=1e-12)
    # vmap over unbatched samples at one level
    torch.testing.assert_close(vmap(f, in_dims=(0, None))(x, levels[2]), f(x, levels[2]), rtol=1e-12, atol=1e-12)
    # vmap over levels only, the batch fixed: (levels, B, d)
    over_levels = vmap(lambda s: f(x, s))(lv)
    torch.testing.assert_close(over_levels, torch.stack([f(x, float(s)) for s in lv]), rtol=1e-12, atol=1e-12)
    # vmap over chunks of a batch, with per-sample levels in each chunk
    torch.testing.assert_close(vmap(f)(x.reshape(2, 3, 2), lv.reshape(2, 3)).reshape(6, 2), batched, rtol=1e-12, atol=1e-12)
    # per-sample gradients: vmap of grad
    w = torch.tensor([0.4, 1.1], dtype=F64)
    per_sample = vmap(grad(lambda xi, si: (w * f(xi, si)).sum()))(x, lv)
    loop = torch.stack([grad(lambda xi: (w * f(xi, float(lv[i]))).sum())(x[i]) for i in range(6)])
    torch.testing.assert_close(per_sample, loop, rtol=1e-12, atol=1e-12)


def test_level_checks_still_raise_under_vmap():
    f = score_fn(_mixture(), "ve")
    with pytest.raises(ValueError, match="sigma >= 0"):
        vmap(f)(_x(3), torch.tensor([1.0, -0.5, 2.0], dtype=F64))
    net = NetworkFixture.mlp()
    with pytest.raises(ValueError, match="sigma must be > 0"):  # ScoreModel.score's own check, per sample
        vmap(score_fn(net, "ve"))(_x(3), torch.tensor([1.0, 0.0, 2.0], dtype=F64))


class NetworkFixture:
    @staticmethod
    def mlp(time="fractional"):
        torch.manual_seed(0)
        net = MLPScoreNet(2, sg.DiscreteVP.linear(), "eps", hidden=32, depth=2, emb_dim=16).double()
        return net.score_model(time=time)

    @staticmethod
    def lam_ve():
        """A lambda 'network' on NCSN levels whose output depends on x and on the label."""
        net = lambda x, t: torch.tanh(x) * (1.0 + 0.1 * t[:, None]) + 0.01 * t[:, None]  # noqa: E731
        return sg.NetworkScoreModel(net, sg.DiscreteVE.geometric(10.0, 0.01, 10), "eps", shape=(2,), time="nearest")


@pytest.mark.parametrize("which", ["mlp", "mlp_nearest", "lambda_ve"])
@pytest.mark.parametrize("convention", ["ve", "vp"])
def test_network_score_model_under_vmap_and_grad(which, convention):
    model = {"mlp": NetworkFixture.mlp, "mlp_nearest": lambda: NetworkFixture.mlp("nearest"), "lambda_ve": NetworkFixture.lam_ve}[which]()
    if convention == "vp":
        f = score_fn(model, "vp", schedule=sg.DiscreteVP.linear())
        lv = torch.tensor([3.0, 40.5, 200.0, 700.25, 999.0], dtype=F64)
        m, sigma = (torch.tensor(a) for a in linear_vp_level(lv.numpy()))
    else:
        f = score_fn(model, "ve")
        lv = torch.tensor([0.02, 0.3, 1.0, 4.0, 9.0], dtype=F64)
        m, sigma = torch.ones(5, dtype=F64), lv
    x = _x(5, seed=7)
    batched = f(x, lv)
    with torch.no_grad():
        torch.testing.assert_close(batched, model.score(x, sigma, m), rtol=1e-10, atol=1e-10)
        rows = torch.stack([model.score(x[i : i + 1], float(sigma[i]), float(m[i]))[0] for i in range(5)])
        torch.testing.assert_close(batched, rows, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(vmap(f)(x, lv), batched, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(vmap(f, in_dims=(0, None))(x, float(lv[1])), f(x, float(lv[1])), rtol=1e-10, atol=1e-10)
    w = torch.tensor([1.0, -2.0], dtype=F64)
    per_sample = vmap(grad(lambda xi, si: (w * f(xi, si)).sum()))(x, lv)
    xr = x.clone().requires_grad_(True)
    auto = torch.autograd.grad((w * f(xr, lv)).sum(), xr)[0]  # rows are independent: one backward gives all
    torch.testing.assert_close(per_sample, auto, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- denoiser export and from_denoiser


def test_denoiser_is_the_posterior_mean():
    """D(x, sigma) = x - sigma eps = x + sigma^2 score (Tweedie), in the k-diffusion call convention."""
    target = _mixture()
    D = denoiser(target)
    x = _x(4, seed=8)
    s = torch.tensor([0.1, 0.5, 2.0, 20.0], dtype=F64)
    want = x + s[:, None] ** 2 * exact_score(x, s)
    torch.testing.assert_close(D(x, s), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(D(x, 0.5), x + 0.25 * exact_score(x, 0.5), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(D(x, torch.tensor(0.5, dtype=F64)), D(x, 0.5), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(D(x, 0.0), x)  # no noise, nothing to remove
    torch.testing.assert_close(vmap(D)(x, s), D(x, s), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((x - D(x, s)) / s[:, None], -s[:, None] * exact_score(x, s), rtol=1e-10, atol=1e-10)  # k-diffusion's to_d is eps
    # a single Gaussian: the exact posterior mean (s0^2 x + sigma^2 mu) / (s0^2 + sigma^2)
    g = _single_gaussian()
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    torch.testing.assert_close(denoiser(g)(x, 1.3), (0.49 * x + 1.69 * mu) / (0.49 + 1.69), rtol=1e-12, atol=1e-12)


def _gaussian_denoiser(mu, s0):
    calls = []

    def D(x, sigma):
        calls.append(sigma)
        assert isinstance(sigma, torch.Tensor) and sigma.shape == x.shape[:1] and sigma.dtype == x.dtype
        s2 = sigma[:, None] ** 2
        return (s0**2 * x + s2 * mu) / (s0**2 + s2)

    D.calls = calls
    return D


def test_from_denoiser_exact_gaussian_ve_and_vp_callers():
    """An analytic denoiser (the posterior mean of one Gaussian) becomes exactly that Gaussian's score model."""
    mu, s0 = torch.tensor([0.5, -1.0], dtype=F64), 0.7
    D = _gaussian_denoiser(mu, s0)
    model = from_denoiser(D, (2,), 0.01, 80.0)
    assert isinstance(model, DenoiserScoreModel) and model.shape == (2,)
    truth = _single_gaussian()
    x = _x(4, seed=9)
    for sigma, m in [(0.5, 1.0), (30.0, 1.0), (0.6, 0.8), (math.sqrt(1 - 0.0025), 0.05)]:
        torch.testing.assert_close(model.eps(x, sigma, m), truth.eps(x, sigma, m), rtol=1e-12, atol=1e-12)
        want = -(x - m * mu) / (m**2 * s0**2 + sigma**2)  # written out
        torch.testing.assert_close(model.score(x, sigma, m), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model.x0(x, sigma, m), truth.x0(x, sigma, m), rtol=1e-12, atol=1e-12)
    sig = torch.tensor([0.5, 30.0, 0.6, math.sqrt(1 - 0.0025)], dtype=F64)
    mm = torch.tensor([1.0, 1.0, 0.8, 0.05], dtype=F64)
    torch.testing.assert_close(model.eps(x, sig, mm), truth.eps(x, sig, mm), rtol=1e-12, atol=1e-12)
    # the VP caller at (0.6, 0.8) is the VE level 0.75 at x / 0.8
    D.calls.clear()
    model.eps(x, 0.6, 0.8)
    torch.testing.assert_close(D.calls[-1], torch.full((4,), 0.75, dtype=F64))
    # levels outside the trained range are answered at its nearest end
    x_ve = x / 0.5
    torch.testing.assert_close(model.eps(x, 50.0, 0.5), (x_ve - D(x_ve, torch.full((4,), 80.0, dtype=F64))) / 80.0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.eps(x, 0.0), (x - D(x, torch.full((4,), 0.01, dtype=F64))) / 0.01, rtol=1e-12, atol=1e-12)
    assert model.sigma_range == pytest.approx((80.0, 0.01), rel=1e-12)


@pytest.mark.parametrize("source", ["mixture", "mlp"])
def test_denoiser_round_trip(source):
    """from_denoiser(denoiser(model)) answers like the model at VE and VP levels inside the range."""
    model = _mixture() if source == "mixture" else NetworkFixture.mlp()
    back = from_denoiser(denoiser(model), (2,), 0.002, 80.0)
    x = _x(5, seed=10)
    levels = [(0.002, 1.0), (0.1, 1.0), (1.0, 1.0), (79.0, 1.0), (0.6, 0.8), (0.995, 0.0999), (0.2, 0.98)]
    with torch.no_grad():
        for sigma, m in levels:
            torch.testing.assert_close(back.eps(x, sigma, m), model.eps(x, sigma, m), rtol=1e-9, atol=1e-9)
        sig = torch.tensor([s for s, _ in levels[:5]], dtype=F64)
        mm = torch.tensor([m for _, m in levels[:5]], dtype=F64)
        torch.testing.assert_close(back.eps(x, sig, mm), model.eps(x, sig, mm), rtol=1e-9, atol=1e-9)
    # and under torch.func, through the round trip
    f_back, f = score_fn(back, "vp", schedule=sg.DiscreteVP.linear()), score_fn(model, "vp", schedule=sg.DiscreteVP.linear())
    t = torch.tensor([1.0, 20.0, 300.5, 800.0, 900.0], dtype=F64)  # VE sigma 0.01 .. 60, inside [0.002, 80]
    torch.testing.assert_close(vmap(f_back)(x, t), f(x, t), rtol=1e-9, atol=1e-9)
    w = torch.tensor([0.5, 2.0], dtype=F64)
    torch.testing.assert_close(vmap(grad(lambda xi, ti: (w * f_back(xi, ti)).sum()))(x, t),
                               vmap(grad(lambda xi, ti: (w * f(xi, ti)).sum()))(x, t), rtol=1e-8, atol=1e-8)


def test_from_denoiser_labels_and_errors():
    target = _mixture()
    x = _x(4, seed=11)
    y = torch.tensor([0, 1, 1, 0])
    back = from_denoiser(denoiser(target), (2,), 0.01, 50.0)  # label as the third positional argument
    torch.testing.assert_close(back.eps(x, 0.7, 1.0, y), target.eps(x, 0.7, 1.0, y), rtol=1e-10, atol=1e-10)

    def D_kw(x, sigma, *, cond=None):
        return denoiser(target)(x, sigma, cond)

    back_kw = from_denoiser(D_kw, (2,), 0.01, 50.0, label_kwarg="cond")
    torch.testing.assert_close(back_kw.eps(x, 0.7, 0.9, y), target.eps(x, 0.7, 0.9, y), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="sigma_max > sigma_min > 0"):
        from_denoiser(D_kw, (2,), 1.0, 0.5)
    with pytest.raises(TypeError, match="callable"):
        from_denoiser(None, (2,), 0.01, 1.0)
    bad = from_denoiser(lambda x, s: x[:, :1], (2,), 0.01, 1.0)
    with pytest.raises(ValueError, match=r"returned \(4, 1\)"):
        bad.eps(x, 0.5)
    with pytest.raises(ValueError, match="sigma >= 0"):
        back.eps(x, -0.1)


def test_scoregen_sampler_on_a_wrapped_denoiser_matches_the_model():
    """DDIM on from_denoiser(denoiser(target)) follows DDIM on the target itself, step for step."""
    back = from_denoiser(denoiser(_mixture()), (2,), 0.01, 20.0)
    target = _mixture(schedule=back.schedule)  # same grid
    z = torch.randn(256, 2, generator=_gen(12), dtype=F64)
    a = ddim(back, z, steps=40, progress=False)
    b = ddim(target, z, steps=40, progress=False)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert sg.mode_tv(a, target) < 0.15  # and it samples the mixture (40 steps, 256 samples)


def test_eps_callable_with_schedule_is_a_network_score_model():
    """The other reverse direction needs no adapter: an eps(x, t) callable plus its schedule is a
    NetworkScoreModel; with eps_fn's VP export it reproduces the model at any caller level."""
    target = _mixture()
    x = _x(4, seed=13)
    for schedule in (sg.DiscreteVP.linear(), sg.DiscreteVP.cosine(first_index=0), sg.ContinuousVP()):
        back = sg.NetworkScoreModel(eps_fn(target, "vp", schedule=schedule), schedule, "eps", shape=(2,), time="fractional")
        for sigma, m in [(0.3, 1.0), (5.0, 1.0), (0.6, 0.8), (0.9, math.sqrt(1 - 0.81))]:
            torch.testing.assert_close(back.eps(x, sigma, m), target.eps(x, sigma, m), rtol=1e-9, atol=1e-9)
        f = score_fn(back, "ve")
        s = torch.tensor([0.3, 1.0, 2.0, 4.0], dtype=F64)
        torch.testing.assert_close(vmap(f)(x, s), exact_score(x, s), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- k-diffusion (when importable)


def _kdiffusion():
    try:
        import k_diffusion
    except Exception as e:  # not installed, or a dependency that cannot load (e.g. torchvision built for another torch)
        pytest.skip(f"k_diffusion cannot be imported: {e!r}")
    return k_diffusion


def test_kdiffusion_euler_sampler_on_an_exported_denoiser():
    """k-diffusion's Euler sampler on denoiser(target) is scoregen's DDIM (eta = 0) on the same sigmas,
    and it samples the mixture."""
    K = _kdiffusion()
    sigmas = K.sampling.get_sigmas_karras(30, 0.01, 20.0)  # float32, with the final 0 appended
    grid = sigmas[:-1].double()
    target = _mixture(schedule=sg.DiscreteVE(grid.numpy()))
    z = torch.randn(2000, 2, generator=_gen(14), dtype=F64)
    x_init = z * math.sqrt(1.0 + float(grid[0]) ** 2)  # scoregen's prior draw for unit-variance data
    k = K.sampling.sample_euler(denoiser(target), x_init.clone(), sigmas, disable=True)
    s = ddim(target, z.clone(), steps=len(grid), progress=False)
    torch.testing.assert_close(k, s, rtol=1e-9, atol=1e-9)
    # Euler written out: x <- x + (sigma_next - sigma) * eps(x, sigma)
    x = x_init.clone()
    for i in range(len(grid)):
        x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * (-float(sigmas[i]) * exact_score(x, float(sigmas[i])))
    torch.testing.assert_close(k, x, rtol=1e-9, atol=1e-9)
    assert sg.mode_tv(k, target) < 0.05


def test_kdiffusion_discrete_eps_wrapper_round_trip():
    """scoregen eps export -> k-diffusion DiscreteEpsDDPMDenoiser -> from_denoiser: the model again."""
    K = _kdiffusion()
    target = _mixture()
    sched = sg.DiscreteVP.linear(first_index=0)  # k-diffusion's t indexes alphas_cumprod from 0
    abar = torch.tensor(sched.abar, dtype=F64)
    x = _x(5, seed=15)
    for quantize in (False, True):
        kd = K.external.DiscreteEpsDDPMDenoiser(eps_fn(target, "vp", schedule=sched), abar, quantize=quantize)
        if quantize:  # at trained sigmas the nearest label is exact
            s = kd.sigmas[[0, 10, 250, 500, 999]]
        else:  # anywhere in the range: k-diffusion interpolates log sigma, scoregen log-SNR: the same line
            s = torch.tensor([0.011, 0.3, 1.0, 7.7, 150.0], dtype=F64)
        torch.testing.assert_close(kd(x, s), denoiser(target)(x, s), rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(K.sampling.to_d(x, s, kd(x, s)), -s[:, None] * exact_score(x, s), rtol=1e-8, atol=1e-8)
    kd = K.external.DiscreteEpsDDPMDenoiser(eps_fn(target, "vp", schedule=sched), abar, quantize=False)
    back = from_denoiser(kd, (2,), float(kd.sigma_min), float(kd.sigma_max))
    for sigma, m in [(0.3, 1.0), (12.0, 1.0), (0.6, 0.8), (0.999, math.sqrt(1 - 0.998001))]:
        torch.testing.assert_close(back.eps(x, sigma, m), target.eps(x, sigma, m), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["UNet", "NCSNv2"])
def test_image_networks_under_vmap_and_grad(name):
    """The real image networks (the NCSNv2 rounds its labels to trained levels: that must work under vmap too)."""
    from scoregen.networks import NCSNv2, UNet

    torch.manual_seed(0)
    net = (UNet.tiny() if name == "UNet" else NCSNv2.tiny(ngf=8)).double().eval()
    f = score_fn(net.score_model(), "ve")
    x = torch.randn(3, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    lv = torch.tensor([0.05, 0.7, 5.0], dtype=F64)
    with torch.no_grad():
        batched = f(x, lv)
        rows = torch.stack([f(x[i], lv[i]) for i in range(3)])
        torch.testing.assert_close(vmap(f)(x, lv), rows, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(batched, rows, rtol=1e-10, atol=1e-10)
    per_sample = vmap(grad(lambda xi, si: f(xi, si).sum()))(x, lv)
    loop = torch.stack([grad(lambda xi: f(xi, lv[i]).sum())(x[i]) for i in range(3)])
    torch.testing.assert_close(per_sample, loop, rtol=1e-10, atol=1e-10)
