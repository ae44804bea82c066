"""The sub-VP SDE schedule (Song et al. 2021, eq. 29): exact log-SNR round trips, m and sigma from the SDE itself,
and a network trained in sub-VP coordinates answering VP and VE callers (by log-SNR matching) in every sampler."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.models import LevelMap, NetworkScoreModel
from scoregen.schedules import ContinuousSubVP, ContinuousVP, schedule_from_config

B0, B1 = 0.1, 20.0


def _integrated_beta(t: np.ndarray) -> np.ndarray:
    """int_0^t beta(s) ds for beta(s) = B0 + (B1 - B0) s, by the trapezoid rule (exact for a linear beta)."""
    out = []
    for ti in np.atleast_1d(t):
        s = np.linspace(0.0, ti, 65)
        beta = B0 + (B1 - B0) * s
        out.append(float(np.sum(0.5 * (beta[1:] + beta[:-1]) * np.diff(s))))
    return np.array(out)


def test_log_snr_round_trips_both_ways():
    sch = ContinuousSubVP(B0, B1)
    t = np.concatenate([np.linspace(sch.t_min, 1.0, 501), [1e-3, 0.5, 1.0]])
    np.testing.assert_allclose(sch.t_from_log_snr(sch.log_snr(t)), t, rtol=1e-12, atol=0)
    lam = np.linspace(sch.log_snr(1.0), sch.log_snr(sch.t_min), 301)
    np.testing.assert_allclose(sch.log_snr(sch.t_from_log_snr(lam)), lam, rtol=0, atol=1e-10)
    assert isinstance(sch.log_snr(0.3), float) and isinstance(sch.t_from_log_snr(1.5), float)
    assert sch.t_from_log_snr(0.0) == pytest.approx(float(sch.t_from_log_snr(np.array([0.0]))[0]), rel=0, abs=0)


def test_extreme_log_snr_clamps_to_the_trained_range_without_overflow():
    sch = ContinuousSubVP(B0, B1, t_min=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings from numpy
        t = sch.t_from_log_snr(np.array([-math.inf, -1e4, -800.0, 800.0, 1e4, math.inf]))
        assert sch.t_from_log_snr(-math.inf) == 1.0
    np.testing.assert_array_equal(t, [1.0, 1.0, 1.0, 1e-3, 1e-3, 1e-3])
    assert sch.log_snr(0.0) == math.inf  # clean data: infinite SNR, no warning either


def test_m_and_sigma_are_the_sub_vp_sde_marginals():
    """m = exp(-B/2) and sigma = 1 - exp(-B) (B = int beta): the marginal of dx = -beta x / 2 dt +
    sqrt(beta (1 - exp(-2B))) dw, whose variance v obeys dv/dt = -beta v + beta (1 - exp(-2B)), v(0) = 0;
    integrated here with RK4, independently of the closed form."""
    sch = ContinuousSubVP(B0, B1)
    t = np.array([1e-3, 0.05, 0.3, 0.7, 1.0])
    b = _integrated_beta(t)
    np.testing.assert_allclose(sch.m(t), np.exp(-b / 2), rtol=1e-12)
    np.testing.assert_allclose(sch.sigma(t), 1 - np.exp(-b), rtol=1e-12)

    def rhs(s, v):
        beta = B0 + (B1 - B0) * s
        bint = B0 * s + 0.5 * (B1 - B0) * s * s
        return -beta * v + beta * (1 - math.exp(-2 * bint))

    v, s, h = 0.0, 0.0, 1e-4
    for target, want in zip(t, sch.sigma(t)):
        while s < target - 1e-12:
            step = min(h, target - s)
            k1 = rhs(s, v); k2 = rhs(s + step / 2, v + step * k1 / 2)  # noqa: E702
            k3 = rhs(s + step / 2, v + step * k2 / 2); k4 = rhs(s + step, v + step * k3)  # noqa: E702
            v, s = v + step * (k1 + 2 * k2 + 2 * k3 + k4) / 6, s + step
        assert math.sqrt(v) == pytest.approx(want, rel=1e-8)
    # neither VP nor VE: the same m as the VP SDE, a smaller sigma
    vp = ContinuousVP(B0, B1)
    np.testing.assert_allclose(sch.m(t), vp.m(t), rtol=1e-12)
    assert np.all(sch.sigma(t) < vp.sigma(t)) and np.all(sch.m(t) ** 2 + sch.sigma(t) ** 2 < 1)
    np.testing.assert_allclose(np.log(sch.m(t) ** 2 / sch.sigma(t) ** 2), sch.log_snr(t), rtol=1e-12)
    m, sigma = sch.levels(4)
    np.testing.assert_array_equal(m, sch.m(sch.grid(4)))
    np.testing.assert_array_equal(sigma, sch.sigma(sch.grid(4)))


def test_config_round_trip_and_errors():
    sch = ContinuousSubVP(0.2, 15.0, t_min=1e-4)
    again = schedule_from_config(sch.to_config())
    assert isinstance(again, ContinuousSubVP) and again.to_config() == sch.to_config()
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        ContinuousSubVP(5.0, 1.0)
    with pytest.raises(ValueError, match="t_min"):
        ContinuousSubVP(t_min=0.0)
    with pytest.raises(ValueError, match="outside"):
        sch.log_snr(1.5)


MU, S0 = torch.tensor([0.7, -1.2]), torch.tensor([0.5, 0.3])


def exact_eps(x: torch.Tensor, sigma, m) -> torch.Tensor:
    """E[eps | x] for x = m x0 + sigma eps, x0 ~ N(MU, diag S0^2): sigma (x - m MU) / (m^2 S0^2 + sigma^2)."""
    col = lambda v: torch.as_tensor(v, dtype=x.dtype).reshape(-1, 1) if torch.is_tensor(v) else v  # noqa: E731
    m, sigma = col(m), col(sigma)
    return sigma * (x - m * MU.to(x)) / (m * m * S0.to(x) ** 2 + sigma * sigma)


class SubVPGaussianNet(torch.nn.Module):
    """The exact eps network of the Gaussian in sub-VP coordinates at time t: what a perfectly trained network is."""

    shape = (2,)

    def __init__(self, schedule: ContinuousSubVP):
        super().__init__()
        self.schedule = schedule

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tn = t.double().numpy()
        m = torch.as_tensor(self.schedule.m(tn), dtype=x.dtype)
        sigma = torch.as_tensor(self.schedule.sigma(tn), dtype=x.dtype)
        return exact_eps(x, sigma, m)


@pytest.fixture()
def model():
    sch = ContinuousSubVP(B0, B1)
    return NetworkScoreModel(SubVPGaussianNet(sch), sch, "eps", time="fractional")


def test_a_sub_vp_network_answers_vp_and_ve_callers(model):
    x = torch.randn(5, 2, dtype=torch.float64)
    for t in (1e-3, 0.2, 0.9):
        sub_m, sub_sigma = model.schedule.m(t), model.schedule.sigma(t)
        s_ve = sub_sigma / sub_m  # the same level in VE and VP coordinates
        vp_m, vp_sigma = 1 / math.hypot(1, s_ve), s_ve / math.hypot(1, s_ve)
        for m, sigma in ((1.0, s_ve), (vp_m, vp_sigma), (sub_m, sub_sigma)):
            got = model.eps(x * m, sigma, m)
            torch.testing.assert_close(got, exact_eps(x * m, sigma, m), rtol=1e-10, atol=1e-12)
            # the network was handed its own coordinates: the caller's x rescaled by m_t / m
            x_in, label, m_t, sigma_t = model.levels(x * m, sigma, m)
            assert float(label[0]) == pytest.approx(t, rel=1e-10)
            assert (m_t, sigma_t) == pytest.approx((sub_m, sub_sigma), rel=1e-10)
            torch.testing.assert_close(x_in, x * sub_m, rtol=1e-12, atol=1e-14)
    # per-sample levels (tensors) answer the same
    sigma = torch.tensor([0.3, 1.0, 4.0, 0.05, 2.0], dtype=torch.float64)
    torch.testing.assert_close(model.eps(x, sigma, torch.ones(5, dtype=torch.float64)), exact_eps(x, sigma, 1.0),
                               rtol=1e-10, atol=1e-12)


def test_prepare_maps_levels_exactly_as_the_scalar_path():
    sch = ContinuousSubVP(B0, B1)
    sigma, m = [5.0, 1.0, 0.3, 0.01], [1.0, 0.6, 0.9, 1.0]
    prepared, scalar = LevelMap(sch, "fractional"), LevelMap(sch, "fractional")
    prepared.prepare(sigma, m)
    for s, mm in zip(sigma, m):
        assert prepared._cache[(s, mm)] == scalar._scalar(s, mm)


@pytest.mark.filterwarnings("ignore:langevin")  # two levels are few on purpose: this only checks that it runs
def test_every_sampler_runs_on_a_sub_vp_model(model):
    options = {"langevin": dict(levels=2, steps_per_level=2), "ddim": dict(steps=3, eta=0.5),
               "ode": dict(steps=3, rtol=1e-3, atol=1e-3)}
    for name in sg.SAMPLERS:
        res = sg.sample(model, name, n=2, seed=0, progress=False, **options.get(name, dict(steps=3)))
        assert res.samples.shape == (2, 2) and torch.isfinite(res.samples).all(), name


def test_ddim_on_the_exact_sub_vp_network_reaches_the_gaussian(model):
    """Deterministic DDIM from x_1 ~ N(0, I) on the exact eps: samples have the target's mean and std up to the
    discretisation and sampling error (4000 samples: SE of the mean ~ 0.008, of the std ~ 0.006)."""
    res = sg.sample(model, "ddim", n=4000, seed=1, steps=100, eta=0.0, progress=False, dtype=torch.float64)
    x = res.samples
    torch.testing.assert_close(x.mean(0), MU.double(), atol=0.04, rtol=0)
    torch.testing.assert_close(x.std(0), S0.double(), atol=0.03, rtol=0)


def test_grids_are_in_vp_coordinates_and_a_resumed_state_is_read_in_them(model):
    """Every grid of a sub-VP model, trained levels included, is in VP coordinates at the model's log-SNR (what
    sample()'s x_start without start_level is read in): a state drawn from the exact marginal at the first level,
    in those coordinates, runs DDIM to the Gaussian (4000 samples: SE of the mean ~ 0.008, of the std ~ 0.006)."""
    sch = model.schedule
    t0 = 0.3
    labels = np.linspace(t0, 1e-3, 300)
    for grid, t in ((sg.step_grid(model, 10, "trained"), sch.grid(10)),
                    (sg.step_grid(model, timesteps=labels.tolist()), labels)):
        m, sigma = np.array(grid.m[:-1]), np.array(grid.sigma[:-1])
        np.testing.assert_allclose(m**2 + sigma**2, 1.0, rtol=1e-12)
        np.testing.assert_allclose(sigma / m, sch.sigma(t) / sch.m(t), rtol=1e-10)
    s = sch.sigma(t0) / sch.m(t0)
    m_vp, sigma_vp = 1 / math.hypot(1, s), s / math.hypot(1, s)
    g = torch.Generator().manual_seed(3)
    x0 = MU.double() + S0.double() * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    start = m_vp * x0 + sigma_vp * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    res = sg.sample(model, "ddim", n=4000, seed=1, timesteps=labels.tolist(), x_start=start,
                    progress=False, dtype=torch.float64)
    torch.testing.assert_close(res.samples.mean(0), MU.double(), atol=0.03, rtol=0)
    torch.testing.assert_close(res.samples.std(0), S0.double(), atol=0.03, rtol=0)
