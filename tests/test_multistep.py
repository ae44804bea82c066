"""The exponential-integrator family against its reference implementations, step for step, in float64.

Every solver runs on an exact Gaussian mixture (ring2d: zero model error) next to the reference, fed the same model,
the same grid, the same initial state and, for the SDE, the same noise draws; the states after every step must agree.

* k-diffusion (``sample_euler``, ``sample_heun``, ``sample_dpmpp_2m``, ``sample_dpmpp_2m_sde``): its denoiser is
  ``D(x, sigma) = x0_hat`` in VE coordinates, here the mixture's exact x0 at VE level sigma; the sigmas are
  scoregen's grid incl. the trailing 0.
* diffusers (``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``, ``DEISMultistepScheduler``,
  ``DDIMScheduler``) on DDPM's linear schedule (T = 1000, betas 1e-4..0.02), in VP coordinates: the model is
  ``eps(x_vp, k) = mixture.eps(x_vp, sigma_k, m_k)`` with ``m_k = sqrt(abar_k)``; diffusers' timestep k is scoregen's
  label k + 1. The schedulers round their sigmas (and DPMSolver its state) to float32; their modules run here with
  ``torch.float32`` / ``np.float32`` read as float64 (:func:`_diffusers_in_float64`), so the comparison is float64
  against float64 and the tolerance can be tight.

Tolerance: 1e-9 * max(1, |reference|) on every state (the implementations agree to ~1e-13); a wrong coefficient,
order schedule or landing rule moves the states by 1e-3 or more.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.samplers.ddim import ddim
from scoregen.samplers.exponential import phi
from scoregen.samplers.grids import step_grid
from scoregen.samplers.multistep import deis, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, unipc
from scoregen.samplers.ode import euler, heun

# diffusers' own NumPy 2 deprecations (np.array / np.log of torch tensors in its schedulers)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")

F64 = torch.float64
TOL = 1e-9
N = 64


@pytest.fixture(scope="module")
def target():
    return sg.load_target("ring2d")


def _noise(seed: int, n: int = N) -> torch.Tensor:
    return torch.randn((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)


def _close(got: torch.Tensor, ref: torch.Tensor, what) -> None:
    err = float((got - ref).abs().max())
    assert err <= TOL * max(1.0, float(ref.abs().max())), (what, err)


def _run(fn, model, z, generator=None, **options):
    """scoregen's solver on initial noise ``z``: its states after every step (clones) and its output."""
    states = []
    out = fn(model, z.clone(), generator=generator, progress=False, callback=lambda d: states.append(d["x"].clone()),
             **options)
    return states, out


# ----------------------------------------------------------------------------- the phi functions


@pytest.mark.parametrize("z", [-30.0, -9.0, -1.5, -1.0, -0.3, -1e-3, 0.0, 1e-6, 0.7, 1.0, 4.0])
def test_phi_is_its_integral(z):
    """phi_k(z) = int_0^1 e^{(1-v) z} v^{k-1}/(k-1)! dv, both branches (series for |z| < 1, recursion beyond)."""
    v = np.linspace(0.0, 1.0, 200001)
    for k in range(1, 5):
        f = np.exp((1 - v) * z) * v ** (k - 1) / math.factorial(k - 1)
        integral = float(np.sum((f[1:] + f[:-1]) / 2) * (v[1] - v[0]))
        assert phi(k, z) == pytest.approx(integral, rel=1e-8, abs=1e-14), k
    assert phi(0, z) == pytest.approx(math.exp(z))


# ----------------------------------------------------------------------------- k-diffusion


@pytest.fixture(scope="module")
def kd():
    from scoregen.bench.peers import load_kdiffusion

    try:
        return load_kdiffusion()
    except ImportError as e:
        pytest.skip(str(e))


class _Denoiser(torch.nn.Module):
    """k-diffusion's denoiser interface, D(x, sigma * s_in) = x0_hat in VE coordinates: the mixture's exact x0."""

    def __init__(self, mixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, x, sigma):
        return self.mixture.x0(x, float(sigma[0]), 1.0)


def _kd_run(sample_fn, target, grid, z, **kwargs):
    """k-diffusion's sampler from scoregen's initial state: for a VP model scoregen starts at the VP state z, which
    is z / m_0 = z sqrt(1 + s_0^2) in VE coordinates (k-diffusion's own convention would be z * s_0). Returns the
    states after every step, as scoregen's callback reports them, and the output."""
    sigmas = torch.tensor(grid.s, dtype=F64)
    x = z * math.sqrt(1.0 + grid.s[0] ** 2)
    starts = []
    out = sample_fn(_Denoiser(target), x, sigmas, disable=True, callback=lambda d: starts.append(d["x"].clone()),
                    **kwargs)
    return starts[1:] + [out], out


KD_GRIDS = [(12, "karras"), (9, "time"), (2, "logsnr")]


@pytest.mark.parametrize("steps,spacing", KD_GRIDS)
@pytest.mark.parametrize("name,fn", [("euler", euler), ("heun", heun), ("dpmpp_2m", dpmpp_2m)])
def test_ode_solvers_match_kdiffusion(kd, target, name, fn, steps, spacing):
    grid = step_grid(target, steps, spacing)
    z = _noise(1)
    ref_states, ref = _kd_run(getattr(kd.sampling, f"sample_{name}"), target, grid, z)
    states, out = _run(fn, target, z, sigmas=grid)
    assert len(states) == len(ref_states) == steps
    for i, (a, b) in enumerate(zip(states, ref_states)):
        _close(a, b, (name, i))
    _close(out, ref, name)
    if steps > 2:
        assert float(out.std()) > 0.5  # real samples of the ring, not a collapse


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("steps,spacing", KD_GRIDS)
def test_dpmpp_2m_sde_matches_kdiffusion(kd, target, steps, spacing, eta):
    """Same noise: k-diffusion's noise_sampler draws randn from a generator seeded like scoregen's, one draw per
    step but the last, in step order (scoregen draws ``noise.normal_(generator=...)`` into one buffer)."""
    grid = step_grid(target, steps, spacing)
    z = _noise(2)
    g_ref = torch.Generator().manual_seed(7)
    draws = []

    def noise_sampler(sigma, sigma_next):
        draws.append(float(sigma_next))
        return torch.randn(z.shape, generator=g_ref, dtype=F64)

    ref_states, ref = _kd_run(kd.sampling.sample_dpmpp_2m_sde, target, grid, z, eta=eta, noise_sampler=noise_sampler)
    states, out = _run(dpmpp_2m_sde, target, z, generator=torch.Generator().manual_seed(7), sigmas=grid, eta=eta)
    assert len(draws) == steps - 1
    for i, (a, b) in enumerate(zip(states, ref_states)):
        _close(a, b, ("dpmpp_2m_sde", i))
    _close(out, ref, "dpmpp_2m_sde")
    # the noise matters: another seed gives other samples
    other = dpmpp_2m_sde(target, z.clone(), sigmas=grid, eta=eta, generator=torch.Generator().manual_seed(8),
                         progress=False)
    assert float((other - out).abs().max()) > 1e-3


# ----------------------------------------------------------------------------- diffusers


class _Float64:
    """A module whose ``float32`` attribute is ``float64`` (and everything else the module's own)."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, "float64" if name == "float32" else name)


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def _diffusers_in_float64(monkeypatch, scheduler_class):
    """Run ``scheduler_class``'s module with torch.float32 and np.float32 read as float64: its betas, alphas_cumprod,
    sigmas and DPMSolver's upcast state are then float64 (the arithmetic is diffusers' own, only its precision)."""
    module = sys.modules[scheduler_class.__module__]
    monkeypatch.setattr(module, "torch", _Float64(torch))
    monkeypatch.setattr(module, "np", _Float64(np))


def _diffusers_run(monkeypatch, diffusers, name, target, steps, z, generator=None, step_kwargs=None, **config):
    """A diffusers pipeline's loop on the mixture: states after every step (VP coordinates), and the timesteps."""
    cls = getattr(diffusers, name)
    _diffusers_in_float64(monkeypatch, cls)
    schedule = target.schedule
    scheduler = cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                    prediction_type="epsilon", **config)
    assert torch.allclose(scheduler.alphas_cumprod, torch.as_tensor(schedule.abar), rtol=1e-12, atol=0)
    scheduler.set_timesteps(steps)
    x = z * scheduler.init_noise_sigma
    states = []
    for k in scheduler.timesteps:
        k = int(k)
        eps = target.eps(x, math.sqrt(1.0 - schedule.abar[k]), math.sqrt(schedule.abar[k]))
        x = scheduler.step(eps, k, x, **(step_kwargs or {})).prev_sample
        states.append(x)
    assert x.dtype == F64
    return states, [int(k) for k in scheduler.timesteps], scheduler


def _compare_ve(states, ref_states, target, labels, what):
    """scoregen's VE states after each step against diffusers' VP states at the next label (m = 1 after landing)."""
    abar = target.schedule.abar
    m_next = [math.sqrt(abar[label - 1]) for label in labels[1:]] + [1.0]
    assert len(states) == len(ref_states)
    for i, (a, b) in enumerate(zip(states, ref_states)):
        _close(a * m_next[i], b, (what, i))


@pytest.mark.parametrize("steps", [8, 20])  # fewer than 15 steps: diffusers' lower_order_final lowers the last two
@pytest.mark.parametrize("order,fn,options", [(2, dpmpp_2m, {}), (3, dpmpp_3m, {"coefficient": "reference"})])
def test_dpmpp_matches_diffusers_dpmsolver_multistep(monkeypatch, diffusers, target, order, fn, options, steps):
    z = _noise(3)
    ref_states, ts, scheduler = _diffusers_run(monkeypatch, diffusers, "DPMSolverMultistepScheduler", target, steps, z,
                                               algorithm_type="dpmsolver++", solver_order=order)
    assert scheduler.config.final_sigmas_type == "zero" and scheduler.config.lower_order_final
    labels = [k + 1 for k in ts]
    states, out = _run(fn, target, z, timesteps=labels, **options)
    _compare_ve(states, ref_states, target, labels, fn.__name__)
    _close(out, ref_states[-1], fn.__name__)


@pytest.mark.parametrize("steps", [8, 20])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_matches_diffusers_unipc(monkeypatch, diffusers, target, order, steps):
    z = _noise(4)
    ref_states, ts, scheduler = _diffusers_run(monkeypatch, diffusers, "UniPCMultistepScheduler", target, steps, z,
                                               solver_order=order, solver_type="bh2", predict_x0=True)
    assert scheduler.config.final_sigmas_type == "zero" and not scheduler.config.disable_corrector
    labels = [k + 1 for k in ts]
    states, out = _run(unipc, target, z, timesteps=labels, order=order)
    _compare_ve(states, ref_states, target, labels, "unipc")


@pytest.mark.parametrize("order", [2, 3])
def test_deis_matches_diffusers_deis(monkeypatch, diffusers, target, order):
    """DEISMultistepScheduler ends at the cleanest trained level (label 1) instead of sigma = 0: scoregen runs its
    timesteps, then label 1, then its own landing step; the first ``steps`` states must agree. 20 steps: diffusers'
    lower_order_final (below 15 steps) would lower its last step, which is not scoregen's last."""
    steps = 20
    z = _noise(5)
    ref_states, ts, _ = _diffusers_run(monkeypatch, diffusers, "DEISMultistepScheduler", target, steps, z,
                                       solver_order=order, algorithm_type="deis")
    labels = [k + 1 for k in ts] + [1]
    states, out = _run(deis, target, z, timesteps=labels, order=order)
    assert len(states) == steps + 1
    _compare_ve(states[:steps], ref_states, target, labels, "deis")
    s_min = math.sqrt(1.0 / target.schedule.abar[0] - 1.0)  # VE level of label 1
    _close(out, target.x0(states[-2], s_min, 1.0), "deis landing on x0_hat")


@pytest.mark.parametrize("spacing,eta", [("leading", 0.0), ("trailing", 0.0), ("leading", 1.0)])
def test_ddim_matches_diffusers_ddim(monkeypatch, diffusers, target, spacing, eta):
    """scoregen's ``spacing="leading"/"trailing"`` grid is DDIMScheduler's ``timestep_spacing`` (20 of 1000 steps: a
    divisor, since DDIMScheduler steps to ``t - T // steps``), landing on abar = 1 (``set_alpha_to_one``); at eta = 1
    both draw their noise from one generator, scoregen after its initial draw."""
    steps = 20
    g = torch.Generator().manual_seed(6)
    z = torch.randn((N, 2), generator=g, dtype=F64)
    ref_states, ts, _ = _diffusers_run(monkeypatch, diffusers, "DDIMScheduler", target, steps, z,
                                       timestep_spacing=spacing, clip_sample=False, set_alpha_to_one=True,
                                       step_kwargs={"eta": eta, "generator": g})
    states = []
    res = sg.sample(target, ddim, N, generator=torch.Generator().manual_seed(6), dtype=F64, progress=False, steps=steps,
                    spacing=spacing, eta=eta, callback=lambda d: states.append(d["x"].clone()))
    assert len(states) == len(ref_states) == steps
    for i, (a, b) in enumerate(zip(states, ref_states)):  # ddim reports the model's (VP) coordinates
        _close(a, b, ("ddim", spacing, i))
    _close(res.samples, ref_states[-1], "ddim")
