"""CUDA paths: skipped without a GPU; run on a GPU machine with `python -m pytest tests/test_cuda.py`."""

import pytest
import torch

import scoregen as sg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

OPTIONS = {"ddpm": {"steps": 200}, "ddim": {"steps": 100, "eta": 0.5}, "langevin": {"levels": 30, "steps_per_level": 100}}


@pytest.mark.parametrize("sampler", sorted(OPTIONS))
def test_samplers_run_on_cuda_and_hit_the_target(sampler):
    target = sg.GaussianMixture([0.3, 0.7], [[-3.0, 0.0], [3.0, 0.0]], [0.5, 0.5])
    n = 20000
    res = sg.sample(target, sampler, n, seed=0, device="cuda", progress=False, **OPTIONS[sampler])
    x = res.samples
    assert x.device.type == "cuda" and torch.isfinite(x).all()
    # fraction on the right mode: 0.7 within 5 binomial standard errors (+1% for discretisation)
    frac = (x[:, 0] > 0).float().mean().item()
    assert abs(frac - 0.7) < 5 * (0.7 * 0.3 / n) ** 0.5 + 0.01


def test_network_model_and_guidance_on_cuda():
    target = sg.GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [0.5, 0.5])
    net = lambda x, t: target.eps(x, float(sched.sigma(t[0].item())), float(sched.m(t[0].item())))  # noqa: E731
    sched = sg.DiscreteVP.linear()
    model = sg.NetworkScoreModel(net, sched, shape=(1,))
    guided = sg.ClassifierGuidance(model, target.classifier, scale=1.0)
    res = sg.sample(guided, "ddim", 4000, seed=1, y=1, device="cuda", progress=False, steps=100)
    assert res.samples.device.type == "cuda"
    assert (res.samples > 0).float().mean().item() > 0.99
    cpu = sg.sample(guided, "ddim", 4000, seed=1, y=1, progress=False, steps=100).samples
    # same algorithm, different RNG streams on the two devices: compare distributions, not samples
    assert abs(res.samples.mean().item() - cpu.mean().item()) < 0.1


def test_metrics_accept_cuda_samples():
    target = sg.load_target("ring2d")
    x = sg.sample(target, "ddim", 500, seed=0, device="cuda", progress=False, steps=20).samples
    assert sg.sliced_w2(x, target.sample(500)) < 1.0
    assert 0.0 <= sg.mode_tv(x, target) < 0.2
