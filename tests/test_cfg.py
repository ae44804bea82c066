"""Classifier-free guidance: on exact models it is classifier guidance with gamma = 1 + w."""

import pytest
import torch

import scoregen as sg
from scoregen.networks import MLPScoreNet

TARGET = sg.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [1.0, 1.0], labels=[0, 1])


@pytest.mark.parametrize("w", [0.0, 0.5, 3.0])
def test_cfg_on_an_exact_model_equals_classifier_guidance_with_gamma_one_plus_w(w):
    x = torch.randn(50, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, 2, (50,), generator=torch.Generator().manual_seed(1))
    cfg = sg.ClassifierFreeGuidance(TARGET, None, w).eps(x, 0.7, 0.8, y)
    cg = sg.ClassifierGuidance(TARGET, TARGET.classifier, 1.0 + w).eps(x, 0.7, 0.8, y)
    assert torch.allclose(cfg, cg, atol=1e-10)


def test_cfg_batches_conditional_and_null_queries_into_one_network_call():
    calls = []

    def net(x, t, y):
        calls.append(y.clone())
        return y.float()[:, None].expand_as(x) * 0.1  # eps depends on the label only

    model = sg.NetworkScoreModel(net, sg.DiscreteVP.linear(), shape=(1,))
    out = sg.ClassifierFreeGuidance(model, null_label=2, scale=0.5).eps(torch.zeros(3, 1), 0.5, 0.8, torch.tensor([0, 1, 1]))
    assert len(calls) == 1 and calls[0].tolist() == [0, 1, 1, 2, 2, 2]
    # (1 + w) eps(y) - w eps(null) with eps(label) = 0.1 * label
    assert torch.allclose(out[:, 0], 1.5 * 0.1 * torch.tensor([0.0, 1.0, 1.0]) - 0.5 * 0.2)


def test_cfg_needs_a_label_and_a_valid_scale():
    with pytest.raises(ValueError, match="needs a class label"):
        sg.sample(sg.ClassifierFreeGuidance(TARGET, None, 1.0), "ddim", 4, seed=0, progress=False)
    with pytest.raises(ValueError, match=">= 0"):
        sg.ClassifierFreeGuidance(TARGET, None, -1.0)


def test_cfg_guides_a_conditional_network_with_a_null_label():
    net = MLPScoreNet(1, sg.DiscreteVP.linear(), num_classes=2, hidden=16)
    model = sg.ClassifierFreeGuidance(net.score_model(), net.null_label, 2.0)
    res = sg.sample(model, "ddim", 8, seed=0, y=1, steps=5, progress=False)
    assert res.samples.shape == (8, 1) and res.nfe == 5
