"""Every sampler lands on exact Gaussian-mixture targets, and sample()'s contract holds.

Targets have zero model error (the mixture's eps is closed form), so what the statistical checks see is
sampling noise plus the sampler's own discretisation error. The tolerances come from the sample size
(see stats.py: every statistic is compared in units of its standard error, family-wise z = 5 with a
Bonferroni correction). Each sampler configuration below was chosen so that its discretisation error,
measured separately with 60,000-100,000 samples and rescaled to the test's sample size, is well inside
that tolerance; the measured bias is noted next to each case (in standard errors at the test's n).
For contrast, DDIM (eta = 0) at 10 steps is biased by ~21 SE on the same target: see
test_the_checks_detect_a_too_coarse_grid.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.schedules import DiscreteVE, DiscreteVP
from stats import assert_matches_mixture, network_model

N = 6000  # TRI's lightest component (w = 0.2) gets ~1200 samples: the variance SE is 2.9%


def tri() -> sg.GaussianMixture:
    """3 components in 2-D, unequal weights and stds; the closest pair (1, 2) is 4.7 apart = 9.4 of the
    larger std (>= 6 std required; stats.py needs >= 4 (s_i + s_j) = 3.6). Non-zero overall mean."""
    return sg.GaussianMixture([0.5, 0.3, 0.2], [[-2.5, -1.0], [2.5, -0.5], [0.0, 3.5]], [0.3, 0.4, 0.5], name="tri")


TRI = tri()


# Langevin: a_i / sigma_i^2 = 0.2 (NCSN's ratio, the default step_lr) with 20 levels x 100 steps. The
# unadjusted Langevin step pulls the mode weights towards equal (here: component 0 light, 2 heavy):
# measured 3.5-4.8 SE at 10 levels (the default in 2-D), 1.7-1.9 SE at 20 levels, 1.7-2.1 at 40.
LANGEVIN = dict(levels=20, steps_per_level=100)
VE_GRID = DiscreteVE.geometric(8.0, 0.01, L=7)  # 7 trained levels: Langevin's 20 fall between them (fractional t)

# id: (model builder, target, sampler, options, n). Measured discretisation bias, worst statistic, in SE at n:
CASES = {
    # -2.5% variance for the s=0.3 component (matches the exact linear-Gaussian chain): 1.4 SE
    "ddpm-beta_tilde-1000": (lambda: TRI, TRI, "ddpm", dict(variance="beta_tilde"), N),
    "ddpm-beta-1000": (lambda: TRI, TRI, "ddpm", dict(variance="beta"), N),  # 0.6-0.8 SE
    # respaced chain on 250 of the 1000 levels: 1.5-1.6 SE with beta (+3% variance; beta_tilde: -8.5%, 4.6 SE,
    # too close to the 5.5 SE limit; at 100 steps beta is 4.2 SE off)
    "ddpm-beta-250": (lambda: TRI, TRI, "ddpm", dict(variance="beta", steps=250), N),
    # DDIM eta=0: 21 SE at 10 steps, 10.8 at 25, 5.7 at 50, 2.9 at 100, 1.05 at 250, 0.4 at 500
    "ddim-eta0-250": (lambda: TRI, TRI, "ddim", dict(eta=0.0, steps=250), N),
    # DDIM eta=1 (= DDPM beta_tilde): 15 SE at 50 steps, 9.9 at 100, 4.6 at 250, 2.4 at 500, 1.4 at 1000
    "ddim-eta1-1000": (lambda: TRI, TRI, "ddim", dict(eta=1.0, steps=1000), N),
    # annealed Langevin through NetworkScoreModel: VE network (fractional labels between 7 trained sigmas)
    "langevin-ve-net": (lambda: network_model(TRI, VE_GRID), TRI, "langevin", LANGEVIN, N),
    # ... and on a DDPM network: VE levels -> VP labels by log-SNR, inputs rescaled by sqrt(abar)
    "langevin-vp-net": (lambda: network_model(TRI, DiscreteVP.linear()), TRI, "langevin",
                        dict(LANGEVIN, sigma_max=8.0, sigma_min=0.02), N),
    "langevin-ve-net-final-denoise": (lambda: network_model(TRI, VE_GRID), TRI, "langevin",
                                      dict(LANGEVIN, final_denoise=True), N),
    # DDPM ancestral sampling on an NCSN grid (alpha = 1: reverse diffusion), 500 geometric sigmas 50 -> 0.01:
    # 0.7-0.9 SE (200 sigmas: 2.3-2.4 SE)
    "ddpm-on-ncsn-grid": (lambda: network_model(TRI, DiscreteVE.geometric(50.0, 0.01, L=500)), TRI, "ddpm", {}, N),
    # the built-in ring: 8 components of std 0.1; n = 8000 gives 1000 per component. 1.3 SE with beta
    # (beta_tilde underestimates the narrow components' variance by ~4%: 2.7 SE)
    "ring2d-ddpm-beta": (lambda: sg.load_target("ring2d"), sg.load_target("ring2d"), "ddpm", dict(variance="beta"), 8000),
}


@pytest.mark.parametrize(
    "schedule, sigma_min", [(VE_GRID, 0.01), (DiscreteVP.linear(), 0.02)], ids=["ve-net", "vp-net"]
)
def test_network_stand_in_answers_at_the_callers_level(schedule, sigma_min):
    """The Langevin cases query the network stand-ins between their trained labels: at each VE level Langevin
    visits, the NetworkScoreModel must give the mixture's exact eps (log-SNR -> fractional label -> the
    network's own (m, sigma), input rescaled by m_model / m_caller). Also a precondition of those cases: the
    labels really are fractional, so the sampler tests exercise the interpolation."""
    model = network_model(TRI, schedule)
    seen = []
    net = model.net
    model.net = lambda x, t: (seen.append(t[0].item()), net(x, t))[1]
    x = TRI.sample(256, torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in np.geomspace(8.0, sigma_min, LANGEVIN["levels"]):
        noisy = x + float(sigma) * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        got, want = model.eps(noisy, float(sigma), 1.0), TRI.eps(noisy, float(sigma), 1.0)
        assert torch.allclose(got, want, rtol=1e-7, atol=1e-9), (sigma, (got - want).abs().max())
    assert sum(abs(t - round(t)) > 1e-3 for t in seen) >= LANGEVIN["levels"] // 2, seen


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_sampler_lands_on_exact_target(case):
    build, target, sampler, options, n = CASES[case]
    result = sg.sample(build(), sampler, n, seed=20240607, progress=False, **options)
    assert result.samples.shape == (n, *target.shape)
    assert_matches_mixture(result.samples, target, z=5.0, what=f"{case} samples")


def test_the_checks_detect_a_too_coarse_grid():
    """The same checks reject DDIM at 10 steps, whose variance for the narrowest component is 38% low
    (measured with 100,000 samples: 21 SE at n = 6000): the tolerances above see discretisation error."""
    result = sg.sample(TRI, "ddim", N, seed=1, steps=10, progress=False)
    with pytest.raises(AssertionError, match=r"variance of component 0 .*: -\d+\.\d+ SE"):
        assert_matches_mixture(result.samples, TRI, z=5.0)


MU0 = torch.tensor(TRI.means[0])
PERTURBATIONS = {
    # exact samples, component 0 spread by 1.15 (variance +32%; SE 1.8% at n_0 = 3000, d = 2: ~18 SE)
    "variance": (lambda x, k: torch.where((k == 0)[:, None], MU0 + 1.15 * (x - MU0), x), "variance of component 0"),
    # exact samples shifted by 0.1 along x (component 0's mean SE is 0.3 / sqrt(3000) = 0.0055: ~18 SE)
    "mean": (lambda x, k: x + torch.tensor([0.1, 0.0], dtype=x.dtype), "mean[0] of component 0"),
}


@pytest.mark.parametrize("kind", ["exact", *PERTURBATIONS, "weights"])
def test_stats_helper_accepts_exact_samples_and_names_what_is_wrong(kind):
    g = torch.Generator().manual_seed(11)
    if kind == "weights":
        # weights 0.45 / 0.35 / 0.2 instead of 0.5 / 0.3 / 0.2: 0.05 = 7.7 binomial SE at n = 6000
        wrong = sg.GaussianMixture([0.45, 0.35, 0.2], TRI.means, TRI.stds)
        samples, needle = wrong.sample(N, g, dtype=torch.float64), "weight of component 0"
    else:
        x, k = TRI.sample(N, g, dtype=torch.float64, return_components=True)
        samples, needle = (x, None) if kind == "exact" else (PERTURBATIONS[kind][0](x, k), PERTURBATIONS[kind][1])
    if needle is None:
        stats = assert_matches_mixture(samples, TRI)
        assert len(stats) == 3 * 4 + 2
    else:
        with pytest.raises(AssertionError, match=rf"{re.escape(needle)} = .*\): [+-]\d+\.\d\d SE"):
            assert_matches_mixture(samples, TRI)


# ------------------------------------------------------------------ exact identities


@pytest.mark.parametrize("steps", [1000, 100, 7])
def test_ddim_eta1_is_ddpm_beta_tilde(steps):
    """c = sqrt(beta_tilde) makes DDIM's update algebraically the DDPM posterior step, with the same noise
    draws in the same order: the samples agree to float64 rounding."""
    kw = dict(seed=5, steps=steps, dtype=torch.float64, progress=False)
    ddim = sg.sample(TRI, "ddim", 2000, eta=1.0, **kw).samples
    ddpm = sg.sample(TRI, "ddpm", 2000, variance="beta_tilde", **kw).samples
    assert torch.allclose(ddim, ddpm, rtol=0, atol=1e-9), (ddim - ddpm).abs().max()


RUNS = {
    "ddpm": ("ddpm", dict(steps=50)),
    "ddim-eta0": ("ddim", dict(steps=20, eta=0.0)),
    "ddim-eta0.5": ("ddim", dict(steps=20, eta=0.5)),
    "langevin": ("langevin", dict(levels=3, steps_per_level=5)),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_same_seed_same_samples_other_seed_other_samples(run):
    sampler, options = RUNS[run]
    a, b, c = (sg.sample(TRI, sampler, 300, seed=s, progress=False, **options) for s in (3, 3, 4))
    assert torch.equal(a.samples, b.samples)
    assert a.seed == 3 and c.seed == 4
    assert (a.samples != c.samples).float().mean() > 0.99


@pytest.mark.parametrize(
    "sampler, options, expected",
    [
        ("ddpm", {}, 1000),
        ("ddpm", dict(steps=100), 100),
        ("ddim", dict(steps=30), 30),
        ("ddim", dict(steps=1000), 1000),
        ("ddim", {}, 50),
        ("langevin", dict(levels=4, steps_per_level=7), 28),
        ("langevin", dict(levels=4, steps_per_level=7, final_denoise=True), 29),
    ],
)
def test_nfe_is_the_number_of_network_evaluations(sampler, options, expected):
    model = network_model(TRI, DiscreteVP.linear())
    result = sg.sample(model, sampler, 50, seed=0, progress=False, **options)
    assert model.net.calls == expected
    assert result.nfe == expected


@pytest.mark.parametrize(
    "sampler, options, message",
    [
        ("ddmp", {}, r"unknown sampler 'ddmp'.*'ddim'.*'ddpm'.*'langevin'"),
        ("ddpm", dict(stpes=10), r"'ddpm' has no option\(s\) \['stpes'\].*'steps'"),
        ("langevin", dict(eta=0.5), r"'langevin' has no option\(s\) \['eta'\].*'steps_per_level'"),
        ("ddpm", dict(variance="sigma"), r"variance must be one of \('beta_tilde', 'beta', 'learned', 'analytic'\), got 'sigma'"),
    ],
)
def test_bad_sampler_or_option_is_a_clear_value_error(sampler, options, message):
    with pytest.raises(ValueError, match=message):
        sg.sample(TRI, sampler, 10, seed=0, progress=False, **options)


@pytest.mark.parametrize(
    "sampler, options, calls",
    [("ddpm", dict(steps=20), 20), ("ddim", dict(steps=15), 15), ("langevin", dict(levels=5, steps_per_level=3), 5)],
)
def test_callback_once_per_step_in_order(sampler, options, calls):
    """Once per step (Langevin: once per noise level, after its inner steps), i = 0, 1, ..., levels descending."""
    seen = []
    sg.sample(TRI, sampler, 20, seed=0, progress=False, callback=lambda info: seen.append((info["i"], info["sigma"])), **options)
    assert [i for i, _ in seen] == list(range(calls))
    sigmas = [s for _, s in seen]
    assert all(a > b for a, b in zip(sigmas, sigmas[1:])), sigmas


@pytest.mark.parametrize("steps", [None, 50])
def test_clip_x0_keeps_ddpm_samples_in_range(steps):
    """ring2d lives on the circle of radius 2; clipping x0_hat to [-1, 1] at every step must keep every final
    sample in the box (the last DDPM step returns x0_hat itself). Without the hook the samples leave it."""
    ring, a = sg.load_target("ring2d"), 1.0
    free = sg.sample(ring, "ddpm", 1000, seed=0, steps=steps, progress=False).samples
    clipped = sg.sample(ring, "ddpm", 1000, seed=0, steps=steps, x0_hook=sg.clip_x0(-a, a), progress=False).samples
    assert free.abs().max() > 1.5 * a
    assert clipped.abs().max() <= a + 1e-5, clipped.abs().max()


class NaNModel(sg.ScoreModel):
    """Finite for the first few queries, then NaN: a network blowing up mid-run."""

    shape = (2,)
    schedule = DiscreteVP.linear()

    def __init__(self, finite_calls: int = 3):
        self.finite_calls, self.calls = finite_calls, 0

    def eps(self, x, sigma, m=1.0, y=None):
        self.calls += 1
        return torch.zeros_like(x) if self.calls <= self.finite_calls else torch.full_like(x, math.nan)


@pytest.mark.parametrize("sampler, options", [("ddpm", dict(steps=10)), ("ddim", dict(steps=10)), ("langevin", dict(levels=2, steps_per_level=5))])
def test_nan_from_the_model_raises_floating_point_error(sampler, options):
    # found at the evaluation that produced it (the 4th), not after the run
    with pytest.raises(FloatingPointError, match=rf"sampler '{sampler}': model evaluation 4 \(of 4 so far\) returned NaN"):
        sg.sample(NaNModel(), sampler, 10, seed=0, progress=False, **options)
