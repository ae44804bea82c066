"""The DDPM U-Net: shapes, the paper's parameter count, conditioning, configs, the score-model interface,
argument checks, and a short training run on a fixed batch of 8x8 images."""

import json

import pytest
import torch

import scoregen as sg
from scoregen.networks.unet import UNet
from scoregen.training import ddpm_loss

SCHEDULE = sg.DiscreteVP.linear()


def _small(**kw):
    args = dict(image_size=8, in_channels=1, schedule=SCHEDULE, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), dropout=0.0, groups=8)
    return UNet(**{**args, **kw})


def _perturb(net, seed=0):
    """Give the zero-initialised layers (last conv of each block, attention projections, output conv) random
    weights, so that every path through the network, the time and label embeddings included, reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def _count(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "kw, size",
    [
        (dict(), (8, 8)),
        (dict(), (8, 16)),  # any size divisible by the downsampling factor runs
        (dict(image_size=16, in_channels=3, base_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(8, 4), groups=16), (16, 16)),
        (dict(image_size=12, in_channels=2, attention_resolutions=(), num_res_blocks=2, parameterization="v"), (12, 12)),
        (dict(image_size=4, channel_mult=(1,), attention_resolutions=(4,), num_classes=3), (4, 4)),
    ],
)
def test_output_has_the_input_shape(kw, size):
    net = _perturb(_small(**kw))
    c = net.shape[0]
    x = torch.randn(3, c, *size, generator=torch.Generator().manual_seed(0))
    out = net(x, torch.tensor([1.0, 500.0, 1000.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert net.shape == (c, net.config()["image_size"], net.config()["image_size"])


def test_cifar10_preset_has_the_papers_35_7m_parameters():
    net = UNet.cifar10(SCHEDULE)
    assert abs(_count(net) - 35.7e6) < 0.02 * 35.7e6
    assert net.shape == (3, 32, 32) and net.null_label is None
    cfg = net.config()
    assert (cfg["base_channels"], cfg["channel_mult"], cfg["num_res_blocks"]) == (128, [1, 2, 2, 2], 2)
    assert (cfg["attention_resolutions"], cfg["dropout"], cfg["groups"]) == ([16], 0.1, 32)
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 3, 32, 32), torch.tensor([10.0])).shape == (1, 3, 32, 32)


def test_tiny_preset_is_under_a_million_parameters():
    net = UNet.tiny(schedule=SCHEDULE)
    assert _count(net) < 1_000_000 and net.shape == (1, 8, 8)
    assert UNet.tiny(num_classes=10).null_label == 10


def test_zero_initialised_layers_make_the_output_zero_at_init():
    net = _small().eval()
    out = net(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3.0, 700.0]))
    assert torch.equal(out, torch.zeros_like(out))
    assert not net.conv_out.weight.any() and not net.down[0].res.conv2.weight.any()


def test_time_conditioning_changes_the_output():
    net = _perturb(_small())
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)).expand(3, 1, 8, 8)
    with torch.no_grad():
        out = net(x, torch.tensor([10.0, 10.0, 900.0]))
        frac = net(x[:1], torch.tensor([10.5]))
    assert torch.allclose(out[0], out[1])  # same input, same label: same output
    assert (out[0] - out[2]).abs().max() > 1e-2 * out[0].abs().max()
    assert (frac[0] - out[0]).abs().max() > 0  # fractional labels are embedded, not rounded


def test_class_conditioning_and_the_null_label():
    net = _perturb(_small(num_classes=3))
    assert net.null_label == 3
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)).expand(4, 1, 8, 8)
    t = torch.full((4,), 200.0)
    with torch.no_grad():
        out = net(x, t, torch.tensor([0, 1, 2, 3]))
        uncond = net(x, t)
        scalar = net(x, t, 1)
    for i in range(3):
        assert (out[i] - out[i + 1]).abs().max() > 1e-2 * out[i].abs().max()
    assert torch.equal(uncond, out[3:].expand(4, 1, 8, 8))  # y=None is the null label
    assert torch.equal(scalar[0], out[1])


def test_bad_labels_are_clear_errors():
    cond, uncond = _small(num_classes=3), _small()
    x, t = torch.zeros(2, 1, 8, 8), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match=r"0\.\.2, or 3 for the null label"):
        cond(x, t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="shape"):
        cond(x, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        uncond(torch.zeros(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match="divisible by 2"):
        uncond(torch.zeros(2, 1, 7, 8), t)
    with pytest.raises(ValueError, match="3 labels for a batch of 2"):
        uncond(x, torch.tensor([1.0, 2.0, 3.0]))


def test_config_round_trip_rebuilds_the_same_network():
    schedule = sg.DiscreteVP.cosine(T=200)
    net = _perturb(_small(schedule=schedule, parameterization="x0", num_classes=4, num_res_blocks=2,
                          attention_resolutions=(8, 4), dropout=0.2))
    cfg = json.loads(json.dumps(net.config()))  # JSON-able
    assert cfg["schedule"] == schedule.to_config() and cfg["num_classes"] == 4
    back = UNet.from_config(cfg)
    assert back.config() == cfg
    back.load_state_dict(net.state_dict())
    back.eval()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t, y = torch.tensor([5.0, 150.0]), torch.tensor([1, 4])
    with torch.no_grad():
        assert torch.equal(net(x, t, y), back(x, t, y))
    assert back.parameterization == "x0" and back.schedule.to_config() == schedule.to_config()
    with pytest.raises(ValueError, match="schedule"):
        UNet.from_config({k: v for k, v in cfg.items() if k != "schedule"})


def test_score_model_and_sampling():
    net = _perturb(_small())
    model = net.score_model()
    assert isinstance(model, sg.ScoreModel) and model.shape == (1, 8, 8) and model.time == "fractional"
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = model.eps(x, 0.5, 0.8)
    assert eps.shape == x.shape and torch.isfinite(eps).all() and eps.abs().max() > 0
    res = sg.sample(model, "ddim", n=2, steps=3, seed=0, progress=False)
    assert res.samples.shape == (2, 1, 8, 8) and res.nfe == 3 and torch.isfinite(res.samples).all()
    again = sg.sample(model, "ddim", n=2, steps=3, seed=0, progress=False)
    assert torch.equal(res.samples, again.samples)
    assert net.score_model("nearest").time == "nearest"


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(image_size=10, channel_mult=(1, 2, 2)), r"image_size 10 is not divisible by 2\*\*\(len\(channel_mult\) - 1\) = 4"),
        (dict(base_channels=20), r"channel counts \[20\].*not divisible by groups=8"),
        (dict(base_channels=24, groups=16), r"channel counts \[24\].*groups=16"),
        (dict(attention_resolutions=(16,)), r"attention resolution\(s\) \[16\] are never reached.*\[8, 4\]"),
        (dict(attention_resolutions=(2,)), r"never reached"),
        (dict(parameterization="noise"), "unknown parameterization"),
        (dict(channel_mult=()), "non-empty"),
        (dict(channel_mult=(1, 0)), r"channel_mult entry must be an integer in \[1, 1048576\], got 0"),
        (dict(channel_mult=(1, 2**20 + 1)), r"channel_mult entry must be an integer in \[1, 1048576\], got 1048577"),
        (dict(num_res_blocks=0), r"num_res_blocks must be an integer in \[1, 1024\]"),
        (dict(dropout=1.0), "dropout must be a finite number >= 0 and < 1"),
        (dict(dropout="0.1"), "dropout must be a finite number >= 0 and < 1, got '0.1'"),
        (dict(num_classes=0), r"num_classes must be an integer in \[1, 16777216\], got 0"),
        (dict(image_size=8.5), r"image_size must be an integer in \[1, 16777216\], got 8.5 of type float"),
        (dict(base_channels=9, groups=1), "must be even"),
    ],
)
def test_bad_arguments_raise_helpful_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        _small(**kw)


@pytest.mark.slow  # 13 s; the shipped digits U-Nets, trained with the same code, are checked in the default run
def test_tiny_unet_learns_a_fixed_batch():
    torch.manual_seed(0)  # the weight init
    net = UNet.tiny(schedule=SCHEDULE)
    x0 = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def held_out_loss():
        # the same noise and labels each time: 4 draws per image, dropout off
        net.eval()
        with torch.no_grad():
            loss = ddpm_loss(net, x0.repeat(4, 1, 1, 1), generator=torch.Generator().manual_seed(2)).item()
        net.train()
        return loss

    before = held_out_loss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        opt.zero_grad()
        ddpm_loss(net, x0, generator=g).backward()
        opt.step()
    after = held_out_loss()
    assert before == pytest.approx(1.0, abs=0.1)  # the zero output's loss is E||eps||^2 / dim = 1
    assert after < 0.4 * before, (before, after)
