"""Nichol & Dhariwal's L_hybrid: its bound term against DDPM's closed forms computed independently (torch.distributions
on the schedule's betas), the stop-gradient on the mean, the networks' variance channels, and a short training run."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

import scoregen as sg
import scoregen.data
from scoregen.io.checkpoints import _config_sha256
from scoregen.likelihood import Bins
from scoregen.networks import MLPScoreNet, UNet
from scoregen.training import TrainConfig, hybrid_loss, hybrid_terms, train
from scoregen.training.recipes import default_network

D = 6  # dimensions of the fake data
B = 5  # samples per batch
SCHEDULES = [(sg.DiscreteVP.linear(), 500), (sg.DiscreteVP.cosine(50, first_index=0), 37)]  # (schedule, a label t >= 2)


class FakeNet(nn.Module):
    """An eps network with learned variance whose two outputs are parameters we set: ``eps_out`` (B, D), the eps
    prediction, and ``value`` (B, D), the variance value in [-1, 1]. It records the x_t and labels it was given."""

    learned_variance = True
    parameterization = "eps"

    def __init__(self, schedule, eps_out: torch.Tensor, value: torch.Tensor):
        super().__init__()
        self.schedule = schedule
        self.eps_out, self.value = nn.Parameter(eps_out.clone()), nn.Parameter(value.clone())

    def forward(self, x, t):
        self.seen = (x.detach().clone(), t.clone())
        return torch.cat([self.eps_out, self.value], dim=1)


def _fake(schedule, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, D, generator=g, dtype=torch.float64) * 2 - 1
    eps_out = torch.randn(B, D, generator=g, dtype=torch.float64)
    value = torch.rand(B, D, generator=g, dtype=torch.float64) * 2 - 1
    return FakeNet(schedule, eps_out, value), x0


def _ddpm(schedule, t):
    """DDPM's quantities at label t (Ho et al. 2020, eqs. 6-7), straight from the schedule's betas."""
    i = int(t) - schedule.first_index
    beta, abar = float(schedule.beta[i]), float(schedule.abar[i])
    abar_prev = float(schedule.abar[i - 1]) if i > 0 else 1.0
    return beta, abar, abar_prev


def _learned_var(v, beta, beta_tilde):
    """Nichol & Dhariwal eq. 15: exp(v log beta + (1 - v) log beta_tilde)."""
    return torch.exp(v * math.log(beta) + (1 - v) * math.log(beta_tilde))


def _x0_hat(net, x_t, abar):
    return (x_t - math.sqrt(1 - abar) * net.eps_out.detach()) / math.sqrt(abar)


@pytest.mark.parametrize("schedule, t", SCHEDULES)
def test_the_vb_term_is_T_times_the_kl_of_the_posteriors_in_bits_per_dim(schedule, t):
    net, x0 = _fake(schedule)
    terms = hybrid_terms(net, x0, t=t, generator=torch.Generator().manual_seed(1))
    x_t, labels = net.seen
    assert labels.tolist() == [t] * B and terms.t.tolist() == [t] * B
    beta, abar, abar_prev = _ddpm(schedule, t)
    beta_tilde = beta * (1 - abar_prev) / (1 - abar)
    # q(x_{t-1} | x_t, x0) = N(c0 x0 + ct x_t, beta_tilde); p uses x0_hat in place of x0 (Ho et al. eq. 7)
    c0, ct = math.sqrt(abar_prev) * beta / (1 - abar), math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
    q = Normal(c0 * x0 + ct * x_t, math.sqrt(beta_tilde))
    v = (net.value.detach() + 1) / 2
    p = Normal(c0 * _x0_hat(net, x_t, abar) + ct * x_t, _learned_var(v, beta, beta_tilde).sqrt())
    expected = len(schedule) * kl_divergence(q, p).mean(1) / math.log(2)
    torch.testing.assert_close(terms.vlb, expected, rtol=1e-9, atol=0)
    eps = (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)  # the noise drawn, recovered from x_t
    torch.testing.assert_close(terms.simple, ((eps - net.eps_out.detach()) ** 2).mean(1), rtol=1e-9, atol=1e-12)
    loss = hybrid_loss(net, x0, lam=0.01, t=t, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, (terms.simple + 0.01 * terms.vlb).mean(), rtol=1e-12, atol=0)


def _decoder_case(schedule, bins=None):
    """The decoder's label, the fake network, x0 (on ``bins`` values when given), and its variance's v and width."""
    net, x0 = _fake(schedule, seed=2)
    if bins is not None:
        x0 = bins.low + torch.round((x0 - bins.low) / bins.width) * bins.width
    t = schedule.first_index  # the least noisy label: the decoder -log p(x0 | x_1)
    terms = hybrid_terms(net, x0, t=t, bins=None if bins is None else bins.count,
                         data_range=(-1.0, 1.0) if bins is None else (bins.low, bins.high),
                         generator=torch.Generator().manual_seed(3))
    x_t = net.seen[0]
    beta, abar, _ = _ddpm(schedule, t)
    beta2, abar2, _ = _ddpm(schedule, t + 1)
    # improved-diffusion's posterior_log_variance_clipped: the decoder's lower width is beta_tilde_2
    var = _learned_var((net.value.detach() + 1) / 2, beta, beta2 * (1 - abar) / (1 - abar2))
    return terms, Normal(_x0_hat(net, x_t, abar), var.sqrt()), x0


@pytest.mark.parametrize("schedule", [s for s, _ in SCHEDULES])
def test_at_t_1_the_vb_term_is_the_gaussian_decoder_nll(schedule):
    terms, p, x0 = _decoder_case(schedule)
    expected = len(schedule) * -p.log_prob(x0).mean(1) / math.log(2)
    torch.testing.assert_close(terms.vlb, expected, rtol=1e-9, atol=0)


def test_at_t_1_with_bins_the_vb_term_is_the_discretised_decoder_nll():
    schedule, bins = sg.DiscreteVP.linear(), Bins(17, -1.0, 1.0)
    terms, p, x0 = _decoder_case(schedule, bins)
    # Ho et al. eq. 13: the mass of the bin around x0, the outer bins reaching to -inf / +inf
    upper = torch.where(x0 >= bins.high - 1e-9, torch.ones_like(x0), p.cdf(x0 + bins.width / 2))
    lower = torch.where(x0 <= bins.low + 1e-9, torch.zeros_like(x0), p.cdf(x0 - bins.width / 2))
    expected = len(schedule) * -torch.log(upper - lower).mean(1) / math.log(2)
    torch.testing.assert_close(terms.vlb, expected, rtol=1e-7, atol=0)
    with pytest.raises(ValueError, match="17 evenly spaced values"):
        hybrid_terms(_fake(schedule)[0], x0 + 0.01, bins=17)


@pytest.mark.parametrize("t", [1, 2, 500])
def test_the_vb_part_trains_only_the_variance_and_l_simple_only_the_mean(t):
    net, x0 = _fake(sg.DiscreteVP.linear())
    simple, vlb, _ = hybrid_terms(net, x0, t=t, generator=torch.Generator().manual_seed(4))
    grads = torch.autograd.grad(vlb.sum(), [net.eps_out, net.value], allow_unused=True, retain_graph=True)
    assert grads[0] is None or bool((grads[0] == 0).all())  # stop-gradient on the mean: exactly nothing
    assert bool((grads[1] != 0).all())
    grads = torch.autograd.grad(simple.sum(), [net.eps_out, net.value], allow_unused=True)
    assert grads[1] is None or bool((grads[1] == 0).all())
    assert bool((grads[0] != 0).all())


def test_hybrid_loss_refuses_what_it_cannot_train():
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="variance channels"):
        hybrid_loss(MLPScoreNet(2, sg.DiscreteVP.linear()), x0)
    with pytest.raises(ValueError, match="DiscreteVP"):
        hybrid_loss(MLPScoreNet(2, sg.DiscreteVE.geometric(), "score", learned_variance=True), x0)
    with pytest.raises(ValueError, match="eps network"):
        hybrid_loss(MLPScoreNet(2, sg.DiscreteVP.linear(), "x0", learned_variance=True), x0)
    with pytest.raises(ValueError, match="not a trained label"):
        hybrid_loss(MLPScoreNet(2, sg.DiscreteVP.linear(), learned_variance=True), x0, t=0)
    with pytest.raises(ValueError, match="lam"):
        hybrid_loss(MLPScoreNet(2, sg.DiscreteVP.linear(), learned_variance=True), x0, lam=-1.0)
    with pytest.raises(ValueError, match="hybrid"):  # L_simple alone would leave the variance channels untrained
        sg.training.ddpm_loss(MLPScoreNet(2, sg.DiscreteVP.linear(), learned_variance=True), x0)


# ------------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("make, x", [
    (lambda lv: MLPScoreNet(3, sg.DiscreteVP.linear(), hidden=16, learned_variance=lv), torch.randn(2, 3)),
    (lambda lv: UNet.tiny(image_size=8, in_channels=2, learned_variance=lv), torch.randn(2, 2, 8, 8)),
])
def test_networks_with_learned_variance_double_their_channels_and_rebuild_from_their_config(make, x):
    torch.manual_seed(0)
    net = make(True).eval()
    assert net.learned_variance is True and net.config()["learned_variance"] is True
    with torch.no_grad():
        out = net(x, torch.tensor([3.0, 700.0]))
        assert out.shape == (x.shape[0], 2 * x.shape[1], *x.shape[2:])
        assert bool((out[:, x.shape[1]:] == 0).all())  # the variance value starts at 0: v = 1/2
        eps, v = net.score_model().eps_and_variance(x, 0.5, math.sqrt(0.75))
        assert eps.shape == x.shape and bool((v == 0.5).all())
    back = type(net).from_config(json.loads(json.dumps(net.config())))
    assert back.learned_variance is True and back.config() == net.config()
    plain = make(False)
    assert plain.learned_variance is False and "learned_variance" not in plain.config()  # configs as before
    assert type(net).from_config(plain.config()).learned_variance is False
    with pytest.raises(ValueError, match="learned_variance"):
        type(net).from_config({**plain.config(), "learned_variance": "yes"})


def test_default_network_for_hybrid_is_the_ddpm_network_with_variance_channels():
    for x in (torch.randn(8, 2), torch.rand(8, 1, 8, 8)):
        ddpm, hybrid = default_network(x, "ddpm"), default_network(x, "hybrid")
        assert hybrid.learned_variance and not ddpm.learned_variance
        assert {**ddpm.config(), "learned_variance": True} == hybrid.config()


# ------------------------------------------------------------------------------------------------ training
def test_train_config_checks_bins_and_the_network():
    with pytest.raises(ValueError, match="bins"):
        TrainConfig("ddpm", steps=1, bins=17)
    with pytest.raises(ValueError, match="bins"):
        TrainConfig("hybrid", steps=1, bins=1)
    x = torch.randn(16, 2)
    with pytest.raises(ValueError, match="variance channels"):
        train(MLPScoreNet(2, sg.DiscreteVP.linear()), x, None, TrainConfig("hybrid", steps=1), "unused", progress=False)
    with pytest.raises(ValueError, match="use objective 'hybrid'"):
        train(MLPScoreNet(2, sg.DiscreteVP.linear(), learned_variance=True), x, None, TrainConfig("ddpm", steps=1),
              "unused", progress=False)


def test_conditional_hybrid_training_with_label_dropout_and_bins_runs(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 17, (64, 2), generator=g).float() / 8 - 1  # on 17 values in [-1, 1]
    y = torch.randint(0, 2, (64,), generator=g)
    net = MLPScoreNet(2, sg.DiscreteVP.linear(), hidden=16, num_classes=2, learned_variance=True)
    out = train(net, x, y, TrainConfig("hybrid", steps=5, batch_size=32, label_dropout=0.2, bins=17), tmp_path,
                progress=False)
    assert out["end_step"] == 5 and math.isfinite(out["running_loss"])
    with pytest.raises(ValueError, match="17 evenly spaced values"):  # continuous data is not on the bins
        train(net, x + 0.01, y, TrainConfig("hybrid", steps=5, bins=17), tmp_path / "other", progress=False)


def test_a_checkpoint_written_before_train_config_had_bins_still_resumes(tmp_path):
    x = torch.randn(64, 2)
    torch.manual_seed(0)
    net = MLPScoreNet(2, sg.DiscreteVP.linear(), hidden=16)
    train(net, x, None, TrainConfig("ddpm", steps=2, batch_size=16), tmp_path, progress=False)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    del config["meta"]["train"]["bins"]  # as an older scoregen wrote it
    config["config_sha256"] = _config_sha256(config)
    path.write_text(json.dumps(config))
    assert train(net, x, None, TrainConfig("ddpm", steps=4, batch_size=16), tmp_path, resume=True,
                 progress=False)["start_step"] == 2


def test_a_short_hybrid_training_learns_a_variance_samples_and_round_trips(tmp_path):
    # ring2d scaled into [-1, 1], improved-diffusion's data range (data wider than N(0, I) would want variances
    # above beta, v > 1: beta is the optimum for N(0, I) data)
    x = sg.data.load_data("ring2d", n=2048).x / 2.5
    torch.manual_seed(0)
    net = MLPScoreNet(2, sg.DiscreteVP.linear(), hidden=64, learned_variance=True)
    probe = lambda n: hybrid_terms(n, x[:1024], generator=torch.Generator().manual_seed(9))  # noqa: E731
    with torch.no_grad():
        before = probe(net)
    losses = []
    train(net, x, None, TrainConfig("hybrid", steps=400, batch_size=256, lr=2e-3, warmup=10, checkpoint_every=400),
          tmp_path, progress=False, callback=lambda step, loss: losses.append(loss))
    assert np.mean(losses[-50:]) < 0.6 * np.mean(losses[:20])
    with torch.no_grad():
        after = probe(net)
    # the same draws: both parts of the loss went down, the bound's through the variance it learned
    assert after.simple.mean() < 0.6 * before.simple.mean() and after.vlb.mean() < before.vlb.mean()

    loaded, _ = sg.io.load_checkpoint(tmp_path)
    model = loaded.score_model()
    assert model.learned_variance is True and loaded.config() == net.config()
    with torch.no_grad():
        for t in (1, 2, 5, 100, 1000):
            v, v_opt = _learned_and_optimal_v(loaded, x, t)
            assert bool(torch.isfinite(v).all())
            if t <= 5:  # where log(beta / beta_tilde) is largest, the bound pins v down; above, it hardly depends on v
                assert abs(v.mean().item() - v_opt) < 0.15, (t, v.mean().item(), v_opt)
        samples = sg.sample(model, "ddpm", n=1000, variance="learned", steps=50, seed=0, progress=False).samples
    assert samples.shape == (1000, 2) and bool(torch.isfinite(samples).all())
    assert torch.allclose(samples.std(0), x.std(0), rtol=0.15)


def _learned_and_optimal_v(net, x0, t):
    """The learned v (N, d) on data noised to label t, and the v of the bound's optimal constant variance for the
    network's own mean: ``argmin_var E KL = beta_tilde + c0^2 E(x0 - x0_hat)^2`` (t >= 2; Bao et al. 2022's
    identity), ``E(x0 - x0_hat)^2`` for the Gaussian decoder (t = 1), in the log-space coordinate of eq. 15.

    v is not confined to [0, 1] (improved-diffusion does not clip it): for continuous data the lowest levels'
    optimum lies near beta, v = 1 (eps is nearly unpredictable there), and a short run lands on either side of it."""
    schedule = net.schedule
    beta, abar, abar_prev = _ddpm(schedule, t)
    m, sigma = math.sqrt(abar), math.sqrt(1 - abar)
    x_t = m * x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    out = net(x_t, torch.full((x0.shape[0],), float(t)))
    eps_theta, v = out.chunk(2, dim=1)
    x0_err = ((x0 - (x_t - sigma * eps_theta) / m) ** 2).mean().item()
    if t == schedule.first_index:
        beta2, abar2, _ = _ddpm(schedule, t + 1)
        var_opt, low = x0_err, beta2 * (1 - abar) / (1 - abar2)
    else:
        low = beta * (1 - abar_prev) / (1 - abar)
        var_opt = low + (math.sqrt(abar_prev) * beta / (1 - abar)) ** 2 * x0_err
    return (v + 1) / 2, math.log(var_opt / low) / math.log(beta / low)
