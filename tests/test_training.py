"""Training objectives against exact values, and small networks trained briefly on 2-D mixtures."""

import math

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.networks import MLPClassifier, MLPScoreNet
from scoregen.training import classifier_loss, ddpm_loss, denoising_loss, drop_labels, ncsn_loss, sample_times

MU, S, D = 0.5, 0.4, 3


class ExactNet:
    """The exact eps / score / x0 / v of N(MU, S^2 I) at a schedule's labels: the loss's irreducible floor."""

    def __init__(self, schedule, parameterization):
        self.schedule, self.parameterization = schedule, parameterization
        self.target = sg.GaussianMixture([1.0], [[MU] * D], [S])

    def __call__(self, x, t):
        lam = self.schedule.log_snr(t.double().numpy())
        m, sigma = sg.schedules.m_sigma_from_log_snr(lam, self.schedule.variance_preserving)
        m, sigma = torch.as_tensor(m, dtype=x.dtype), torch.as_tensor(sigma, dtype=x.dtype)
        eps = self.target.eps(x, sigma, m)
        return sg.models.from_eps(eps, x, m, sigma, self.parameterization)


@pytest.mark.parametrize("schedule, label", [(sg.DiscreteVP.linear(), 300), (sg.DiscreteVE.geometric(2.0, 0.05, 10), 4)])
@pytest.mark.parametrize("parameterization", ["eps", "score", "x0"])
def test_denoising_loss_of_the_exact_network_is_the_posterior_variance(schedule, label, parameterization):
    # x0 ~ N(MU, S^2): Var(eps | x_t) = m^2 S^2 / v and Var(x0 | x_t) = S^2 sigma^2 / v with v = m^2 S^2 + sigma^2.
    # eps and score (sigma^2-weighted) losses equal the former, the x0 loss the latter, per dimension.
    m, sigma = float(schedule.m(label)), float(schedule.sigma(label))
    v = m * m * S * S + sigma * sigma
    expected = {"eps": m * m * S * S / v, "score": m * m * S * S / v, "x0": S * S * sigma * sigma / v}[parameterization]
    n = 20000
    g = torch.Generator().manual_seed(0)
    x0 = MU + S * torch.randn(n, D, generator=g, dtype=torch.float64)
    loss = denoising_loss(ExactNet(schedule, parameterization), schedule, x0, t=label, generator=g).item()
    # the per-sample loss is a mean of D chi-square(1) terms times `expected`: variance 2 expected^2 / D
    assert abs(loss - expected) < 5 * expected * math.sqrt(2 / D / n)


def test_vlb_weighting_scales_the_eps_error_by_the_kl_coefficient():
    schedule = sg.DiscreteVP.linear()
    label = 500
    x0 = MU + S * torch.randn(20000, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    net = ExactNet(schedule, "eps")
    simple = denoising_loss(net, schedule, x0, t=label, generator=torch.Generator().manual_seed(2))
    vlb = denoising_loss(net, schedule, x0, t=label, weighting="vlb", generator=torch.Generator().manual_seed(2))
    # same draws: the vlb term is vlb_weight_t times the error summed (not averaged) over D dimensions
    assert vlb.item() == pytest.approx(schedule.vlb_weight[label - 1] * D * simple.item(), rel=1e-9)


def test_sample_times_cover_the_trained_labels_uniformly():
    schedule = sg.DiscreteVE.geometric(1.0, 0.01, 5)
    t = sample_times(schedule, 50000, torch.Generator().manual_seed(0))
    counts = np.bincount(t.astype(int), minlength=5) / len(t)
    assert np.abs(counts - 0.2).max() < 5 * math.sqrt(0.2 * 0.8 / len(t))
    vp = sg.DiscreteVP.linear(10)
    assert 1.0 not in set(sample_times(vp, 1000, torch.Generator().manual_seed(0), skip_first=True).tolist())


def test_drop_labels_rate_and_null_label():
    y = torch.zeros(20000, dtype=torch.long)
    dropped = drop_labels(y, 0.2, null_label=7, generator=torch.Generator().manual_seed(0))
    frac = (dropped == 7).float().mean().item()
    assert abs(frac - 0.2) < 5 * math.sqrt(0.2 * 0.8 / 20000)
    assert set(dropped.unique().tolist()) == {0, 7}
    with pytest.raises(ValueError):
        drop_labels(y, 1.5, 7)


TARGET = sg.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 0.0]], [0.3, 0.3], labels=[0, 1])


def _train(net, loss_fn, steps, seed=0, lr=3e-3):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x0, k = TARGET.sample(256, g, return_components=True)
        loss = loss_fn(net, x0, torch.as_tensor(TARGET.labels)[k], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


def _assert_close_to_target(x):
    # loose: right mode weights within 0.08, component means within 0.3, stds within a factor 1.6
    right = x[:, 0] > 0
    assert abs(right.float().mean().item() - 0.7) < 0.08
    for side, mu in ((right, 2.0), (~right, -2.0)):
        assert abs(x[side, 0].mean().item() - mu) < 0.3 and abs(x[side, 1].mean().item()) < 0.3
        std = x[side].std(0).mean().item()
        assert 0.3 / 1.6 < std < 0.3 * 1.6


def test_ddpm_trained_mlp_samples_the_mixture():
    net = MLPScoreNet(2, sg.DiscreteVP.linear(), "eps", hidden=64)
    losses = _train(net, lambda n, x0, y, g: ddpm_loss(n, x0, generator=g), 1500)
    assert losses[-200:].mean() < 0.8 * losses[:50].mean()
    with torch.no_grad():
        x = sg.sample(net.score_model(), "ddim", 2000, seed=0, steps=50, progress=False).samples
    _assert_close_to_target(x)


def test_ncsn_trained_mlp_samples_the_mixture_under_langevin_and_ddpm():
    net = MLPScoreNet(2, sg.DiscreteVE.geometric(5.0, 0.05, 20), "score", hidden=64)
    losses = _train(net, lambda n, x0, y, g: ncsn_loss(n, x0, generator=g), 1500)
    assert losses[-200:].mean() < 0.8 * losses[:50].mean()
    model = net.score_model()
    with torch.no_grad():
        for sampler, opts in (("langevin", {"steps_per_level": 50}), ("ddpm", {})):
            _assert_close_to_target(sg.sample(model, sampler, 2000, seed=0, progress=False, **opts).samples)


def test_noisy_classifier_learns_and_guides():
    schedule = sg.DiscreteVP.linear()
    clf = MLPClassifier(2, 2, schedule, hidden=64)
    losses = _train(clf, lambda n, x0, y, g: classifier_loss(n, schedule, x0, y, g), 600)
    # a classifier that ignores x scores at best the prior's entropy H(0.3, 0.7) = 0.611 nats
    prior_entropy = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert losses[-100:].mean() < prior_entropy - 0.15 < losses[:3].mean()
    g = torch.Generator().manual_seed(5)
    x0, k = TARGET.sample(2000, g, return_components=True)
    with torch.no_grad():
        acc = (clf.classifier()(x0, 0.01, 1.0).argmax(-1) == k).float().mean().item()
    assert acc > 0.97
    guided = sg.ClassifierGuidance(TARGET, clf.classifier(), scale=1.0)
    x = sg.sample(guided, "ddim", 1000, seed=0, y=0, steps=50, progress=False).samples
    assert (x[:, 0] < 0).float().mean().item() > 0.95  # class 0 is the left component (30% unguided)


def test_objectives_refuse_mismatched_schedules():
    with pytest.raises(ValueError, match="DiscreteVP"):
        ddpm_loss(MLPScoreNet(2, sg.DiscreteVE.geometric(), "score"), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="DiscreteVE"):
        ncsn_loss(MLPScoreNet(2, sg.DiscreteVP.linear()), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="vlb"):
        denoising_loss(MLPScoreNet(2, sg.DiscreteVE.geometric(), "score"), sg.DiscreteVE.geometric(), torch.zeros(4, 2), weighting="vlb")


def _ring_run(tmp_path, name, batch_size=64):
    from scoregen.training import TrainConfig, train

    x = sg.load_target("ring2d").sample(512, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = MLPScoreNet(2, sg.DiscreteVP.linear(), "eps", hidden=32)
    train(net, x, None, TrainConfig("ddpm", steps=3, batch_size=batch_size, lr=1e-3), tmp_path / name, progress=False)
    return net


def test_a_batch_that_cannot_fit_is_refused_before_training_with_one_that_does(tmp_path, monkeypatch):
    from scoregen.training import trainer

    monkeypatch.setattr(trainer, "available_memory", lambda device: 20 * 2**20)  # 20 MiB
    with pytest.raises(ValueError, match=r"a training batch of 10000000 needs about .* more than the 21.0 MB available: "
                                         r"use --batch-size (\d+)") as info:
        _ring_run(tmp_path, "huge", batch_size=10_000_000)
    assert not (tmp_path / "huge" / "config.json").exists()
    fits = int(info.value.args[0].split("use --batch-size ")[1].split()[0])
    assert 1000 < fits < 10_000_000
    _ring_run(tmp_path, "fits", batch_size=fits)  # the suggested size trains
    assert (tmp_path / "fits" / "config.json").exists()


def test_the_memory_probe_leaves_training_unchanged(tmp_path, monkeypatch):
    """The probe runs one forward pass before training: it must not move the generators training draws from
    (the U-Net's dropout draws from torch's global one) nor change the network."""
    from scoregen.networks import UNet
    from scoregen.training import TrainConfig, train, trainer

    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def run(name):
        torch.manual_seed(0)
        net = UNet.tiny(image_size=8, in_channels=1, schedule=sg.DiscreteVP.linear())
        train(net, x, None, TrainConfig("ddpm", steps=2, batch_size=8, lr=1e-3), tmp_path / name, progress=False)
        return net

    probed = run("probed")
    monkeypatch.setattr(trainer, "available_memory", lambda device: None)  # unknown memory: no probe
    plain = run("plain")
    for (k, a), (_, b) in zip(probed.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), k
