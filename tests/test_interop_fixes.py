"""Interop fixes: a network answers callers in another dtype (its input cast to the network's parameter dtype and
device, the answer cast back), so a float64 sampler or likelihood runs on a float32 network."""

from __future__ import annotations

import torch

import scoregen as sg
from scoregen.networks import MLPScoreNet


def test_a_float64_caller_runs_a_float32_network_and_gets_float64_back():
    net = MLPScoreNet(2, sg.DiscreteVP.linear(), "eps").eval()
    model = net.score_model()
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps64 = model.eps(x, 0.6, 0.8)
        eps32 = model.eps(x.float(), 0.6, 0.8)
    assert eps64.dtype == torch.float64
    torch.testing.assert_close(eps64, eps32.double(), rtol=1e-5, atol=1e-6)  # the network's float32 answer
    res = sg.sample(model, "ddim", n=16, steps=10, seed=0, dtype=torch.float64, progress=False)
    assert res.samples.dtype == torch.float64 and bool(res.samples.isfinite().all())
    x0 = res.samples.detach()
    assert sg.vlb(model, x0, steps=10).dtype == torch.float64


def test_a_float64_network_called_in_float32_and_a_plain_function():
    net = MLPScoreNet(2, sg.DiscreteVP.linear(), "eps").double().eval()
    model = net.score_model()
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.eps(x, 0.6, 0.8)
        ref = model.eps(x.double(), 0.6, 0.8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float())
    seen = []

    def fn(x, t):  # no parameters: called with the caller's own dtype
        seen.append(x.dtype)
        return torch.zeros_like(x)

    plain = sg.NetworkScoreModel(fn, sg.DiscreteVP.linear(), shape=(2,))
    plain.eps(torch.zeros(3, 2, dtype=torch.float64), 0.5, 0.5)
    assert seen == [torch.float64]


def test_classifier_guidance_gives_a_class_conditional_network_the_label():
    """guided-diffusion's conditional models get the label too under classifier guidance; an unconditional network and
    an exact mixture (which would condition twice) do not."""
    seen = []

    class Net(torch.nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.num_classes = num_classes
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, y=None):
            seen.append(None if y is None else y.tolist())
            return torch.zeros_like(x) + self.w

    classifier = sg.load_target("ring2d").classifier
    for classes, want in ((8, [3, 3]), (None, None)):
        seen.clear()
        model = sg.NetworkScoreModel(Net(classes), sg.DiscreteVP.linear(), shape=(2,))
        guided = sg.ClassifierGuidance(model, classifier, 1.0)
        assert guided.pass_label == (classes is not None)
        guided.eps(torch.zeros(2, 2), 0.5, 0.8, torch.tensor([3, 3]))
        assert seen == [want]
    assert not sg.ClassifierGuidance(sg.load_target("ring2d"), classifier).pass_label
    seen.clear()
    forced = sg.ClassifierGuidance(sg.NetworkScoreModel(Net(8), sg.DiscreteVP.linear(), shape=(2,)), classifier,
                                   conditional_model=False)
    forced.eps(torch.zeros(2, 2), 0.5, 0.8, torch.tensor([1, 1]))
    assert seen == [None]
