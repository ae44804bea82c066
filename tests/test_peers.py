"""Peers in the same run (scoregen.bench.peers): diffusers' schedulers and k-diffusion's samplers driving scoregen
models. Every peer returns finite samples of the model's shape within its NFE budget, counted by scoregen; the same
seed gives the same samples; at a large budget the peers reach an exact target's mean and variance; the cached
k-diffusion wrapper is bit-identical to the stock one; diffusers' DDIM equals scoregen's where the grids coincide.
Each library's tests skip when it is not installed."""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.bench import peers as P

RING = sg.load_target("ring2d")
# a 1-D two-Gaussian target: exact mean and variance below
TWO = sg.GaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [0.5, 0.3], name="two1d")


def _have_diffusers() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


def _have_kdiffusion() -> bool:
    try:
        P.load_kdiffusion()
    except ImportError:
        return False
    return True


HAVE = {"diffusers": _have_diffusers(), "k-diffusion": _have_kdiffusion()}
ALL = [f"{lib}:{name}" for lib, name in P._all_names()]


def _need(label: str) -> None:
    lib = label.split(":")[0]
    if lib == "diffusers":
        pytest.importorskip("diffusers")
    elif not HAVE[lib]:
        pytest.skip("k-diffusion (or torchsde/torchdiffeq) is not installed")


def _peer(model, label: str, **kw) -> P.Peer:
    _need(label)
    peers, skipped = P.peers_for(model, names=[label], **kw)
    assert len(peers) == 1, skipped
    return peers[0]


class Counting(sg.ScoreModel):
    """Counts and records every eps query; answers as the wrapped model does."""

    protects_input = True

    def __init__(self, model):
        self.model, self.shape, self.schedule, self.calls = model, model.shape, model.schedule, []

    def eps(self, x, sigma, m=1.0, y=None):
        self.calls.append((float(sigma) if not torch.is_tensor(sigma) else sigma.clone(),
                           float(m) if not torch.is_tensor(m) else m.clone()))
        return self.model.eps(x, sigma, m, y)


# ----------------------------------------------------------------------------- every peer, small budget


@pytest.mark.parametrize("label", ALL)
def test_every_peer_runs_within_its_budget(label):
    model = Counting(RING)
    peer = _peer(model, label)
    budget = 6
    run = peer.run(budget, 64, seed=0)
    assert run.samples.shape == (64, 2) and run.samples.dtype == torch.float32 and run.samples.device.type == "cpu"
    assert torch.isfinite(run.samples).all()
    assert run.nfe == len(model.calls), "nfe is counted by scoregen's guard, one per model evaluation"
    assert run.nfe <= budget and run.nfe == peer.nfe_for(peer.steps_for(budget))
    assert run.nfe == (5 if peer.name.split()[0] in ("Heun", "heun") else 6)  # Heun: 2 per step, 1 on the last
    assert run.wall_time > 0 and f"steps={run.steps}" in run.options
    assert ("karras" in run.options) == peer.name.endswith("karras")
    assert peer.config["library"] == peer.library and peer.config["version"]


@pytest.mark.parametrize("label", ALL)
def test_same_seed_same_samples_and_global_rng_untouched(label):
    peer = _peer(RING, label)
    state = torch.get_rng_state()
    a, b, c = peer.run(4, 32, seed=5), peer.run(4, 32, seed=5), peer.run(4, 32, seed=6)
    assert torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, c.samples)
    assert torch.equal(torch.get_rng_state(), state), "a peer run leaves torch's global generator as it was"


def test_budget_rules():
    pytest.importorskip("diffusers")
    heun, ddpm = _peer(RING, "diffusers:Heun"), _peer(RING, "diffusers:DDPM")
    assert [heun.steps_for(b) for b in (1, 2, 3, 10)] == [1, 1, 2, 5]
    assert ddpm.steps_for(5000) == 1000, "diffusers' schedulers take at most T steps"
    with pytest.raises(ValueError, match="nfe"):
        ddpm.run(0, 4, 0)
    if HAVE["k-diffusion"]:
        sde = _peer(RING, "k-diffusion:dpmpp_2m_sde")
        assert sde.min_nfe == 2
        with pytest.raises(ValueError, match="at least 2"):
            sde.run(1, 4, 0)


# ----------------------------------------------------------------------------- accuracy at a large budget


def _moments(mix):
    w, mu, s = mix.weights, mix.means[:, 0], mix.stds
    mean = float((w * mu).sum())
    var = float((w * (s**2 + mu**2)).sum()) - mean**2
    d = mu - mean
    mu4 = float((w * (d**4 + 6 * d**2 * s**2 + 3 * s**4)).sum())  # E (x - mean)^4
    return mean, var, mu4


@pytest.mark.parametrize("label, nfe", [("diffusers:DDIM", 100), ("diffusers:DDPM", 200), ("diffusers:Euler", 100),
                                        ("diffusers:DPMSolverMultistep", 50), ("k-diffusion:euler", 100),
                                        ("k-diffusion:dpmpp_2m karras", 50), ("k-diffusion:euler_ancestral karras", 100)])
def test_large_budget_reaches_exact_mean_and_variance(label, nfe):
    peer = _peer(TWO, label)
    n = 8000
    x = peer.run(nfe, n, seed=1).samples[:, 0].double()
    mean, var, mu4 = _moments(TWO)
    # 5 standard errors of the sample mean and of the sample variance, from n and the exact moments
    tol_mean = 5 * math.sqrt(var / n)
    tol_var = 5 * math.sqrt((mu4 - var**2) / n)
    assert abs(x.mean().item() - mean) < tol_mean, (x.mean().item(), mean, tol_mean)
    assert abs(x.var().item() - var) < tol_var, (x.var().item(), var, tol_var)


# ----------------------------------------------------------------------------- diffusers specifics


def test_diffusers_queries_the_level_of_its_timestep():
    """Timestep k is the model's label k + first_index: the model is asked at abar = alphas_cumprod[k]."""
    pytest.importorskip("diffusers")
    for schedule in (sg.DiscreteVP.linear(), sg.DiscreteVP(sg.DiscreteVP.linear().beta, first_index=0)):
        model = Counting(sg.GaussianMixture(RING.weights, RING.means, RING.stds, schedule=schedule))
        for name in ("DDIM", "DPMSolverMultistep", "Euler"):
            peer = _peer(model, f"diffusers:{name}")
            model.calls.clear()
            peer.run(10, 8, seed=0)
            scheduler = peer.make_scheduler()
            scheduler.set_timesteps(10)
            k = scheduler.timesteps.numpy().astype(np.float64)
            assert np.all(k == np.round(k)), "these grids are integer timesteps"
            abar = scheduler.alphas_cumprod.double().numpy()[k.astype(int)]
            m = np.array([c[1] for c in model.calls])
            sigma = np.array([c[0] for c in model.calls])
            np.testing.assert_allclose(m**2, abar, rtol=1e-5)
            np.testing.assert_allclose(m**2 + sigma**2, 1.0, rtol=1e-12)


def test_first_index_does_not_change_samples():
    pytest.importorskip("diffusers")
    zero = sg.GaussianMixture(RING.weights, RING.means, RING.stds, schedule=sg.DiscreteVP(RING.schedule.beta, first_index=0))
    for name in ("DDPM", "Euler"):
        a = _peer(RING, f"diffusers:{name}").run(10, 64, seed=2).samples
        b = _peer(zero, f"diffusers:{name}").run(10, 64, seed=2).samples
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_diffusers_config_records_defaults_and_changes():
    pytest.importorskip("diffusers")
    off = _peer(RING, "diffusers:DDPM")
    assert off.config["changed"]["clip_sample"] is False and "clipping" in off.config["why"]
    assert "trained_betas" in off.config["changed"] and off.config["scheduler"] == "DDPMScheduler"
    assert off.config["scheduler_config"]["variance_type"] == "fixed_small"  # a shipped default, kept
    on = _peer(RING, "diffusers:DDPM", data_range=(-1.0, 1.0))
    assert "clip_sample" not in on.config["changed"] and on.config["scheduler_config"]["clip_sample"] is True
    dpm = _peer(RING, "diffusers:DPMSolverMultistep")
    assert dpm.config["scheduler_config"]["thresholding"] is False and "thresholding" not in dpm.config["changed"]
    import json

    json.dumps([p.config for p in P.peers_for(RING)[0]])  # JSON-able


def test_diffusers_ddim_equals_scoregen_ddim_where_the_grids_coincide():
    """diffusers' DDIM (eta = 0, shipped 'leading' spacing) steps from timestep k to k - T // steps; scoregen's
    ddim runs on evenly spaced trained levels including both ends. The grids coincide when every trained level is
    used (steps = T): then, from the same initial noise, the two agree up to float32 rounding."""
    pytest.importorskip("diffusers")
    small = sg.GaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [0.5, 0.3], schedule=sg.DiscreteVP.linear(20, 0.01, 0.4))
    for model, n in ((small, 2000), (RING, 200)):
        T = len(model.schedule)
        peer = _peer(model, "diffusers:DDIM")
        ours = sg.sample(model, "ddim", n, seed=3, steps=T, eta=0.0, progress=False)
        theirs = peer.run(T, n, seed=3)
        assert theirs.nfe == ours.nfe == T
        torch.testing.assert_close(theirs.samples, ours.samples, rtol=0, atol=1e-5 if T == 20 else 2e-4)


# ----------------------------------------------------------------------------- k-diffusion specifics


def _kd():
    if not HAVE["k-diffusion"]:
        pytest.skip("k-diffusion (or torchsde/torchdiffeq) is not installed")
    return P.load_kdiffusion()


def test_load_kdiffusion_leaves_no_stub_behind():
    kd = _kd()
    assert hasattr(kd.sampling, "sample_dpmpp_2m") and hasattr(kd.external, "DiscreteEpsDDPMDenoiser")
    assert "torchvision.transforms.functional" not in sys.modules or not isinstance(
        sys.modules["torchvision.transforms.functional"], P._MissingTorchvision)
    assert P.load_kdiffusion() is kd


def test_cached_wrapper_is_bit_identical_to_stock():
    kd = _kd()
    stock, cached = P.kdiffusion_denoiser(RING, cached=False, kd=kd), P.kdiffusion_denoiser(RING, kd=kd)
    assert type(stock) is kd.external.DiscreteEpsDDPMDenoiser and isinstance(cached, type(stock))
    g = torch.Generator().manual_seed(0)
    sigmas = torch.cat([torch.rand(300, generator=g) * 200, torch.full((50,), 3.25), stock.sigmas[::37]])
    for quantize in (True, False):
        assert torch.equal(stock.sigma_to_t(sigmas, quantize), cached.sigma_to_t(sigmas, quantize))
        one = torch.full((64,), 7.5)
        assert torch.equal(stock.sigma_to_t(one, quantize), cached.sigma_to_t(one, quantize))
    for label in ("k-diffusion:euler_ancestral", "k-diffusion:dpmpp_2m karras", "k-diffusion:heun", "k-diffusion:dpmpp_2m_sde"):
        peer = _peer(RING, label)
        a = peer.run(8, 256, seed=4).samples
        b = dataclasses.replace(peer, cached=False).run(8, 256, seed=4).samples
        assert torch.equal(a, b), label


def test_kdiffusion_on_a_variance_exploding_model():
    """A VE model goes to k-diffusion as a denoiser on the Karras grid. k-diffusion starts from sigma_max * randn,
    which ignores the data's mean (0.75 here): sigma_max must be large beside it for the moments to come out."""
    _kd()
    ve = sg.GaussianMixture(TWO.weights, TWO.means, TWO.stds, schedule=sg.DiscreteVE.geometric(80.0, 0.01, 60))
    peers, skipped = P.peers_for(ve)
    assert peers and all(p.library == "k-diffusion" and p.name.endswith("karras") for p in peers)
    assert any(r.startswith("k-diffusion") and "wrapper" in r for r in skipped)
    if HAVE["diffusers"]:
        assert any(r.startswith("diffusers") and "DiscreteVE" in r for r in skipped)
    peer = next(p for p in peers if p.name == "dpmpp_2m karras")
    assert peer.config["sigma_min"] == pytest.approx(0.01) and peer.config["sigma_max"] == pytest.approx(80.0)
    n = 8000
    x = peer.run(50, n, seed=0).samples[:, 0].double()
    mean, var, mu4 = _moments(TWO)
    assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(x.var().item() - var) < 5 * math.sqrt((mu4 - var**2) / n)


# ----------------------------------------------------------------------------- selection


def test_names_select_and_unknown_names_fail():
    every, _ = P.peers_for(RING)
    assert len(every) == sum(HAVE[lib] for lib in ("diffusers",)) * 8 + HAVE["k-diffusion"] * 12
    assert len({p.label for p in every}) == len(every)
    with pytest.raises(ValueError, match="unknown peer"):
        P.peers_for(RING, names=["dpm++"])
    chosen, _ = P.peers_for(RING, names=["DDIM", "k-diffusion:euler karras"])
    assert [p.label for p in chosen] == [lab for lab in ("diffusers:DDIM", "k-diffusion:euler karras")
                                         if HAVE[lab.split(":")[0]]]
    with pytest.raises(ValueError, match="data_range"):
        P.peers_for(RING, data_range=(1.0, -1.0))


@pytest.mark.parametrize("label", ["diffusers:DPMSolverMultistep", "k-diffusion:dpmpp_2m karras"])
def test_class_labels_reach_the_model(label):
    """``y`` goes to model.eps: exact classifier guidance toward one class lands in that class's mode."""
    guided = sg.ClassifierGuidance(RING, RING.classifier, 1.0)
    peer = _peer(guided, label)
    x = peer.run(30, 400, seed=0, y=3).samples
    want = RING.conditional(3)
    assert torch.isfinite(x).all()
    np.testing.assert_allclose(x.double().mean(0).numpy(), (want.weights @ want.means), atol=0.1)
