"""On a single Gaussian target every sampler is a linear Gaussian chain, so its output law is known exactly.

For x0 ~ N(mu, s^2 I) the exact eps at level (m, sigma) is sigma (x - m mu) / v with v = m^2 s^2 + sigma^2,
so each step maps (mean, variance) linearly. Recomputing those recursions here in float64, from the
update rules as written in the papers, predicts the sampler's output distribution *including* its
discretisation error: the samples must match the prediction within sampling error, whatever the grid.
"""

import math

import numpy as np
import pytest

import scoregen as sg

MU, S, D, N = 0.7, 0.3, 4, 20000


def _target():
    return sg.GaussianMixture([1.0], [[MU] * D], [S])


def _grid(schedule, steps):
    m, sigma = schedule.levels(steps)
    return list(m) + [1.0], list(sigma) + [0.0]


def _predict_ddim(m, sigma, eta):
    """Song et al. eq. 12 with c = eta * sqrt(posterior variance), as (mean, var) recursions."""
    mean, var = 0.0, m[0] ** 2 + sigma[0] ** 2
    for i in range(len(m) - 1):
        v = m[i] ** 2 * S**2 + sigma[i] ** 2
        # x0_hat = (x - sigma eps)/m with eps = sigma (x - m mu)/v: x0_hat = a x + b
        a, b = (1 - sigma[i] ** 2 / v) / m[i], sigma[i] ** 2 * MU / v
        # eps = sigma/v x - sigma m mu / v
        e_a, e_b = sigma[i] / v, -sigma[i] * m[i] * MU / v
        alpha_ts = (m[i] / m[i + 1]) ** 2
        beta_ts = sigma[i] ** 2 - alpha_ts * sigma[i + 1] ** 2
        post_var = beta_ts * sigma[i + 1] ** 2 / sigma[i] ** 2
        c2 = eta**2 * post_var
        d = math.sqrt(sigma[i + 1] ** 2 - c2)
        k, k0 = m[i + 1] * a + d * e_a, m[i + 1] * b + d * e_b
        mean, var = k * mean + k0, k**2 * var + c2
    return mean, var


def _predict_ddpm(m, sigma, variance):
    """Ho et al. eq. 11 on the grid: mu = (x - beta/sigma eps)/sqrt(alpha), + sqrt(v) z except on the last step."""
    mean, var = 0.0, m[0] ** 2 + sigma[0] ** 2
    for i in range(len(m) - 1):
        v = m[i] ** 2 * S**2 + sigma[i] ** 2
        alpha_ts = (m[i] / m[i + 1]) ** 2
        beta_ts = sigma[i] ** 2 - alpha_ts * sigma[i + 1] ** 2
        k = (1 - beta_ts / v) / math.sqrt(alpha_ts)
        k0 = beta_ts * m[i] * MU / v / math.sqrt(alpha_ts)
        noise = 0.0 if i == len(m) - 2 else (beta_ts * sigma[i + 1] ** 2 / sigma[i] ** 2 if variance == "beta_tilde" else beta_ts)
        mean, var = k * mean + k0, k**2 * var + noise
    return mean, var


def _predict_langevin(sigmas, T, step_lr, final_denoise):
    mean, var = 0.0, 1 + sigmas[0] ** 2
    for sig in sigmas:
        a = step_lr * sig**2 / sigmas[-1] ** 2
        v = S**2 + sig**2
        for _ in range(T):
            mean, var = mean + a / v * (MU - mean), (1 - a / v) ** 2 * var + 2 * a
    if final_denoise:
        v = S**2 + sigmas[-1] ** 2
        k = 1 - sigmas[-1] ** 2 / v
        mean, var = k * mean + (1 - k) * MU, k**2 * var
    return mean, var


def _assert_law(x, mean, var):
    x = x.double().numpy().ravel()
    n = len(x)
    # standard errors of the sample mean and variance of n Gaussian draws (5 SE bounds)
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / n), f"mean {x.mean():.5f} vs predicted {mean:.5f}"
    assert abs(x.var() - var) < 5 * var * math.sqrt(2 / n), f"variance {x.var():.6f} vs predicted {var:.6f}"


@pytest.mark.parametrize("schedule_name", ["linear", "cosine", "ve"])
@pytest.mark.parametrize("steps", [None, 10])
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_matches_its_exact_chain(schedule_name, steps, variance):
    schedule = {"linear": sg.DiscreteVP.linear(), "cosine": sg.DiscreteVP.cosine(),
                "ve": sg.DiscreteVE.geometric(5.0, 0.01, 50)}[schedule_name]
    target = sg.GaussianMixture([1.0], [[MU] * D], [S], schedule=schedule)
    mean, var = _predict_ddpm(*_grid(schedule, steps), variance)
    x = sg.sample(target, "ddpm", N // D, seed=1, steps=steps, variance=variance, progress=False).samples
    _assert_law(x, mean, var)


@pytest.mark.parametrize("steps", [5, 50])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_its_exact_chain(steps, eta):
    target = _target()
    mean, var = _predict_ddim(*_grid(target.schedule, steps), eta)
    x = sg.sample(target, "ddim", N // D, seed=2, steps=steps, eta=eta, progress=False).samples
    _assert_law(x, mean, var)


def test_few_step_samplers_are_measurably_biased_on_narrow_data():
    # The prediction is not trivially the target: at 5 DDIM steps the exact chain misses Var = S^2 by far more
    # than the sampling error, so the tests above would catch a sampler that ignored its grid.
    _, var = _predict_ddim(*_grid(_target().schedule, 5), 0.0)
    assert abs(var - S**2) > 10 * S**2 * math.sqrt(2 / N)


@pytest.mark.parametrize("final_denoise", [False, True])
def test_langevin_matches_its_exact_chain(final_denoise):
    sigmas = list(np.geomspace(3.0, 0.05, 6))
    T, step_lr = 20, 2e-4
    mean, var = _predict_langevin(sigmas, T, step_lr, final_denoise)
    x = sg.sample(_target(), "langevin", N // D, seed=3, levels=6, steps_per_level=T, step_lr=step_lr,
                  sigma_max=3.0, sigma_min=0.05, final_denoise=final_denoise, progress=False).samples
    _assert_law(x, mean, var)
