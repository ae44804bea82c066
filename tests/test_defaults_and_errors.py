"""Sampler defaults that follow the model's trained levels, and bad input refused with a clear error."""

import math

import pytest
import torch

import scoregen as sg
from scoregen.streams import SampleStreams
from scoregen.bench import resolve_subject, run_bench
from scoregen.cli import main


class LabelRecorder:
    """An eps network that records the time labels it is asked at and answers with zeros."""

    def __init__(self):
        self.labels = []

    def __call__(self, x, t):
        self.labels.append(t.clone())
        return torch.zeros_like(x)


def test_langevin_defaults_to_an_ncsn_models_trained_sigmas():
    schedule = sg.DiscreteVE.geometric(1.0, 0.01, 10)
    net = LabelRecorder()
    model = sg.NetworkScoreModel(net, schedule, "eps", shape=(3,))
    res = sg.sample(model, "langevin", 4, seed=0, steps_per_level=2, progress=False)
    assert res.nfe == 20
    asked = torch.stack([t[0] for t in net.labels])
    # every query lands exactly on a trained label, each level in order, T = 2 times
    assert asked.tolist() == [float(i) for i in range(10) for _ in range(2)]


def test_langevin_with_explicit_grid_ignores_the_trained_sigmas():
    model = sg.NetworkScoreModel(LabelRecorder(), sg.DiscreteVE.geometric(1.0, 0.01, 10), "eps", shape=(3,))
    res = sg.sample(model, "langevin", 4, seed=0, levels=4, steps_per_level=1, sigma_max=0.5, progress=False)
    assert res.nfe == 4


def test_ddim_default_steps_are_capped_by_the_trained_levels():
    model = sg.NetworkScoreModel(LabelRecorder(), sg.DiscreteVE.geometric(1.0, 0.01, 10), "eps", shape=(3,))
    assert sg.sample(model, "ddim", 4, seed=0, progress=False).nfe == 10
    assert sg.sample(sg.load_target("ring2d"), "ddim", 4, seed=0, progress=False).nfe == 50


def test_continuous_schedule_answers_clean_queries_at_t_min():
    sched = sg.ContinuousVP()
    net = lambda x, t: torch.zeros_like(x)  # noqa: E731  an x0-network predicting 0
    model = sg.NetworkScoreModel(net, sched, "x0", shape=(2,))
    x = torch.ones(3, 2)
    eps = model.eps(x, 0.0, 1.0)
    assert torch.isfinite(eps).all()
    # answered at t_min: eps = (x_model - m x0) / sigma with x_model = x * m(t_min) / 1 and x0 = 0
    m_min, s_min = sched.m(sched.t_min), sched.sigma(sched.t_min)
    assert torch.allclose(eps, x * m_min / s_min)


def test_time_labels_keep_their_precision_in_bfloat16():
    net = LabelRecorder()
    model = sg.NetworkScoreModel(net, sg.DiscreteVP.linear(first_index=0), "eps", shape=(2,))
    sched = model.schedule
    model.eps(torch.ones(2, 2, dtype=torch.bfloat16), float(sched.sigma(999)), float(sched.m(999)))
    assert net.labels[-1].dtype == torch.float32 and net.labels[-1][0].item() == 999.0


@pytest.mark.parametrize("sigma, m", [(-0.5, 1.0), (float("nan"), 1.0), (0.5, 0.0), (0.5, float("inf"))])
def test_mixture_refuses_impossible_levels(sigma, m):
    target = sg.load_target("ring2d")
    with pytest.raises(ValueError, match="noise level"):
        target.eps(torch.zeros(2, 2), sigma, m)


def test_out_of_range_labels_are_refused():
    target = sg.load_target("ring2d")
    with pytest.raises(ValueError, match="class labels must be in 0..7"):
        sg.sample(target, "ddim", 4, seed=0, y=99, progress=False)
    guided = sg.ClassifierGuidance(target, target.classifier)
    with pytest.raises(ValueError, match="class labels must be in 0..7"):
        sg.sample(guided, "ddim", 4, seed=0, y=8, progress=False)


def test_guidance_accepts_a_plain_int_label():
    target = sg.load_target("ring2d")
    guided = sg.ClassifierGuidance(target, target.classifier, scale=2.0)
    x = torch.randn(5, 2)
    as_int = guided.eps(x, 0.5, 1.0, y=3)
    as_tensor = guided.eps(x, 0.5, 1.0, y=torch.full((5,), 3))
    assert torch.equal(as_int, as_tensor)


def test_guided_bench_counts_wrong_class_samples_against_the_sampler():
    target = sg.load_target("ring2d")
    weights = torch.as_tensor(target.weights * (target.labels == 3))
    weights = weights / weights.sum()
    unguided = target.sample(1000, torch.Generator().manual_seed(0))
    # unconditional samples spread over 8 classes: 7/8 of them are in the wrong class's modes
    assert sg.mode_tv(unguided, target, weights) == pytest.approx(7 / 8, abs=0.05)
    result = run_bench(resolve_subject("ring2d"), ["ddim"], [50], n=500, label=3, progress=False)
    assert result.rows[1].metrics["mode_tv"] < 0.05  # guided samples are in class 3's mode
    assert result.rows[1].metrics["class_accuracy"] > 0.95


def test_bench_guidance_scale_needs_a_label(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--guidance-scale", "3"])
    assert "--guidance-scale needs --label" in capsys.readouterr().err


@pytest.mark.parametrize(
    "sampler, options, message",
    [
        ("ddpm", {"steps": 2.7}, r"steps must be an integer in \[1, 100000\], got 2.7"),
        ("ddim", {"steps": 0}, r"steps must be an integer in \[1, 100000\], got 0"),
        ("langevin", {"levels": 2.5}, r"levels must be an integer in \[1, 100000\], got 2.5"),
        ("langevin", {"steps_per_level": 0}, "steps_per_level must be a positive integer"),
        ("langevin", {"step_lr": math.inf}, "step_lr must be a finite number"),
        ("langevin", {"sigma_max": math.inf}, "sigma_max must be a finite number > 0, got inf"),
        ("langevin", {"sigma_max": 0.001}, "need finite sigma_max > sigma_min"),
    ],
)
def test_bad_sampler_options_are_explained(sampler, options, message):
    with pytest.raises(ValueError, match=message):
        sg.sample(sg.load_target("ring2d"), sampler, 4, seed=0, progress=False, **options)


def test_dynamic_threshold_needs_a_positive_bound():
    with pytest.raises(ValueError, match="max_value"):
        sg.dynamic_threshold(max_value=0.0)
    hook = sg.dynamic_threshold(0.5, max_value=1.0)
    x0 = torch.tensor([[0.5, -3.0, 4.0, 0.1]])
    out = hook(x0)
    assert out.abs().max() <= 1.0 + 1e-6


def test_a_network_that_returns_its_input_is_not_aliased_by_in_place_updates():
    # With eps(x) = x, each DDIM step (eta = 0) multiplies x by the scalar k = m_s (1 - sigma_t) / m_t + sigma_s,
    # so the output is the initial noise times the product of the k's: computed here from the grid alone.
    model = sg.NetworkScoreModel(lambda x, t: x, sg.DiscreteVP.linear(), "eps", shape=(2,))
    x = sg.sample(model, "ddim", 8, seed=0, steps=20, dtype=torch.float64, progress=False).samples
    m, sigma = model.schedule.levels(20)
    m, sigma = list(m) + [1.0], list(sigma) + [0.0]
    k = math.prod(m[i + 1] * (1 - sigma[i]) / m[i] + sigma[i + 1] for i in range(len(m) - 1))
    z = SampleStreams(0, 0, 8, (2,), dtype=torch.float64).normal()  # sample()'s initial noise for seed 0
    assert torch.allclose(x, z * math.sqrt(m[0] ** 2 + sigma[0] ** 2) * k, rtol=1e-10, atol=0)
