"""Reverse variances (scoregen.variance): beta_tilde, beta, learned and analytic (Analytic-DPM), in the ddpm sampler
and the variational bound, on exact targets."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.guidance import ClassifierFreeGuidance, ClassifierGuidance
from scoregen.likelihood import vlb
from scoregen.metrics import sliced_w2_to_mixture
from scoregen.models import ScoreModel, X0Hook, clip_x0
from scoregen.schedules import DiscreteVP
from scoregen.targets import GaussianMixture, load_target
from scoregen.variance import AnalyticVariance, analytic_variance, kernels, step_variance

LINEAR = DiscreteVP.linear(1000)


def grid_levels(schedule, every: int = 1):
    """(m, sigma) of every ``every``-th trained level, noisiest first, then the clean level."""
    m, s = schedule.levels()
    return list(m[::every]) + [1.0], list(s[::every]) + [0.0]


# ------------------------------------------------------------------------------------------ analytic
@pytest.mark.parametrize("every", [1, 100], ids=["trained", "respaced"])
def test_analytic_variance_is_beta_for_standard_normal_data_and_beta_tilde_for_a_point_mass(every):
    """Analytic-DPM's two limits: N(0, I) data (Gamma_t = sigma_t^2: the optimum is beta) and a point mass (Gamma = 1:
    the optimum is beta_tilde), on the trained steps and on a 10-step subsequence (the respaced chain's beta), the
    decoder step included (a point mass: its floor, the clipped beta_tilde)."""
    m, s = grid_levels(LINEAR, every)
    ks = kernels(m, s)
    levels = [a / b for a, b in zip(s[:-1], m[:-1])]
    normal = GaussianMixture([1.0], [[0.0] * 4], [1.0], schedule=LINEAR)
    n = 2048 if every == 1 else 8192
    gamma = analytic_variance(normal, normal.sample(n, generator=torch.Generator().manual_seed(0)), n=n, cache=False,
                              data_range=None).eps_sq_mean(levels)
    # 1 - Gamma's estimate is a mean of n * D squares of unit normals (times a factor <= 1, the control variate taking
    # the noises' own error out): relative sd at most sqrt(2 / (n D))
    tol = 4 * math.sqrt(2 / (n * 4))
    for k, g in zip(ks, gamma):
        v = step_variance("analytic", k, gamma=g)
        assert abs(v - k.beta) <= tol * k.b**2 * k.err + 1e-12 * k.beta, (v, k.beta, k.beta_tilde)
    point = GaussianMixture([1.0], [[0.3, -0.2, 0.1, 0.0]], [1e-6], schedule=LINEAR)
    av = analytic_variance(point, point.sample(256, generator=torch.Generator().manual_seed(0)), cache=False)
    for k, g in zip(ks, av.eps_sq_mean(levels)):
        assert step_variance("analytic", k, gamma=g, x0_bound=av.x0_bound) == pytest.approx(k.beta_tilde_clipped, rel=1e-6)


def test_analytic_variance_clips_to_the_data_range_bound():
    m, s = grid_levels(LINEAR, 100)
    k = kernels(m, s)[0]
    # Gamma = 0 (the model predicts no noise at all) would give beta_tilde + b^2 (sigma/m)^2; bounded data caps the
    # x0 error at ((hi - lo) / 2)^2
    assert step_variance("analytic", k, gamma=0.0) == pytest.approx(k.beta_tilde + k.b**2 * k.err)
    assert step_variance("analytic", k, gamma=0.0, x0_bound=1.0) == pytest.approx(k.beta_tilde + k.b**2)
    assert step_variance("analytic", k, gamma=1.7) == k.beta_tilde  # Gamma > 1 (noise in the estimate): the lower bound


@pytest.mark.parametrize("steps", [10, 50])
def test_analytic_variance_beats_both_fixed_variances_in_the_bound(steps):
    target = load_target("ring2d")
    x = target.sample(2048, generator=torch.Generator().manual_seed(1)).double()
    av = analytic_variance(target, target.sample(4096, generator=torch.Generator().manual_seed(2)), cache=False)
    bounds = {v: vlb(av, x, steps=steps, spacing="linspace", variance=v, seed=3, progress=False) for v in
              ("beta_tilde", "beta", "analytic")}
    for other in ("beta_tilde", "beta"):
        diff = bounds[other] - bounds["analytic"]  # same noise draws: a paired comparison
        assert float(diff.mean()) > 3 * float(diff.std()) / math.sqrt(len(diff)), (steps, other)


def test_analytic_variance_samples_as_well_as_the_better_fixed_variance():
    """Sample quality on a 64-D mixture at 20 steps (sliced W2 to the exact mixture, 3 seeds): analytic is far better
    than beta_tilde and matches beta (within two standard errors); it does not beat beta here (docs/likelihood.md)."""
    target = load_target("gmm64")
    av = analytic_variance(target, target.sample(4096, generator=torch.Generator().manual_seed(6)), cache=False)
    score = {v: [sliced_w2_to_mixture(sg.sample(av, "ddpm", n=4096, seed=s, steps=20, variance=v, progress=False).samples,
                                      target) for s in range(3)] for v in ("beta_tilde", "beta", "analytic")}
    mean = {k: np.mean(v) for k, v in score.items()}
    se = {k: np.std(v, ddof=1) / math.sqrt(3) for k, v in score.items()}
    assert mean["analytic"] < 0.5 * mean["beta_tilde"]
    assert abs(mean["analytic"] - mean["beta"]) < 2 * math.hypot(se["analytic"], se["beta"]) + 0.002


def test_analytic_estimates_are_cached_on_disk(tmp_path):
    target = load_target("ring2d")
    data = target.sample(512, generator=torch.Generator().manual_seed(0))
    first = AnalyticVariance(target, data, n=256, cache_dir=tmp_path)
    gamma = first.eps_sq_mean([0.5, 2.0])
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".json")

    class NoEval(GaussianMixture):
        def eps(self, *a, **k):
            raise AssertionError("a cached level was evaluated again")

    again = AnalyticVariance(target, data, n=256, cache_dir=tmp_path)
    again.model = NoEval(target.weights, target.means, target.stds, schedule=target.schedule)
    np.testing.assert_array_equal(again.eps_sq_mean([2.0, 0.5]), gamma[::-1])
    # other settings (another n): another entry
    AnalyticVariance(target, data, n=128, cache_dir=tmp_path).eps_sq_mean([0.5])
    assert len(os.listdir(tmp_path)) == 2
    # a transformed model (an x0 hook changes eps, but not the fingerprint) is estimated in memory only
    hooked = AnalyticVariance(X0Hook(target, clip_x0(-0.5, 0.5)), data, n=256, cache_dir=tmp_path)
    assert hooked.eps_sq_mean([0.5])[0] != gamma[0] and len(os.listdir(tmp_path)) == 2


def test_ddpm_analytic_runs_on_respaced_grids_and_needs_the_wrapper():
    target = load_target("ring2d")
    with pytest.raises(ValueError, match="analytic_variance"):
        sg.sample(target, "ddpm", n=4, steps=10, variance="analytic", progress=False)
    av = analytic_variance(target, target.sample(1024, generator=torch.Generator().manual_seed(0)), cache=False)
    a = sg.sample(av, "ddpm", n=64, seed=0, steps=10, variance="analytic", progress=False).samples
    b = sg.sample(av, "ddpm", n=64, seed=0, steps=10, variance="analytic", progress=False).samples
    assert torch.isfinite(a).all() and torch.equal(a, b)


# ------------------------------------------------------------------------------------------ learned
class Learned(ScoreModel):
    """An exact mixture's eps with a fixed learned-variance weight v (a network with variance channels, in effect)."""

    learned_variance = True

    def __init__(self, target: GaussianMixture, v: float):
        self.target, self.v, self.shape, self.schedule = target, v, target.shape, target.schedule
        self.num_classes = getattr(target, "num_classes", None)

    def eps_and_variance(self, x, sigma, m=1.0, y=None):
        return self.target.eps(x, sigma, m, y), torch.full_like(x, self.v)

    def eps(self, x, sigma, m=1.0, y=None):
        return self.eps_and_variance(x, sigma, m, y)[0]


@pytest.mark.parametrize("v, fixed", [(1.0, "beta"), (0.0, "beta_tilde")])
def test_learned_variance_at_its_ends_is_beta_or_beta_tilde(v, fixed):
    target = load_target("ring2d")
    model = Learned(target, v)
    a = sg.sample(model, "ddpm", n=32, seed=5, steps=20, variance="learned", progress=False).samples
    b = sg.sample(target, "ddpm", n=32, seed=5, steps=20, variance=fixed, progress=False).samples
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # float32 samples: the same up to rounding
    x = target.sample(16, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(vlb(model, x, steps=20, variance="learned", progress=False),
                               vlb(target, x, steps=20, variance=fixed, progress=False))


def test_learned_variance_between_the_ends_interpolates_in_log_space():
    m, s = grid_levels(LINEAR, 100)
    k = kernels(m, s)[3]
    v = torch.tensor([0.25])
    assert float(step_variance("learned", k, v=v)) == pytest.approx(k.beta**0.25 * k.beta_tilde**0.75)


def test_guidance_and_hooks_pass_the_learned_variance_on():
    target = load_target("ring2d")
    model = Learned(target, 0.3)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.zeros(8, dtype=torch.long)
    for stack in (ClassifierGuidance(model, target.classifier, 2.0), ClassifierFreeGuidance(model, None, 1.5),
                  X0Hook(model, clip_x0(-3, 3))):
        assert stack.learned_variance
        eps, v = stack.eps_and_variance(x, 0.7, 0.8, y)
        torch.testing.assert_close(v, torch.full_like(x, 0.3))
        torch.testing.assert_close(eps, stack.eps(x, 0.7, 0.8, y))
    # through sample()'s guard, with guidance
    out = sg.sample(ClassifierGuidance(model, target.classifier, 1.0), "ddpm", n=16, seed=0, steps=10, y=0,
                    variance="learned", progress=False)
    assert torch.isfinite(out.samples).all() and out.nfe == 10


def test_a_transform_that_drops_the_learned_variance_says_so():
    class EpsOnly(sg.models.ModelTransform):  # implements eps alone: it cannot pass v on
        def eps(self, x, sigma, m=1.0, y=None):
            return self.model.eps(x, sigma, m, y)

    model = EpsOnly(Learned(load_target("ring2d"), 0.5))
    assert not model.learned_variance
    with pytest.raises(ValueError, match="learned variance channels"):
        sg.sample(model, "ddpm", n=4, steps=10, variance="learned", progress=False)


def test_learned_variance_is_refused_for_a_model_without_it():
    with pytest.raises(ValueError, match="learned variance channels"):
        sg.sample(load_target("ring2d"), "ddpm", n=4, steps=10, variance="learned", progress=False)
    with pytest.raises(ValueError, match="variance must be one of"):
        sg.sample(load_target("ring2d"), "ddpm", n=4, steps=10, variance="fixed", progress=False)


def test_learned_range_matches_diffusers_ddpm_scheduler_step_for_step():
    """A diffusers UNet with 2C outputs and DDPMScheduler(variance_type="learned_range"): scoregen's ddpm with
    variance="learned" follows diffusers' own loop (same initial noise, same generator draws) to float32 rounding."""
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler, UNet2DModel

    from scoregen.interop.diffusers import from_diffusers
    from scoregen.samplers import ddpm

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    scheduler = DDPMScheduler(num_train_timesteps=100, variance_type="learned_range", clip_sample=False)
    model = from_diffusers(unet, scheduler)
    assert model.learned_variance
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = ddpm(model, z, variance="learned", generator=torch.Generator().manual_seed(2), progress=False)
        scheduler.set_timesteps(100)
        x, g = z.clone(), torch.Generator().manual_seed(2)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=g).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
