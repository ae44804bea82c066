"""Likelihoods on targets whose log density is known in closed form (scoregen.likelihood).

* the Gaussian pieces against torch.distributions and scipy;
* ode_nll against a Gaussian mixture's exact log density (exact trace: within 0.01 nats/dim per sample; Hutchinson:
  within three of its reported standard errors), VP and VE, and its dequantized bound against the exact bin masses;
* vlb: every term against the KL of the two Gaussians written from Ho et al.'s formulas; an upper bound on -log p
  whose gap shrinks as the chain gets finer; the decoder against scipy.
"""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import norm

import scoregen as sg
from scoregen.likelihood import Bins, NLLResult, discretized_gaussian_nll, gaussian_nll, normal_kl, ode_nll, vlb
from scoregen.likelihood._inputs import normal, per_sample_draws
from scoregen.schedules import ContinuousVE, DiscreteVP
from scoregen.targets import GaussianMixture

D2 = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.0, -0.5]], stds=[0.3, 0.2])


def mixture(schedule, **kw) -> GaussianMixture:
    return GaussianMixture(**(kw or D2), schedule=schedule)


def data(target: GaussianMixture, n: int, seed: int = 1) -> torch.Tensor:
    return target.sample(n, generator=torch.Generator().manual_seed(seed)).double()


# ------------------------------------------------------------------------------------------ Gaussian pieces
def test_normal_kl_and_density_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    v1, v2 = torch.rand(50, generator=g, dtype=torch.float64) + 0.01, torch.rand(50, generator=g, dtype=torch.float64) + 0.01
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()), torch.distributions.Normal(m2, v2.sqrt()))
    torch.testing.assert_close(normal_kl(m1, v1, m2, v2), ref, rtol=1e-12, atol=1e-12)
    x = torch.randn(50, generator=g, dtype=torch.float64)
    torch.testing.assert_close(gaussian_nll(x, m1, v1), -torch.distributions.Normal(m1, v1.sqrt()).log_prob(x))


def test_discretized_gaussian_is_the_bin_mass_also_in_the_tails():
    bins = Bins(17)
    k = torch.tensor([0, 1, 8, 15, 16, 16, 0, 8])
    x = (-1.0 + k * bins.width).double()
    mean = torch.tensor([0.3, -0.99, 6.0, -4.0, 0.99, -1.0, 1.0, 0.01], dtype=torch.float64)
    var = torch.tensor([0.01, 1e-6, 0.04, 0.3, 1e-4, 0.01, 0.01, 1e-8], dtype=torch.float64)
    got = discretized_gaussian_nll(x, mean, var, bins)
    for i in range(len(x)):
        s, xi = math.sqrt(var[i]), float(x[i])
        lo = -np.inf if k[i] == 0 else (xi - bins.width / 2 - float(mean[i])) / s
        hi = np.inf if k[i] == 16 else (xi + bins.width / 2 - float(mean[i])) / s
        with mpmath.workdps(60):  # far tails: 60 digits, no cancellation
            mass = mpmath.ncdf(-lo) - mpmath.ncdf(-hi) if lo > 0 else mpmath.ncdf(hi) - mpmath.ncdf(lo)
            assert float(got[i]) == pytest.approx(float(-mpmath.log(mass)), rel=1e-9, abs=1e-12), i
    # a Gaussian far narrower than a bin puts all its mass there
    assert float(discretized_gaussian_nll(x[:1], x[:1], torch.tensor([1e-10]), bins)[0]) < 1e-12


def test_bins_refuse_data_off_the_grid():
    with pytest.raises(ValueError, match="17 evenly spaced values"):
        Bins(17).index(torch.tensor([0.0, 0.03]))
    with pytest.raises(ValueError, match="17 evenly spaced values"):
        Bins(17).index(torch.tensor([1.125]))
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        Bins(1)


# ------------------------------------------------------------------------------------------ ode_nll
@pytest.mark.parametrize("schedule", [DiscreteVP.linear(1000), ContinuousVE(0.002, 80.0)], ids=["vp", "ve"])
def test_ode_nll_exact_trace_is_the_closed_form_log_density(schedule):
    target = mixture(schedule)
    x = data(target, 128)
    r = ode_nll(target, x, divergence="exact", details=True, progress=False)
    exact = -target.log_prob(x)
    assert r.nats.shape == (128,) and r.nats.dtype == torch.float64
    # per sample within 0.01 nats per dimension (the data is read at the least noisy level, s_min <= 0.01)
    assert float((r.nats - exact).abs().max()) / 2 < 0.01
    assert r.nfe > 10 and r.info["divergence"] == "exact"
    torch.testing.assert_close(r.terms["prior"] + r.terms["divergence"] + r.terms["dequantization"], r.nats)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_ode_nll_hutchinson_within_its_standard_error(probe):
    target = GaussianMixture([0.5, 0.5], [[0.5] * 6, [-0.5] * 6], [0.4, 0.3], schedule=DiscreteVP.linear(1000))
    x = data(target, 256, seed=3)
    r = ode_nll(target, x, divergence="hutchinson", probe=probe, details=True, progress=False, seed=0)
    exact = (-target.log_prob(x)).mean()
    assert abs(r.mean("nats") - float(exact)) < 3 * r.sem("nats")
    # the probes' noise is there: the per-sample estimates are not the exact values
    assert float((r.nats + target.log_prob(x)).abs().max()) > 0.05
    # same seed, same probes, same answer
    again = ode_nll(target, x[:16], divergence="hutchinson", probe=probe, progress=False, seed=0)
    torch.testing.assert_close(again, ode_nll(target, x[:16], divergence="hutchinson", probe=probe, progress=False, seed=0))


def test_ode_nll_dequantized_bounds_the_exact_bin_probability():
    """1-D mixture on 17 values in [-1, 1]: the exact -log P(bin) from the mixture's CDF (outer bins open) is below the
    dequantized bound, which is tight to within the small Jensen gap of a smooth density."""
    target = GaussianMixture([0.4, 0.6], [[-0.4], [0.3]], [0.25, 0.3], schedule=DiscreteVP.linear(1000))
    bins = Bins(17)
    x = bins.low + torch.round((data(target, 400).clamp(-1, 1) - bins.low) / bins.width) * bins.width
    lo = torch.where(x <= -1, torch.full_like(x, -math.inf), x - bins.width / 2)
    hi = torch.where(x >= 1, torch.full_like(x, math.inf), x + bins.width / 2)
    mass = sum(w * (norm.cdf((hi.numpy() - mu[0]) / s) - norm.cdf((lo.numpy() - mu[0]) / s))
               for w, mu, s in zip(target.weights, target.means, target.stds))
    exact = -np.log(mass[:, 0])
    r = ode_nll(target, x, bins=17, details=True, progress=False)
    gap = r.nats.numpy() - exact
    assert gap.mean() > -3 * gap.std() / math.sqrt(len(gap))  # a bound (up to the dequantization draws' noise)
    assert gap.mean() < 0.05  # and a tight one: a bin is narrow against the components
    assert float(r.terms["dequantization"][0]) == pytest.approx(-math.log(bins.width))


# ------------------------------------------------------------------------------------------ vlb
def test_vlb_terms_are_the_kls_of_ho_et_al():
    """On a 20-step DDPM chain, each L_{t-1} equals KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) built from eq. 7 and
    eq. 11 with torch.distributions, at the same noise draws (per_sample_draws: one per sample and level), and L_0 the
    discretised decoder; beta_tilde at t = 1 is improved-diffusion's clipped value (beta_tilde_2)."""
    T = 20
    sched = DiscreteVP.linear(T, beta_start=1e-3, beta_end=0.3)
    target = GaussianMixture([0.5, 0.5], [[-0.5, 0.25], [0.5, 0.0]], [0.2, 0.3], schedule=sched)
    bins = Bins(17)
    x0 = (bins.low + torch.round((data(target, 8).clamp(-1, 1) + 1) / bins.width) * bins.width)
    for variance in ("beta_tilde", "beta"):
        r = vlb(target, x0, variance=variance, bins=17, seed=4, batch_size=None, details=True, progress=False)
        assert r.terms["steps"].shape == (8, T - 1) and list(r.t) == list(range(T, 0, -1))
        betas = torch.as_tensor(sched.beta, dtype=torch.float64)
        alphas, abar = 1 - betas, torch.cumprod(1 - betas, 0)
        for t in range(T, 0, -1):  # labels T..1; index t - 1
            i = t - 1
            noise = per_sample_draws(4, T - t, slice(0, 8), (2,), normal)  # level T - t of the grid, noisiest first
            x_t = abar[i].sqrt() * x0 + (1 - abar[i]).sqrt() * noise
            eps = target.eps(x_t, float((1 - abar[i]).sqrt()), float(abar[i].sqrt()))
            mu_p = (x_t - betas[i] / (1 - abar[i]).sqrt() * eps) / alphas[i].sqrt()  # eq. 11
            bt = lambda j: betas[j] * (1 - abar[j - 1]) / (1 - abar[j])  # noqa: E731
            v = bt(i) if variance == "beta_tilde" and t > 1 else bt(1) if variance == "beta_tilde" else betas[i]
            if t > 1:
                mu_q = abar[i - 1].sqrt() * betas[i] / (1 - abar[i]) * x0 + alphas[i].sqrt() * (1 - abar[i - 1]) / (1 - abar[i]) * x_t
                kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu_q, bt(i).sqrt()),
                                                       torch.distributions.Normal(mu_p, v.sqrt())).sum(1)
                torch.testing.assert_close(r.terms["steps"][:, T - t], kl, rtol=1e-8, atol=1e-10)
            else:
                cdf = lambda z: torch.special.ndtr((z - mu_p) / v.sqrt())  # noqa: E731
                upper = torch.where(x0 >= 1, torch.ones_like(x0), cdf(x0 + bins.width / 2))
                lower = torch.where(x0 <= -1, torch.zeros_like(x0), cdf(x0 - bins.width / 2))
                torch.testing.assert_close(r.terms["decoder"], -torch.log(upper - lower).sum(1), rtol=1e-6, atol=1e-8)
        prior = torch.distributions.kl_divergence(torch.distributions.Normal(abar[-1].sqrt() * x0, (1 - abar[-1]).sqrt()),
                                                  torch.distributions.Normal(0.0, 1.0)).sum(1)
        torch.testing.assert_close(r.terms["prior"], prior)
        torch.testing.assert_close(r.nats, r.terms["prior"] + r.terms["steps"].sum(1) + r.terms["decoder"])


def test_vlb_bounds_the_exact_nll_and_tightens_with_more_steps():
    target = mixture(DiscreteVP.linear(1000))
    x = data(target, 2048)
    exact = -target.log_prob(x)
    for variance in ("beta_tilde", "beta"):
        gaps = []
        for steps in (10, 100, 1000):
            gap = vlb(target, x, steps=steps, spacing="linspace", variance=variance, progress=False) - exact
            se = float(gap.std() / math.sqrt(len(gap)))
            assert float(gap.mean()) > -3 * se, (variance, steps)  # an upper bound, up to the noise draws
            gaps.append((float(gap.mean()), se))
        for (coarse, se1), (fine, se2) in zip(gaps, gaps[1:]):
            assert coarse - fine > 3 * math.hypot(se1, se2), (variance, gaps)


def test_results_do_not_depend_on_the_batching():
    """Each sample's noise draws depend on (seed, level, its index in x0) alone: the bound is the same whatever
    batch_size; the ODE's dequantization and probes likewise (the solver's shared steps move the result within its
    tolerance)."""
    target = mixture(DiscreteVP.linear(1000))
    x = data(target, 150)
    whole = vlb(target, x, steps=20, seed=3, batch_size=None, progress=False)
    torch.testing.assert_close(vlb(target, x, steps=20, seed=3, batch_size=7, progress=False), whole)
    assert not torch.equal(vlb(target, x, steps=20, seed=4, progress=False), whole)  # the seed does matter
    x3 = GaussianMixture([1.0], [[0.0] * 40], [0.5], schedule=DiscreteVP.linear(1000)).sample(
        20, generator=torch.Generator().manual_seed(0)).double()
    bins = Bins(17)
    x3 = bins.low + torch.round((x3.clamp(-1, 1) - bins.low) / bins.width) * bins.width
    gauss = GaussianMixture([1.0], [[0.0] * 40], [0.5], schedule=DiscreteVP.linear(1000))
    one = ode_nll(gauss, x3, bins=17, seed=1, batch_size=None, progress=False)
    split = ode_nll(gauss, x3, bins=17, seed=1, batch_size=8, progress=False)
    torch.testing.assert_close(split, one, rtol=0, atol=0.02)


def test_vlb_gaussian_decoder_and_result_object():
    target = mixture(DiscreteVP.linear(1000))
    x = data(target, 64)
    r = vlb(target, x, steps=50, details=True, progress=False)
    assert isinstance(r, NLLResult) and r.method == "vlb" and r.nfe == 50 and r.dims == 2
    torch.testing.assert_close(r.bits_per_dim, r.nats / (2 * math.log(2)))
    assert r.sem() == pytest.approx(float(r.bits_per_dim.std() / 8))
    d = r.to_dict()
    json.dumps(d)
    assert d["samples"] == 64 and len(d["terms_bits_per_dim"]["steps"]) == 49
    # the tensor by default: the same numbers (same seed)
    torch.testing.assert_close(vlb(target, x, steps=50, progress=False), r.nats)


def test_likelihood_inputs_are_checked_before_any_evaluation():
    target = mixture(DiscreteVP.linear(100))
    with pytest.raises(ValueError, match="shape"):
        vlb(target, torch.zeros(4, 3), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        ode_nll(target, torch.full((4, 2), math.nan), progress=False)
    with pytest.raises(ValueError, match="evenly spaced"):
        vlb(target, torch.full((4, 2), 0.01), bins=17, progress=False)
    with pytest.raises(ValueError, match="learned variance channels"):
        vlb(target, torch.zeros(4, 2), variance="learned", progress=False)
    with pytest.raises(ValueError, match="analytic_variance"):
        vlb(target, torch.zeros(4, 2), variance="analytic", progress=False)
    with pytest.raises(ValueError, match="divergence"):
        ode_nll(target, torch.zeros(4, 2), divergence="trace", progress=False)


def test_both_estimators_run_on_a_loaded_diffusers_model():
    """A tiny diffusers UNet2DModel through scoregen's interop: finite per-sample results, deterministic given the seed,
    the bound on 17-valued data (a probability: positive) and the ODE with Hutchinson's divergence (64 dimensions)."""
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler, UNet2DModel

    from scoregen.interop.diffusers import from_diffusers

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    model = from_diffusers(unet, DDPMScheduler(num_train_timesteps=1000), time="fractional")
    x0 = (torch.randint(0, 17, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0)) / 8.0 - 1.0)
    bound = vlb(model, x0, steps=10, bins=17, progress=False)
    assert bound.shape == (4,) and torch.isfinite(bound).all() and (bound > 0).all()
    torch.testing.assert_close(bound, vlb(model, x0, steps=10, bins=17, progress=False))
    r = ode_nll(model, x0[:2], bins=17, rtol=1e-2, atol=1e-2, sigma_max=5.0, details=True, progress=False)  # a random
    # network's field is rough: loose tolerances and a shorter range keep this test short
    assert r.info["divergence"] == "hutchinson" and torch.isfinite(r.nats).all() and r.nfe > 0
