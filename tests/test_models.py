"""The score-model interface: parameterizations, NetworkScoreModel's level mapping, x0 hooks, and the
exact Gaussian-mixture targets (sampling, posteriors, conditionals, JSON files, built-ins)."""

import json
import math

import numpy as np
import pytest
import torch

from scoregen.models import NetworkScoreModel, X0Hook, clip_x0, from_eps, to_eps
from scoregen.schedules import ContinuousVP, DiscreteVE, DiscreteVP
from scoregen.targets import GaussianMixture, load_target

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- parameterizations


def _truth(param, x0, eps, m, sigma):
    """Each parameterization of the same (x0, eps) pair, written from its definition."""
    return {
        "eps": eps,
        "score": -eps / sigma,
        "x0": x0,
        "v": m * eps - sigma * x0,  # Salimans & Ho (2022)
    }[param]


LEVELS = {
    "vp_float": (0.8, 0.6),
    "ve_float": (1.0, 7.5),
    "vp_noisy_float": (0.05, math.sqrt(1 - 0.0025)),
    "per_sample": (torch.tensor([0.8, 1.0, 0.05, 0.3], dtype=F64), torch.tensor([0.6, 7.5, math.sqrt(1 - 0.0025), 0.1], dtype=F64)),
}


@pytest.mark.parametrize("param", ["eps", "score", "x0", "v"])
@pytest.mark.parametrize("level", list(LEVELS))
def test_to_eps_from_eps_round_trip(param, level):
    m, sigma = LEVELS[level]
    g = _gen(0)
    x0 = torch.randn(4, 3, 2, generator=g, dtype=F64)
    eps = torch.randn(4, 3, 2, generator=g, dtype=F64)
    mc = m.reshape(-1, 1, 1) if isinstance(m, torch.Tensor) else m
    sc = sigma.reshape(-1, 1, 1) if isinstance(sigma, torch.Tensor) else sigma
    x = mc * x0 + sc * eps
    out = _truth(param, x0, eps, mc, sc)
    torch.testing.assert_close(to_eps(out, x, m, sigma, param), eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(from_eps(eps, x, m, sigma, param), out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(to_eps(from_eps(eps, x, m, sigma, param), x, m, sigma, param), eps, rtol=1e-10, atol=1e-10)


def test_parameterization_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="parameterization"):
        to_eps(x, x, 1.0, 1.0, "velocity")
    with pytest.raises(ValueError, match="parameterization"):
        from_eps(x, x, 1.0, 1.0, "noise")
    with pytest.raises(ValueError, match="shape"):
        to_eps(x, x, torch.ones(3), torch.ones(3), "x0")
    with pytest.raises(ValueError, match="parameterization"):
        NetworkScoreModel(lambda x, t: x, DiscreteVP.linear(), "velocity")
    with pytest.raises(ValueError, match="time"):
        NetworkScoreModel(lambda x, t: x, DiscreteVP.linear(), time="exact")


# ----------------------------------------------------------------------------- NetworkScoreModel


class RecordingNet:
    """A fake network: records the inputs it sees and answers a fixed function of (x, t)."""

    def __init__(self):
        self.x, self.t = [], []

    def __call__(self, x, t, y=None):
        self.x.append(x.clone())
        self.t.append(t.clone())
        tt = t.to(x).reshape(-1, *([1] * (x.ndim - 1)))
        return 0.5 * x + torch.sin(x + tt / 300.0)


def _brute_nearest(sch, lam):
    lsnr = np.array([sch.log_snr(float(t)) for t in sch.labels])
    return float(sch.labels[np.argmin(np.abs(lsnr - lam))])


SCHEDULES = {
    "vp_linear": lambda: DiscreteVP.linear(),
    "vp_linear_t0": lambda: DiscreteVP.linear(first_index=0),
    "ve_geometric": lambda: DiscreteVE.geometric(50.0, 0.01, 232),
}

# caller levels (m, sigma): VE-coordinate and VP-coordinate queries, all inside every schedule's range
QUERIES = [(1.0, 0.037), (1.0, 0.9), (1.0, 6.0), (0.97, math.sqrt(1 - 0.97**2)), (0.4, math.sqrt(0.84))]


@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("time", ["nearest", "fractional"])
@pytest.mark.parametrize("query", QUERIES)
def test_network_sees_expected_label_and_rescaled_input(sched, time, query):
    sch = SCHEDULES[sched]()
    m, sigma = query
    net = RecordingNet()
    model = NetworkScoreModel(net, sch, time=time)
    x = torch.randn(6, 2, generator=_gen(1), dtype=F64)
    eps = model.eps(x, sigma, m)
    lam = 2 * math.log(m / sigma)
    t_seen = net.t[-1]
    assert t_seen.shape == (6,) and t_seen.dtype == x.dtype
    assert torch.all(t_seen == t_seen[0])
    t = float(t_seen[0])
    if time == "nearest":
        assert t == _brute_nearest(sch, lam)
    else:
        assert sch.log_snr(t) == pytest.approx(lam, rel=1e-9, abs=1e-9)
        lo, hi = sorted([_brute_nearest(sch, lam) - 1, _brute_nearest(sch, lam) + 1])
        assert lo <= t <= hi
    # the input reaches the network in the model's coordinates: x * m_model / m_caller
    lsnr_t = sch.log_snr(t)
    m_model = math.sqrt(1 / (1 + math.exp(-lsnr_t))) if sch.variance_preserving else 1.0
    sigma_model = math.sqrt(1 / (1 + math.exp(lsnr_t))) if sch.variance_preserving else math.exp(-lsnr_t / 2)
    torch.testing.assert_close(net.x[-1], x * (m_model / m), rtol=1e-12, atol=1e-14)
    # eps is the network's output (eps parameterization) as is
    torch.testing.assert_close(eps, net(x * (m_model / m), t_seen), rtol=1e-12, atol=1e-14)
    # score and x0 follow in the caller's coordinates
    torch.testing.assert_close(model.score(x, sigma, m), -eps / sigma, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model.x0(x, sigma, m), (x - sigma * eps) / m, rtol=1e-12, atol=1e-14)
    assert sigma_model > 0


@pytest.mark.parametrize("param", ["eps", "score", "x0", "v"])
@pytest.mark.parametrize("query", [(1.0, 0.9), (0.4, math.sqrt(0.84))], ids=["ve_caller", "vp_caller"])
def test_output_converted_at_the_models_own_level(param, query):
    """The network's output is converted with the model's (m_t, sigma_t) and its own input x_in."""
    sch = DiscreteVP.linear()
    m, sigma = query

    def g(x_in, t):  # the eps the network "means"
        return torch.tanh(x_in) + 0.01 * t.to(x_in)[:, None]

    def net(x_in, t):
        tn = t.double().numpy()
        mt = torch.as_tensor(sch.m(tn), dtype=x_in.dtype)[:, None]
        st = torch.as_tensor(sch.sigma(tn), dtype=x_in.dtype)[:, None]
        e = g(x_in, t)
        x0 = (x_in - st * e) / mt
        return {"eps": e, "score": -e / st, "x0": x0, "v": mt * e - st * x0}[param]

    model = NetworkScoreModel(net, sch, param)
    x = torch.randn(5, 3, generator=_gen(2), dtype=F64)
    t = _brute_nearest(sch, 2 * math.log(m / sigma))
    x_in = x * (sch.m(t) / m)
    expected = g(x_in, torch.full((5,), t, dtype=F64))
    torch.testing.assert_close(model.eps(x, sigma, m), expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("time", ["nearest", "fractional"])
@pytest.mark.parametrize("sched", ["vp_linear", "ve_geometric"])
@pytest.mark.parametrize("m_kind", ["tensor", "float"])
def test_per_sample_levels_match_scalar_path(time, sched, m_kind):
    sch = SCHEDULES[sched]()
    net = RecordingNet()
    model = NetworkScoreModel(net, sch, time=time)
    x = torch.randn(5, 2, generator=_gen(3), dtype=F64)
    if m_kind == "tensor":
        m = torch.tensor([1.0, 0.9, 0.5, 1.0, 0.2], dtype=F64)
        sigma = torch.tensor([0.05, math.sqrt(1 - 0.81), math.sqrt(0.75), 3.0, math.sqrt(0.96)], dtype=F64)
    else:
        m = 1.0
        sigma = torch.tensor([0.05, 0.3, 1.0, 3.0, 0.011], dtype=F64)
    out = model.eps(x, sigma, m)
    t_vec = net.t[-1].clone()
    score_vec = model.score(x, sigma, m)
    x0_vec = model.x0(x, sigma, m)
    for i in range(5):
        mi = float(m[i]) if isinstance(m, torch.Tensor) else m
        row = model.eps(x[i : i + 1], float(sigma[i]), mi)
        assert float(net.t[-1][0]) == pytest.approx(float(t_vec[i]), abs=1e-9)
        torch.testing.assert_close(out[i : i + 1], row, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(score_vec[i : i + 1], model.score(x[i : i + 1], float(sigma[i]), mi), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(x0_vec[i : i + 1], model.x0(x[i : i + 1], float(sigma[i]), mi), rtol=1e-10, atol=1e-12)


def test_continuous_schedule_gets_exact_time():
    sch = ContinuousVP()
    net = RecordingNet()
    model = NetworkScoreModel(net, sch)  # "nearest" on a continuous schedule is exact
    for t in [0.01, 0.3, 0.77, 1.0]:
        model.eps(torch.zeros(2, 1, dtype=F64), sch.sigma(t), sch.m(t))
        assert float(net.t[-1][0]) == pytest.approx(t, rel=1e-9)
        torch.testing.assert_close(net.x[-1], torch.zeros(2, 1, dtype=F64))


@pytest.mark.parametrize(
    "bad_out",
    [
        lambda x: x[:, :1],
        lambda x: x.reshape(-1),
        lambda x: x[:-1],
        lambda x: x.numpy(),
        lambda x: None,
    ],
    ids=["fewer_features", "flattened", "fewer_rows", "numpy", "none"],
)
@pytest.mark.parametrize("level", ["float", "tensor"])
def test_network_wrong_output_is_a_clear_error(bad_out, level):
    model = NetworkScoreModel(lambda x, t: bad_out(x), DiscreteVP.linear())
    x = torch.zeros(3, 2, dtype=F64)
    sigma = 0.5 if level == "float" else torch.full((3,), 0.5, dtype=F64)
    with pytest.raises(ValueError, match="expected a tensor shaped like its input"):
        model.eps(x, sigma)


@pytest.mark.parametrize("sigma", [0.0, -0.1, torch.tensor([0.5, 0.0]), torch.tensor([0.5, -1.0])],
                         ids=["zero", "negative", "tensor_zero", "tensor_negative"])
def test_score_at_sigma_zero_raises(sigma):
    model = NetworkScoreModel(lambda x, t: x, DiscreteVP.linear())
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="sigma"):
        model.score(x, sigma)


def test_x0_at_m_zero_raises():
    model = NetworkScoreModel(lambda x, t: x, DiscreteVP.linear())
    with pytest.raises(ValueError, match="m"):
        model.x0(torch.ones(2, 3), 1.0, 0.0)
    with pytest.raises(ValueError, match="m"):
        model.eps(torch.ones(2, 3), 1.0, torch.tensor([0.5, 0.0]))


@pytest.mark.parametrize("sigma", [torch.full((3,), 0.5), torch.full((1, 2), 0.5)], ids=["too_long", "2d"])
def test_per_sample_level_of_wrong_shape_is_a_clear_error(sigma):
    """A per-sample level must have shape (batch,): the same ValueError to_eps gives, not a torch internal error."""
    model = NetworkScoreModel(lambda x, t: x, DiscreteVP.linear())
    with pytest.raises(ValueError, match="per-sample noise level"):
        model.eps(torch.ones(2, 3), sigma)
    with pytest.raises(ValueError, match="per-sample noise level"):
        to_eps(torch.ones(2, 3), torch.ones(2, 3), 1.0, sigma, "x0")


def test_nan_level_is_rejected():
    """A NaN noise level must not be answered silently at some arbitrary trained level."""
    model = NetworkScoreModel(lambda x, t: x, DiscreteVP.linear())
    x = torch.ones(2, 3)
    with pytest.raises(ValueError):
        model.eps(x, float("nan"))
    with pytest.raises(ValueError):
        model.eps(x, torch.tensor([0.5, float("nan")]))


# ----------------------------------------------------------------------------- x0 hook


@pytest.mark.parametrize("level", [(0.8, 0.6), (1.0, 2.0), "tensor"])
def test_x0_hook_clip(level):
    if level == "tensor":
        m, sigma = torch.tensor([0.8, 1.0, 0.3, 0.99], dtype=F64), torch.tensor([0.6, 2.0, math.sqrt(0.91), 0.05], dtype=F64)
        mc, sc = m[:, None], sigma[:, None]
    else:
        m, sigma = level
        mc, sc = m, sigma
    base = NetworkScoreModel(lambda x, t: -3.0 * x, DiscreteVP.linear(), time="fractional")
    hooked = X0Hook(base, clip_x0(-1.0, 1.0))
    x = torch.randn(4, 5, generator=_gen(4), dtype=F64) * 1.5
    x0_base = (x - sc * base.eps(x, sigma, m)) / mc
    assert (x0_base.abs() > 1).any() and (x0_base.abs() < 1).any()  # the test exercises both branches
    x0_h = hooked.x0(x, sigma, m)
    assert x0_h.min() >= -1 - 1e-12 and x0_h.max() <= 1 + 1e-12
    torch.testing.assert_close(x0_h, x0_base.clamp(-1, 1), rtol=1e-10, atol=1e-12)
    eps_h = hooked.eps(x, sigma, m)
    torch.testing.assert_close(eps_h, (x - mc * x0_base.clamp(-1, 1)) / sc, rtol=1e-10, atol=1e-12)
    inside = x0_base.abs() < 1
    torch.testing.assert_close(eps_h[inside], base.eps(x, sigma, m)[inside], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hooked.score(x, sigma, m), -eps_h / sc, rtol=1e-10, atol=1e-12)
    assert hooked.schedule is base.schedule


def test_clip_x0_bad_range():
    with pytest.raises(ValueError, match="low < high"):
        clip_x0(1.0, -1.0)


# ----------------------------------------------------------------------------- mixture target


W = [0.1, 0.6, 0.3]
MU = [[-3.0, 1.0], [2.0, 0.5], [0.0, -2.5]]
S = [0.4, 1.0, 0.7]


def _hand_mean_cov(w, mu, s):
    w = np.asarray(w) / np.sum(w)
    mu, s = np.asarray(mu, dtype=float), np.asarray(s, dtype=float)
    d = mu.shape[1]
    mean = sum(w[k] * mu[k] for k in range(len(w)))
    second = sum(w[k] * (np.outer(mu[k], mu[k]) + s[k] ** 2 * np.eye(d)) for k in range(len(w)))
    return mean, second - np.outer(mean, mean)


def test_mixture_closed_form_moments():
    gm = GaussianMixture([1.0, 6.0, 3.0], MU, S)  # unnormalised weights
    mean, cov = _hand_mean_cov(W, MU, S)
    np.testing.assert_allclose(gm.weights, W, rtol=1e-12)
    np.testing.assert_allclose(gm.mean(), mean, rtol=1e-12)
    np.testing.assert_allclose(gm.cov(), cov, rtol=1e-12)


def test_mixture_exact_samples():
    gm = GaussianMixture(W, MU, S)
    n = 60000
    x, k = gm.sample(n, generator=_gen(5), dtype=F64, return_components=True)
    assert x.shape == (n, 2) and x.dtype == F64
    mean, cov = _hand_mean_cov(W, MU, S)
    xn = x.numpy()
    # component frequencies: binomial standard error
    freq = np.bincount(k.numpy(), minlength=3) / n
    assert np.all(np.abs(freq - W) < 5 * np.sqrt(np.array(W) * (1 - np.array(W)) / n))
    # the mean: standard error sqrt(var / n)
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(xn.mean(0) - mean) < 5 * se)
    # each covariance entry: standard error of the mean of (x_i - mu_i)(x_j - mu_j)
    c = xn - mean
    prod = c[:, :, None] * c[:, None, :]
    se_cov = prod.std(0) / np.sqrt(n)
    assert np.all(np.abs(prod.mean(0) - cov) < 5 * se_cov)
    # given the component, samples are that component's Gaussian
    for j in range(3):
        xs = xn[k.numpy() == j]
        assert np.all(np.abs(xs.mean(0) - MU[j]) < 5 * S[j] / np.sqrt(len(xs)))
        assert np.all(np.abs(xs.std(0) - S[j]) < 5 * S[j] / np.sqrt(2 * len(xs)))
    # a fixed generator reproduces the samples
    torch.testing.assert_close(gm.sample(n, generator=_gen(5), dtype=F64), x, rtol=0, atol=0)


def _normal_pdf(x, mean, var):
    return math.exp(-0.5 * (x - mean) ** 2 / var) / math.sqrt(2 * math.pi * var)


@pytest.mark.parametrize("level", [(1.0, 0.0), (1.0, 0.7), (0.6, 0.8), (0.2, math.sqrt(0.96))])
def test_class_posterior_is_bayes_rule_1d(level):
    m, sigma = level
    w, mu, s = [0.3, 0.7], [-1.0, 2.0], [0.5, 1.0]
    gm = GaussianMixture(w, [[v] for v in mu], s)
    xs = [-2.0, -0.4, 0.3, 1.1, 3.5]
    post = torch.exp(gm.classifier(torch.tensor([[v] for v in xs], dtype=F64), sigma, m)).numpy()
    comp = gm.component_posterior(torch.tensor([[v] for v in xs], dtype=F64), sigma, m).numpy()
    for i, x in enumerate(xs):
        joint = [w[k] * _normal_pdf(x, m * mu[k], m**2 * s[k] ** 2 + sigma**2) for k in range(2)]
        expected = np.array(joint) / sum(joint)
        np.testing.assert_allclose(post[i], expected, rtol=1e-9)
        np.testing.assert_allclose(comp[i], expected, rtol=1e-9)
        assert post[i].sum() == pytest.approx(1.0, abs=1e-12)


def test_class_posterior_sums_components_of_a_class():
    gm = GaussianMixture(W, MU, S, labels=[1, 0, 1])
    x = torch.randn(20, 2, generator=_gen(6), dtype=F64) * 2
    for m, sigma in [(1.0, 0.0), (1.0, 1.5), (0.5, math.sqrt(0.75))]:
        logp = gm.classifier(x, sigma, m)
        assert logp.shape == (20, 2)
        torch.testing.assert_close(logp.exp().sum(-1), torch.ones(20, dtype=F64), rtol=0, atol=1e-12)
        comp = gm.component_posterior(x, sigma, m)
        torch.testing.assert_close(comp.sum(-1), torch.ones(20, dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(logp.exp()[:, 1], comp[:, 0] + comp[:, 2], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(logp.exp()[:, 0], comp[:, 1], rtol=1e-10, atol=1e-14)


def test_conditional_keeps_the_right_components():
    gm = GaussianMixture(W, MU, S, labels=[1, 0, 1])
    c1 = gm.conditional(1)
    np.testing.assert_allclose(c1.weights, [0.1 / 0.4, 0.3 / 0.4], rtol=1e-12)
    np.testing.assert_array_equal(c1.means, [MU[0], MU[2]])
    np.testing.assert_array_equal(c1.stds, [S[0], S[2]])
    np.testing.assert_array_equal(c1.labels, [0, 0])  # a one-class mixture: its classes are dense, 0..C-1
    c0 = gm.conditional(0)
    np.testing.assert_allclose(c0.weights, [1.0])
    np.testing.assert_array_equal(c0.means, [MU[1]])
    # the conditional score is the class-y score of the full mixture
    x = torch.randn(10, 2, generator=_gen(7), dtype=F64)
    torch.testing.assert_close(c1.score(x, 0.8, 0.6), gm.score(x, 0.8, 0.6, y=torch.tensor(1)), rtol=1e-10, atol=1e-12)
    # conditional samples come from class-1 components only: mean of the class-1 sub-mixture
    xs = gm.sample(20000, generator=_gen(8), y=1, dtype=F64).numpy()
    mean, cov = _hand_mean_cov([0.1, 0.3], [MU[0], MU[2]], [S[0], S[2]])
    assert np.all(np.abs(xs.mean(0) - mean) < 5 * np.sqrt(np.diag(cov) / len(xs)))
    with pytest.raises(ValueError, match=r"class labels must be in 0\.\.1, got \[2\]"):
        gm.conditional(2)


def test_json_round_trip(tmp_path):
    gm = GaussianMixture([2.0, 1.0, 1.0], MU, S, labels=[0, 1, 0], name="mine")
    p = tmp_path / "mine.json"
    gm.to_json(p)
    back = GaussianMixture.from_json(p)
    np.testing.assert_allclose(back.weights, [0.5, 0.25, 0.25], rtol=1e-15)
    np.testing.assert_array_equal(back.means, MU)
    np.testing.assert_array_equal(back.stds, S)
    np.testing.assert_array_equal(back.labels, [0, 1, 0])
    assert back.name == "mine" and back.num_classes == 2
    x = torch.randn(7, 2, generator=_gen(9), dtype=F64)
    torch.testing.assert_close(back.score(x, 0.5), gm.score(x, 0.5), rtol=1e-14, atol=1e-14)
    spec = json.loads(p.read_text())
    assert set(spec) == {"name", "weights", "means", "stds", "labels"}
    # labels are optional; the name defaults to the file's stem
    q = tmp_path / "nolabels.json"
    q.write_text(json.dumps({"weights": [1, 1], "means": [[0.0], [1.0]], "stds": [1, 2]}))
    g2 = GaussianMixture.from_json(q)
    np.testing.assert_array_equal(g2.labels, [0, 1])
    assert g2.name == "nolabels"


GOOD = {"weights": [1, 2], "means": [[0.0, 1.0], [1.0, 0.0]], "stds": [0.5, 1.0], "labels": [0, 1]}


def _with(**kw):
    d = dict(GOOD)
    for k, v in kw.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d)


_DROP = object()

MALFORMED = {
    "stds_short": (_with(stds=[0.5]), r"one per component"),
    "means_long": (_with(means=[[0, 1], [1, 0], [2, 2]]), r"one per component"),
    "means_ragged": (_with(means=[[0, 1], [1]]), r"'means'"),
    "means_flat": (_with(means=[0, 1]), r"'means'.*2-dimensional"),
    "negative_std": (_with(stds=[0.5, -1.0]), r"std"),
    "zero_std": (_with(stds=[0.0, 1.0]), r"std"),
    "zero_weight": (_with(weights=[0, 1]), r"weight"),
    "negative_weight": (_with(weights=[-1, 2]), r"weight"),
    "empty": (_with(weights=[], means=[], stds=[], labels=[]), r"at least one component|'means'"),
    "nan_mean": (_with(means=[[0, float("nan")], [1, 0]]), r"NaN"),
    "nan_literal_weight": ('{"weights": [1, NaN], "means": [[0], [1]], "stds": [1, 1]}', r"NaN"),
    "inf_std": ('{"weights": [1, 1], "means": [[0], [1]], "stds": [1, Infinity]}', r"NaN or inf"),
    "missing_stds": (_with(stds=_DROP), r"missing keys \['stds'\]"),
    "missing_means": (_with(means=_DROP), r"missing keys \['means'\]"),
    "unknown_key": (_with(sigma=[1, 1]), r"unknown keys \['sigma'\]"),
    "labels_negative": (_with(labels=[0, -1]), r"'labels'.*non-negative integers"),
    "labels_fractional": (_with(labels=[0, 0.5]), r"'labels'.*non-negative integers"),
    "labels_short": (_with(labels=[0]), r"'labels' has 1 entries"),
    "labels_strings": (_with(labels=["a", "b"]), r"'labels'"),
    "weights_strings": (_with(weights=["heavy", "light"]), r"'weights'"),
    "not_json": ("weights: [1, 2]\n", r"not valid JSON"),
    "truncated": (_with()[:-5], r"not valid JSON"),
    "top_level_list": ("[1, 2, 3]", r"JSON object"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_json_is_a_clear_error(tmp_path, case):
    text, match = MALFORMED[case]
    p = tmp_path / f"{case}.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        GaussianMixture.from_json(p)
    assert str(p) in str(info.value)  # the message names the file
    with pytest.raises(ValueError, match=match):
        load_target(str(p))


def test_missing_json_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_target(str(tmp_path / "nope.json"))


def test_load_target_ring2d():
    gm = load_target("ring2d")
    assert len(gm.weights) == 8 and gm.dim == 2
    angles = 2 * np.pi * np.arange(8) / 8
    np.testing.assert_allclose(gm.means, 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1), atol=1e-12)
    np.testing.assert_allclose(gm.stds, 0.1)
    np.testing.assert_allclose(gm.weights, 1 / 8)
    np.testing.assert_array_equal(gm.labels, np.arange(8))


def test_load_target_gmm64():
    gm = load_target("gmm64")
    assert gm.dim == 64 and len(gm.weights) == 10
    np.testing.assert_array_equal(gm.labels, np.arange(10) % 5)
    assert gm.num_classes == 5
    assert np.all((gm.stds >= 0.5) & (gm.stds <= 1.0))
    assert gm.weights.sum() == pytest.approx(1.0, abs=1e-12)
    # weights proportional to a shuffle of 1..10
    np.testing.assert_allclose(np.sort(gm.weights * 55), np.arange(1, 11), atol=1e-3)


def test_load_target_from_path(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps(GOOD))
    gm = load_target(str(p))
    np.testing.assert_allclose(gm.weights, [1 / 3, 2 / 3], rtol=1e-12)
    np.testing.assert_array_equal(gm.means, GOOD["means"])


@pytest.mark.parametrize("name", ["ring3d", "gmm", "RING2D"])
def test_load_target_unknown_name(name):
    with pytest.raises(ValueError, match="unknown target.*ring2d"):
        load_target(name)
