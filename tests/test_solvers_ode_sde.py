"""edm, ipndm and ode (scoregen.samplers.ode) and euler_maruyama and pc (scoregen.samplers.sde).

Three kinds of check:

* identities and peers, to rounding: edm without churn is heun; edm with churn is k-diffusion's ``sample_heun`` fed
  the same noise; ipndm is the published iPNDM step for step; ode is the closed-form probability-flow ODE solution
  of a Gaussian, and its NFE is scipy's count + 1.
* exact recursions: on a Gaussian target every update of euler_maruyama and pc is linear in x (pc's given its step
  size), so the mean and the variance of the samples after any number of steps follow a scalar recursion (pc's up
  to the noise of its batch-mean step size, negligible at n = 20000). Checked where the predicted moments are far
  (10+ SE) from the target's: a wrong coefficient anywhere shows. A two-level pc run written out checks its order.
* sample statistics on exact targets (tests/stats.py: every statistic in units of its standard error at the test's
  n, family-wise z = 5 with a Bonferroni correction). The discretisation bias of each configuration was measured
  separately with 100,000 samples (two seeds) and rescaled to the test's n; it is noted next to each case.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.streams import SampleStreams
from scoregen.samplers.grids import step_grid
from scoregen.samplers.ode import ODE_METHODS, ODESolverError, edm, euler, heun, ipndm, ode
from scoregen.samplers.sde import euler_maruyama, pc
from stats import Stat, assert_matches_mixture, bonferroni_z

F64 = dict(dtype=torch.float64, progress=False)
TRI = sg.GaussianMixture([0.5, 0.3, 0.2], [[-2.5, -1.0], [2.5, -0.5], [0.0, 3.5]], [0.3, 0.4, 0.5], name="tri")
RING = sg.load_target("ring2d")
MU, C = (0.7, -0.3), 0.5
GAUSS = sg.GaussianMixture([1.0], [list(MU)], [C], name="gauss")  # N(mu, c^2 I) in 2-D; default grid VE 157 -> 0.01


def prior_ve(model, z, grid):
    """The state every VE-coordinate sampler starts from (``_common.begin``): z * sqrt(m0^2 + sigma0^2) / m0."""
    return z * math.sqrt(grid.m[0] ** 2 + grid.sigma[0] ** 2) / grid.m[0]


def noise(n, seed, d=2):
    """The float64 initial noise of samples 0..n-1 of a sample() run with ``seed``."""
    return SampleStreams(seed, 0, n, (d,), dtype=torch.float64).normal()


def denoiser(model):
    """The model as a k-diffusion style VE denoiser: D(x, sigma) = x0_hat = x - sigma * eps(x, sigma)."""
    def D(x, sigma):
        s = float(sigma.reshape(-1)[0])
        return x - s * model.eps(x, s, 1.0)
    return D


def assert_moments(samples, mean, var, what, z=5.0):
    """Samples (n, d) against a Gaussian's mean (d,) and isotropic variance: per-coordinate means (SE sqrt(var / n))
    and the variance pooled over coordinates around the known mean (SE var sqrt(2 / (n d))), Bonferroni over d + 1."""
    x = torch.as_tensor(samples, dtype=torch.float64).numpy()
    n, d = x.shape
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), (d,))
    stats = [Stat(f"mean[{j}]", x[:, j].mean(), mean[j], math.sqrt(var / n)) for j in range(d)]
    stats.append(Stat("variance", ((x - mean) ** 2).sum() / (n * d), var, var * math.sqrt(2.0 / (n * d))))
    limit = bonferroni_z(z, d + 1)
    bad = [st for st in stats if not abs(st.z) <= limit]
    assert not bad, f"{what}: " + "; ".join(map(str, bad)) + f" (limit {limit:.2f} SE)"
    return stats


# ----------------------------------------------------------------------------- edm


def test_edm_without_churn_is_heun_bit_for_bit():
    ref = sg.sample(TRI, heun, 500, seed=1, **F64)
    assert ref.nfe == 2 * 18 - 1
    for options in (dict(), dict(s_churn=0.0, s_noise=1.5), dict(s_churn=30.0, s_tmin=200.0),  # no level in range
                    dict(s_churn=30.0, s_tmax=1e-3)):
        got = sg.sample(TRI, edm, 500, seed=1, **F64, **options)
        assert torch.equal(got.samples, ref.samples), options
        assert got.nfe == ref.nfe


@pytest.mark.parametrize("s_tmin", [0.0, 0.5], ids=["churn-everywhere", "churn-above-0.5"])
def test_edm_matches_kdiffusion_sample_heun_with_churn(s_tmin):
    """k-diffusion draws torch.randn_like(x) at every level (used where gamma > 0); edm draws from its generator at
    the churning levels only. With the same seed in both, and churn at the first levels (s_tmax = inf), the noises
    used coincide: the two agree to rounding (measured 7e-15)."""
    try:
        from scoregen.bench.peers import load_kdiffusion

        kd = load_kdiffusion()
    except ImportError:
        pytest.skip("k-diffusion is not installed")
    grid = step_grid(TRI, 18, "karras")
    z = noise(300, 5)
    ours = edm(TRI, z, steps=18, s_churn=10.0, s_tmin=s_tmin, generator=torch.Generator().manual_seed(7),
               progress=False)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        sigmas = torch.tensor(grid.s, dtype=torch.float64)
        theirs = kd.sampling.sample_heun(denoiser(TRI), prior_ve(TRI, z, grid), sigmas, disable=True, s_churn=10.0,
                                         s_tmin=s_tmin)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    plain = heun(TRI, z, steps=18, progress=False)
    assert (ours - plain).abs().max() > 0.01  # the churn did something


def test_edm_with_churn_lands_on_target():
    # 64 steps, s_churn = 10 (gamma = 0.156 at every level): +1.2 / +1.4 SE (variance of component 0); at 32 steps
    # and s_churn = 10 it is +5.0 SE, at 64 steps with EDM's ImageNet churn (40, tmin 0.05, tmax 10, noise 1.003) +3.1.
    result = sg.sample(TRI, edm, 6000, seed=3, steps=64, s_churn=10.0, **F64)
    assert result.nfe == 127
    assert_matches_mixture(result.samples, TRI, what="edm (s_churn=10, 64 steps)")


def test_edm_options_are_checked():
    for bad, match in ((dict(s_churn=-1.0), "s_churn"), (dict(s_churn=float("nan")), "s_churn"),
                       (dict(s_tmin=-0.1), "s_tmin"), (dict(s_tmax=-1.0), "s_tmax"),
                       (dict(s_tmin=2.0, s_tmax=1.0), r"s_tmax .* >= 2"), (dict(s_tmax=-math.inf), "s_tmax"),
                       (dict(s_noise=True), "s_noise"), (dict(s_noise="1"), "s_noise")):
        with pytest.raises(ValueError, match=match):
            edm(TRI, noise(4, 0), steps=3, progress=False, **bad)


# ----------------------------------------------------------------------------- ipndm


def reference_ipndm(D, x, sigmas, max_order):
    """iPNDM as published in the k-diffusion samplers of zju-pi/diff-sampler (ComfyUI's ``sample_ipndm``), written
    independently: slopes d = (x - D(x, t)) / t, Adams-Bashforth weights over the current and up to max_order - 1
    previous slopes, x = D(x, t) on the step to t = 0. Returns the state after every step."""
    weights = {1: (1,), 2: (3, -1), 3: (23, -16, 5), 4: (55, -59, 37, -9)}
    divisor = {1: 1, 2: 2, 3: 12, 4: 24}
    slopes, out, s_in = [], [], x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        t, t_next = sigmas[i], sigmas[i + 1]
        denoised = D(x, t * s_in)
        d = (x - denoised) / t
        k = min(max_order, i + 1)
        if t_next == 0:
            x = denoised
        else:
            history = [d] + slopes[::-1][: k - 1]
            x = x + (t_next - t) * sum(w * h for w, h in zip(weights[k], history)) / divisor[k]
        slopes = (slopes + [d])[-(max_order - 1):] if max_order > 1 else []
        out.append(x)
    return out


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_matches_the_reference_step_for_step(order):
    """Same karras grid with its trailing 0, the same model as a VE denoiser, float64: every intermediate state
    agrees (measured within 2e-13). k-diffusion 0.1.1 (installed) has no sample_ipndm; a later one is used if
    present."""
    steps = 12
    grid = step_grid(TRI, steps, "karras")
    z = noise(300, 5)
    seen = []
    ours = ipndm(TRI, z, steps=steps, order=order, variable_step=False, progress=False,
                 callback=lambda info: seen.append(info["x"].clone()))
    sigmas = torch.tensor(grid.s, dtype=torch.float64)
    theirs = reference_ipndm(denoiser(TRI), prior_ve(TRI, z, grid), sigmas, order)
    assert len(seen) == len(theirs) == steps
    for i, (a, b) in enumerate(zip(seen, theirs)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"step {i}: {m}")
    try:
        from scoregen.bench.peers import load_kdiffusion

        kd_ipndm = getattr(load_kdiffusion().sampling, "sample_ipndm", None)
    except ImportError:
        kd_ipndm = None
    if kd_ipndm is not None:
        peer = kd_ipndm(denoiser(TRI), prior_ve(TRI, z, grid), sigmas, disable=True, max_order=order)
        torch.testing.assert_close(ours, peer, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_variable_step_ipndm_matches_kdiffusion_lms_step_for_step(order):
    """variable_step=True (the Adams-Bashforth weights of the actual steps) is k-diffusion's ``sample_lms``, whose weights integrate the
    same Lagrange polynomials with scipy's quad (exact for polynomials): every state agrees in float64."""
    from scoregen.bench.peers import load_kdiffusion

    steps = 12
    grid = step_grid(TRI, steps, "karras")
    z = noise(301, 5)
    seen = []
    ipndm(TRI, z, steps=steps, order=order, variable_step=True, progress=False,
          callback=lambda info: seen.append(info["x"].clone()))
    states = []
    ref_final = load_kdiffusion().sampling.sample_lms(
        denoiser(TRI), prior_ve(TRI, z, grid), torch.tensor(grid.s, dtype=torch.float64), disable=True, order=order,
        callback=lambda info: states.append(info["x"].clone()))
    # k-diffusion's callback sees x before step i's update: states[i + 1] is after step i
    for i in range(steps - 1):
        torch.testing.assert_close(seen[i], states[i + 1], rtol=1e-10, atol=1e-10, msg=lambda m: f"step {i}: {m}")
    torch.testing.assert_close(seen[-1], ref_final, rtol=1e-10, atol=1e-10)


def test_ipndm_order_1_is_euler_and_higher_orders_are_more_accurate():
    """Order 1 is Euler bit for bit. On a Gaussian (closed-form ODE solution), orders 2-4 at 25 karras steps are far
    closer to the exact map than Euler (measured max errors 0.19, 0.023, 0.013, 0.018; heun at 25 steps: 0.048).
    The fixed Adams-Bashforth weights ignore the grid's uneven steps, so order 4 is not always better than 3."""
    z = noise(200, 2)
    assert torch.equal(ipndm(GAUSS, z, steps=12, order=1, progress=False), euler(GAUSS, z, steps=12, progress=False))
    grid = step_grid(GAUSS, 25, "karras")
    x0 = prior_ve(GAUSS, z, grid)
    mu = torch.tensor(MU, dtype=torch.float64)
    s0, s1 = grid.s[0], grid.s[-2]
    x_end = mu + math.sqrt(C**2 + s1**2) / math.sqrt(C**2 + s0**2) * (x0 - mu)  # exact ODE solution at s1
    exact = x_end - s1 * GAUSS.eps(x_end, s1, 1.0)  # then the same Euler step to 0
    errors = [(ipndm(GAUSS, z, steps=25, order=k, variable_step=False, progress=False) - exact).abs().max().item()
              for k in (1, 2, 3, 4)]
    assert max(errors[1:]) < errors[0] / 5, errors
    # variable-step weights (no Euler landing) against the exact solution at 0: each order better
    exact0 = mu + C / math.sqrt(C**2 + s0**2) * (x0 - mu)
    errors = [(ipndm(GAUSS, z, steps=25, order=k, variable_step=True, progress=False) - exact0).abs().max().item()
              for k in (1, 2, 3, 4)]
    assert all(b < a for a, b in zip(errors, errors[1:])) and errors[3] < errors[0] / 5, errors
    assert sg.sample(GAUSS, ipndm, 10, seed=0, steps=7, **F64).nfe == 7
    with pytest.raises(ValueError, match="order"):
        ipndm(GAUSS, z, order=5)


# ----------------------------------------------------------------------------- ode


def closed_form_ode(model, z, s_end):
    """The exact probability-flow ODE map of N(mu, c^2 I) from the default grid's first level to s_end
    (x(s) = mu + sqrt(c^2 + s^2) (x(s0) - mu) / sqrt(c^2 + s0^2)), then x0_hat at s_end."""
    grid = step_grid(model, 2, "karras")
    x0 = prior_ve(model, z, grid)
    mu = torch.tensor(MU, dtype=torch.float64)
    x = mu + math.sqrt(C**2 + s_end**2) / math.sqrt(C**2 + grid.s[0] ** 2) * (x0 - mu)
    return x - s_end * model.eps(x, s_end, 1.0)


@pytest.mark.parametrize("method, rtol, tol", [("RK45", 1e-5, 1e-3), ("RK23", 1e-5, 2e-4), ("RK45", 1e-10, 1e-8),
                                               ("DOP853", 1e-10, 1e-8)])
def test_ode_matches_the_closed_form_and_counts_the_evaluations(method, rtol, tol):
    """Max abs error over 400 samples (measured, each sample controlling its own local error: RK45 3.9e-4 (median
    8.5e-6), RK23 6.9e-5 at 1e-5; RK45 1.0e-10, DOP853 1.3e-10 at 1e-10). NFE = the evaluations of the solve
    (reported to the callback) + 1, the final x0_hat step, and every evaluation went through the model (sample()'s
    count)."""
    n = 400
    seen = []
    result = sg.sample(GAUSS, ode, n, seed=3, method=method, rtol=rtol, atol=rtol, callback=seen.append, **F64)
    grid = step_grid(GAUSS, 2, "karras")
    exact = closed_form_ode(GAUSS, noise(n, 3), grid.s[-2])
    err = (result.samples - exact).abs().max().item()
    assert err < tol, err
    assert seen[-1]["sigma"] == 0.0 and seen[-2]["sigma"] == grid.s[-2]  # every sample lands on its bound exactly
    assert result.nfe == seen[-1]["nfev"] + 1 and result.nfe > 20
    assert [info["i"] for info in seen] == list(range(len(seen)))
    assert all(a["sigma"] > b["sigma"] for a, b in zip(seen, seen[1:]))  # reported as the slowest sample advances


@pytest.mark.parametrize("method", ODE_METHODS)
def test_ode_steps_each_sample_as_scipy_steps_it_alone(method):
    """The reference: scipy.integrate's solver on each sample alone, fed the same start and the same model, takes the
    same steps (the same number of evaluations) and lands on the same point up to float64 rounding; the batch takes
    as many evaluations as its slowest sample, and the final x0_hat step is one more."""
    from scipy import integrate

    n, rtol = 6, 1e-6
    z = noise(n, 5)
    out = ode(GAUSS, z.clone(), method=method, rtol=rtol, atol=rtol, progress=False, callback=(seen := []).append)
    grid = step_grid(GAUSS, 2, "karras")
    x = prior_ve(GAUSS, z, grid)
    nfev = []
    for i in range(n):
        def f(s, xi):
            level = torch.tensor([s], dtype=torch.float64)
            return GAUSS.eps(torch.from_numpy(xi).view(1, 2), level)[0].numpy()

        solver = getattr(integrate, method)(f, grid.s[0], x[i].numpy(), grid.s[-2], rtol=rtol, atol=rtol)
        while solver.status == "running":
            solver.step()
        assert solver.status == "finished"
        end = torch.from_numpy(solver.y).view(1, 2)
        alone = end - grid.s[-2] * GAUSS.eps(end, grid.s[-2])
        torch.testing.assert_close(out[i:i + 1], alone, rtol=1e-12, atol=1e-12)
        nfev.append(solver.nfev)
    assert seen[-1]["nfev"] == max(nfev) and len(set(nfev)) > 1, nfev  # the samples took their own steps


def test_ode_sigma_min_and_its_errors():
    n = 50
    result = sg.sample(GAUSS, ode, n, seed=4, sigma_min=0.5, rtol=1e-9, atol=1e-9, **F64)
    torch.testing.assert_close(result.samples, closed_form_ode(GAUSS, noise(n, 4), 0.5), rtol=0, atol=1e-7)
    z = noise(4, 0)
    for bad, match in ((dict(method="Radau"), "method"), (dict(rtol=0.0), "rtol"), (dict(atol=-1.0), "atol"),
                       (dict(atol=0.0), "atol .> 0"),
                       (dict(sigma_min=0.0), "sigma_min"), (dict(sigma_min=1e9), "sigma_min"),
                       (dict(steps=1), "steps >= 2")):
        with pytest.raises(ValueError, match=match):
            ode(GAUSS, z, progress=False, **bad)
    assert set(ODE_METHODS) == {"RK45", "RK23", "DOP853"}


class Singular:
    """A 'model' whose PF-ODE solution blows up at s = 1 (eps = 1 / (s - 1)): the adaptive solver cannot pass it."""

    schedule = GAUSS.schedule
    shape = GAUSS.shape

    def eps(self, x, sigma, m=1.0, y=None):  # ode asks at per-sample levels, shape (batch,)
        s = torch.as_tensor(sigma / m, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return torch.where(s == 1.0, 1e300, 1.0 / (s - 1.0)).expand_as(x).clone()  # finite: a solver failure


def test_ode_takes_labels_as_every_sampler_does_and_hands_the_callback_copies():
    """y as an int, a 0-d or a (1,) tensor is every sample's label (the rows still finishing are picked from it); the
    callback's x is the state at that step, kept as it was (a float64 run's state is the solver's own)."""
    ring = sg.load_target("ring2d")
    guided = sg.ClassifierGuidance(ring, ring.classifier, scale=2.0)
    z = noise(5, 1)
    kw = dict(rtol=1e-4, atol=1e-4, progress=False)
    want = ode(guided, z.clone(), y=torch.full((5,), 3), **kw)
    for y in (3, torch.tensor(3), torch.tensor([3])):
        assert torch.equal(ode(guided, z.clone(), y=y, **kw), want)
    seen = []
    ode(GAUSS, z.clone(), callback=lambda info: seen.append((info["x"], info["x"].clone())), **kw)
    assert len(seen) > 3 and all(torch.equal(kept, copy) for kept, copy in seen)


def test_adaptive_rows_are_the_same_bits_alone_or_together():
    """The per-sample solver's sums over a sample's values (error norms) are rounded the same for one row as for a
    batch: torch reduces a single row of >= 32768 values with several threads in another order (a full reduction)."""
    from scoregen.samplers import _adaptive

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y0 = torch.randn(3, 40000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        f = lambda rows, t, y: -y * (1.0 + 0.1 * torch.sin(y)) / (1.0 + t.unsqueeze(1))  # noqa: E731  row-wise
        together = _adaptive.solve(f, 0.0, y0, 2.0, "RK45", 1e-6, 1e-6)
        for i in range(3):
            assert torch.equal(_adaptive.solve(f, 0.0, y0[i:i + 1], 2.0, "RK45", 1e-6, 1e-6), together[i:i + 1])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ODE_METHODS)
def test_adaptive_rejects_a_nan_step_as_scipy_does(method):
    """A field that is NaN beyond |y| = 2 (y' = y from y = 1): every method rejects the NaN steps until the step
    underflows, as scipy's do (DOP853's error norm must not read a NaN as 0 and accept it)."""
    from scipy import integrate
    from scoregen.samplers import _adaptive

    def field(y):
        return torch.where(y.abs() > 2, torch.nan, y)

    solver = getattr(integrate, method)(lambda t, y: field(torch.from_numpy(y)).numpy(), 0.0, np.ones(1), 5.0)
    while solver.status == "running":
        solver.step()
    assert solver.status == "failed"
    with pytest.raises(_adaptive.StepTooSmall) as e:
        _adaptive.solve(lambda rows, t, y: field(y), 0.0, torch.ones(2, 1, dtype=torch.float64), 5.0, method, 1e-3,
                        1e-6)
    assert e.value.rows == [0, 1] and abs(e.value.t[0] - solver.t) < 1e-3, (e.value.t, solver.t)


def test_ode_solver_failure_is_a_clear_error():
    with pytest.raises(ODESolverError, match=r"ode \(RK45.*failed at s=1 .*raise sigma_min, or loosen"):
        ode(Singular(), noise(3, 0), progress=False)


# ----------------------------------------------------------------------------- exact recursions on a Gaussian


def em_moments(grid, mean0, var0):
    """Mean offset (x - mu) and variance of euler_maruyama's samples on N(mu, c^2 I): eps = s (x - mu) / (c^2 + s^2),
    so a step multiplies x - mu by 1 - 2 s_i (s_i - s_{i+1}) / v_i and adds variance 2 s_i (s_i - s_{i+1}); the last
    one multiplies by c^2 / v."""
    s, m, v = grid.s, mean0, var0
    for i in range(len(grid)):
        vi = C**2 + s[i] ** 2
        if s[i + 1] == 0:
            f, g2 = C**2 / vi, 0.0
        else:
            f, g2 = 1 - 2 * s[i] * (s[i] - s[i + 1]) / vi, 2 * s[i] * (s[i] - s[i + 1])
        m, v = f * m, f * f * v + g2
    return m, v


def pc_variance(grid, var0, snr, corrector_steps):
    """Variance of pc's samples on N(0, c^2 I): with the batch-mean norms, E||z|| / E||score|| = v_i / sqrt(var),
    so a = 2 snr^2 v_i^2 / var; the corrector multiplies x by 1 - a / v_i and adds variance 2a, the predictor by
    1 - (s_i^2 - s_{i+1}^2) / v_i and adds s_i^2 - s_{i+1}^2 (nothing on the last step)."""
    s, v = grid.s, var0
    for i in range(len(grid)):
        vi = C**2 + s[i] ** 2
        for _ in range(corrector_steps):
            a = 2 * snr**2 * vi**2 / v
            v = (1 - a / vi) ** 2 * v + 2 * a
        delta = s[i] ** 2 - s[i + 1] ** 2
        v = (1 - delta / vi) ** 2 * v + (delta if s[i + 1] > 0 else 0.0)
    return v


def test_euler_maruyama_follows_its_exact_recursion_on_a_coarse_grid():
    n, steps = 20000, 12
    grid = step_grid(GAUSS, steps, "logsnr")
    mu = np.asarray(MU)
    offset, var = em_moments(grid, -mu, 1 + grid.s[0] ** 2)
    result = sg.sample(GAUSS, euler_maruyama, n, seed=5, steps=steps, **F64)
    assert result.nfe == steps
    assert_moments(result.samples, mu + offset, var, "euler_maruyama at 12 steps vs its recursion")
    assert abs(var - C**2) > 10 * C**2 * math.sqrt(2 / (2 * n)), (var, C**2)  # the test can see a wrong coefficient


@pytest.mark.parametrize("corrector_steps", [1, 2])
def test_pc_follows_its_exact_recursion(corrector_steps):
    """snr = 0.3: the corrector's unadjusted Langevin steps leave the variance ~ +10% above c^2 (about 15 SE at this
    n), while the recursion above predicts the samples' variance within its SE."""
    n, steps, snr = 20000, 40, 0.3
    centred = sg.GaussianMixture([1.0], [[0.0, 0.0]], [C])
    grid = step_grid(centred, steps, "logsnr")
    var = pc_variance(grid, 1 + grid.s[0] ** 2, snr, corrector_steps)
    result = sg.sample(centred, pc, n, seed=6, steps=steps, snr=snr, corrector_steps=corrector_steps, **F64)
    assert result.nfe == steps * (1 + corrector_steps)
    assert_moments(result.samples, 0.0, var, f"pc (snr {snr}, {corrector_steps} corrector steps) vs its recursion")
    assert var - C**2 > 10 * C**2 * math.sqrt(2 / (2 * n)), (var, C**2)


# ----------------------------------------------------------------------------- sample statistics

# id: (sampler, target, options, n). Measured discretisation bias (worst statistic, SE at the test's n, seeds 11 / 12;
# the 100,000-sample estimates carry +-0.25 SE of noise at these n):
SDE_CASES = {
    "em-gauss": (euler_maruyama, GAUSS, dict(steps=300), 4000),  # variance +1.2 / +0.8
    "em-tri": (euler_maruyama, TRI, dict(steps=300), 6000),  # variance of component 1 +1.1 / +0.9 (1000 steps: 0.4)
    "em-ring": (euler_maruyama, RING, dict(steps=300), 8000),  # +0.6 / +0.9
    # pc at snr 0.16 keeps ~ +2.6% variance from the corrector whatever the steps (see the recursion above): TRI's
    # narrowest component at n = 6000: +2.0 / +1.6 at 100 steps, +1.6 / +2.6 at 300, +2.0 at 1000; hence n = 4000
    # here (x 0.82: +1.6 / +1.3)
    "pc-gauss": (pc, GAUSS, dict(steps=100), 4000),  # variance +1.8 / +1.4 (300 steps: +1.2 / +2.1)
    "pc-tri": (pc, TRI, dict(steps=100), 4000),
    "pc-ring": (pc, RING, dict(steps=100), 8000),  # +1.05 / +1.0
}


@pytest.mark.parametrize("case", list(SDE_CASES))
def test_sde_sampler_lands_on_exact_target(case):
    fn, target, options, n = SDE_CASES[case]
    result = sg.sample(target, fn, n, seed=20240607, **F64, **options)
    assert result.nfe == options["steps"] * (2 if fn is pc else 1)
    if target is GAUSS:
        assert_moments(result.samples, MU, C**2, case)
    else:
        assert_matches_mixture(result.samples, target, what=case)


def test_sde_samplers_end_noise_free_at_x0_hat_and_check_options():
    """The last step goes to sigma = 0 without noise: the state after it is exactly x0_hat of the state before it
    (pc without corrector steps, whose last predictor step is x + s^2 score = x0_hat)."""
    for fn, options in ((euler_maruyama, {}), (pc, dict(corrector_steps=0))):
        states = []
        result = sg.sample(TRI, fn, 64, seed=2, steps=5, **F64, **options,
                           callback=lambda info: states.append((info["sigma"], info["x"].clone())))
        grid = step_grid(TRI, 5, "logsnr")
        assert [s for s, _ in states] == grid.s[1:] and result.nfe == 5
        torch.testing.assert_close(states[-1][1], TRI.x0(states[-2][1], grid.s[-2], 1.0), rtol=0, atol=1e-12)
    for bad in (dict(snr=0.0), dict(snr=-1.0), dict(corrector_steps=-1), dict(corrector_steps=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            pc(TRI, noise(4, 0), steps=3, progress=False, **bad)


def test_pc_is_corrector_then_predictor_at_each_level():
    """Two levels (2.0, 0.5, then 0), written out as score-SDE's get_pc_sampler runs them, with the same draws from
    the same generator: Langevin corrector at 2.0 (step from the mean norms of each group of 64 samples, score-SDE's
    batch mean on a batch of 64), reverse-diffusion predictor to
    0.5 with noise, corrector at 0.5, noise-free predictor to 0."""
    snr, levels = 0.16, [2.0, 0.5, 0.0]
    z = noise(256, 8)
    got = pc(TRI, z, sigmas=levels[:2], snr=snr, generator=torch.Generator().manual_seed(9), progress=False)
    g = torch.Generator().manual_seed(9)
    grid = step_grid(TRI, sigmas=levels[:2])
    x = prior_ve(TRI, z, grid)
    for s, s_next in zip(levels[:-1], levels[1:]):
        score = TRI.score(x, s, 1.0)
        z_c = torch.randn(x.shape, generator=g, dtype=x.dtype)
        group_mean = lambda v: v.view(-1, 64).mean(1).repeat_interleave(64)[:, None]  # noqa: E731  groups of 64
        step = 2 * (snr * group_mean(z_c.norm(dim=1)) / group_mean(score.norm(dim=1))) ** 2
        x = x + step * score + torch.sqrt(2 * step) * z_c
        x_mean = x + (s**2 - s_next**2) * TRI.score(x, s, 1.0)
        if s_next > 0:
            x_mean = x_mean + math.sqrt(s**2 - s_next**2) * torch.randn(x.shape, generator=g, dtype=x.dtype)
        x = x_mean
    torch.testing.assert_close(got, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", [edm, ipndm, ode, euler_maruyama, pc])
def test_solvers_run_in_float32_from_a_given_start_level(fn):
    """SDEdit through sample(): clean data noised to VE level 1.0, solved down from there; float32 state (ode hands
    the model float32 tensors from its float64 scipy state)."""
    options = dict(steps=6) if fn is not ode else {}
    x_start = TRI.sample(64, torch.Generator().manual_seed(0))
    result = sg.sample(TRI, fn, 64, seed=0, x_start=x_start, start_level=1.0, progress=False, **options)
    assert result.samples.dtype == torch.float32 and bool(torch.isfinite(result.samples).all())
    if fn is not ode:
        grid = step_grid(TRI, 6, "karras" if fn in (edm, ipndm) else "logsnr").starting_at(1.0)
        nfe = {edm: 2 * len(grid) - 1, ipndm: len(grid), euler_maruyama: len(grid), pc: 2 * len(grid)}[fn]
        assert result.nfe == nfe
    # from level 1.0 the samples stay near the data they started from (TRI's modes are >= 4.7 apart)
    assert (result.samples - x_start).norm(dim=1).median() < 1.5


def test_pc_corrector_does_not_move_where_the_score_is_zero():
    """score-SDE's step size 2 (snr ||z|| / ||score||)^2 is infinite for a zero score: the corrector then stays put
    (a NaN would otherwise end the run), so with a model whose eps is zero only the predictor's noise moves x:
    replaying the generator (two corrector draws, then one predictor draw per level) gives the result exactly."""
    zero = sg.NetworkScoreModel(lambda x, t: torch.zeros_like(x), sg.DiscreteVP.linear(), shape=(3,))
    z = noise(16, 302, d=3)
    out = pc(zero, z.clone(), steps=6, corrector_steps=2, generator=torch.Generator().manual_seed(0), progress=False)
    s = step_grid(zero, 6, "logsnr").s
    g = torch.Generator().manual_seed(0)
    x = z * math.sqrt(1 + s[0] ** 2)
    for i in range(6):
        for _ in range(2):
            torch.randn(z.shape, generator=g, dtype=z.dtype)  # the corrector's draws, unused
        p = torch.randn(z.shape, generator=g, dtype=z.dtype)
        if s[i + 1] > 0:
            x = x + math.sqrt(s[i] ** 2 - s[i + 1] ** 2) * p
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)
