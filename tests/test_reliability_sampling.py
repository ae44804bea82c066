"""Issue 8, sampling path: nothing lost, nothing silent.

Every case here is a run that used to go wrong quietly (corrupted state, broadcast or ignored outputs,
NaN found only at the end, garbage with exit 0, a hang, an out-of-memory crash) and must now either
give the right samples or stop early with an error that names what went wrong. All on exact
Gaussian-mixture targets or tiny stand-in models, fixed seeds; the whole file runs in a few seconds.
"""

from __future__ import annotations

import math
import re
import time
import warnings

import numpy as np
import pytest
import torch

import scoregen as sg
import scoregen.samplers as samplers
from scoregen.interop import from_denoiser
from scoregen.models import ModelTransform, ScoreModel
from scoregen._checks import check_int
from scoregen.schedules import DiscreteVP

RING = sg.load_target("ring2d")
VP = DiscreteVP.linear()


def _deferred(monkeypatch) -> None:
    """Run sample()'s finiteness checks as on an accelerator: device-side flags read every 16 evaluations."""
    monkeypatch.setattr(samplers, "_check_every", lambda device: 16)


CHECK_MODES = pytest.mark.parametrize("mode", ["per-evaluation", "deferred"])


def _set_mode(mode, monkeypatch):
    if mode == "deferred":
        _deferred(monkeypatch)


class Custom(ScoreModel):
    """A user's own score model: eps = fn(x, sigma, m)."""

    def __init__(self, fn, shape=(2,)):
        self.fn, self.shape, self.schedule = fn, shape, VP

    def eps(self, x, sigma, m=1.0, y=None):
        return self.fn(x, sigma, m)


# ------------------------------------------------------------------ 1. in-place networks


def _smooth(x, t):
    """A deterministic stand-in network: depends on its input and on the time label."""
    return 0.3 * x + 1e-4 * t[:, None]


def _in_place(op):
    def net(x, t):
        out = _smooth(x, t)
        getattr(x, op)(0.0 if op == "mul_" else 1.0)  # scribbles on its input after reading it
        return out

    return net


@pytest.mark.parametrize("op", ["mul_", "add_"])
@pytest.mark.parametrize("parameterization", ["eps", "x0"])
@pytest.mark.parametrize("sampler, options", [("ddpm", dict(steps=20)), ("ddim", dict(steps=20)),
                                              ("langevin", dict(levels=4, steps_per_level=4, sigma_max=2.0))],
                         ids=["ddpm", "ddim", "langevin-rescaled-input"])
def test_a_network_that_writes_to_its_input_cannot_corrupt_the_state(op, parameterization, sampler, options):
    """NetworkScoreModel hands the network a tensor of its own: the samples are those of the same network
    without the in-place write. (x0: the output is converted to eps with the input the network did not see.
    langevin queries VE levels of a VP network, so the input is rescaled by m_model, the other code path.)"""
    clean = sg.NetworkScoreModel(_smooth, VP, parameterization, shape=(2,))
    dirty = sg.NetworkScoreModel(_in_place(op), VP, parameterization, shape=(2,))
    kw = dict(seed=3, progress=False, **options)
    want = sg.sample(clean, sampler, 16, **kw).samples
    got = sg.sample(dirty, sampler, 16, **kw).samples
    assert torch.isfinite(want).all() and torch.equal(got, want)


def test_a_denoiser_that_writes_to_its_input_cannot_corrupt_the_state():
    def D(x, s):
        return 0.5 * x

    def D_in_place(x, s):
        out = 0.5 * x
        x.mul_(0.0)
        return out

    kw = dict(seed=1, steps=10, progress=False)
    want = sg.sample(from_denoiser(D, (2,), 0.01, 10.0), "ddim", 8, **kw).samples
    got = sg.sample(from_denoiser(D_in_place, (2,), 0.01, 10.0), "ddim", 8, **kw).samples
    assert torch.equal(got, want)


class Scribbler(ScoreModel):
    shape, schedule = (2,), VP

    def eps(self, x, sigma, m=1.0, y=None):
        x.add_(1.0)
        return torch.zeros_like(x)


@pytest.mark.parametrize("sampler", ["ddpm", "langevin"])
def test_a_custom_model_that_modifies_its_input_is_refused(sampler):
    with pytest.raises(ValueError, match=r"Scribbler.*modified its input .*in place"):
        sg.sample(Scribbler(), sampler, 4, seed=0, progress=False)


# ------------------------------------------------------------------ 2. output shape, dtype, device

BAD_OUTPUTS = {
    "shape": (lambda x: x[:, :1] * 0, r"shape \(4, 2\).*got \(4, 1\)"),
    "dtype": (lambda x: torch.zeros_like(x, dtype=torch.float64), r"dtype torch\.float32.*got torch\.float64"),
    "device": (lambda x: torch.zeros(x.shape, device="meta"), r"device cpu.*got meta"),
    "not a tensor": (lambda x: 0.0, r"got float"),
}


@pytest.mark.parametrize("what", list(BAD_OUTPUTS))
@pytest.mark.parametrize("sampler, method", [("ddim", "eps"), ("langevin", "score")])
def test_a_model_output_of_the_wrong_kind_is_refused(what, sampler, method):
    fn, needle = BAD_OUTPUTS[what]
    with pytest.raises(ValueError, match=rf"Custom.*{method}.*{needle}"):
        sg.sample(Custom(lambda x, s, m: fn(x)), sampler, 4, seed=0, progress=False)


def test_a_network_output_of_the_wrong_dtype_is_refused():
    model = sg.NetworkScoreModel(lambda x, t: torch.zeros_like(x, dtype=torch.float64), VP, shape=(2,))
    with pytest.raises(ValueError, match=r"NetworkScoreModel.*eps.*float64"):
        sg.sample(model, "ddpm", 4, seed=0, steps=5, progress=False)


def shrink(x0):
    return x0[:, :1]


def to_double(x0):
    return x0.double()


def to_meta(x0):
    return torch.zeros(x0.shape, device="meta")


@pytest.mark.parametrize("hook, needle", [(shrink, r"shape \(4, 2\).*got \(4, 1\)"),
                                          (to_double, r"dtype torch\.float32.*got torch\.float64"),
                                          (to_meta, r"device cpu.*got meta")])
def test_an_x0_hook_output_of_the_wrong_kind_is_refused(hook, needle):
    with pytest.raises(ValueError, match=rf"x0 hook {hook.__name__}.*{needle}"):
        sg.sample(RING, "ddim", 4, seed=0, steps=5, x0_hook=hook, progress=False)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=rf"x0 hook {hook.__name__}"):  # also outside sample()
        sg.X0Hook(RING, hook).eps(x, 0.5, 1.0)


# ------------------------------------------------------------------ 3. NaN / inf at the step where it appears


class NaNAt(ModelTransform):
    """Returns NaN on its ``at``-th call (counting every call), the wrapped model's eps otherwise."""

    def __init__(self, model, at):
        super().__init__(model)
        self.at, self.calls = at, 0

    def eps(self, x, sigma, m=1.0, y=None):
        self.calls += 1
        out = self.model.eps(x, sigma, m, y)
        return out * math.nan if self.calls == self.at else out


@CHECK_MODES
def test_nan_is_reported_at_the_evaluation_that_produced_it(mode, monkeypatch):
    _set_mode(mode, monkeypatch)
    m, sigma = RING.schedule.levels(20)
    with pytest.raises(FloatingPointError) as info:
        sg.sample(NaNAt(RING, 7), "ddim", 8, seed=0, steps=20, progress=False)
    msg = str(info.value)
    assert re.search(r"model evaluation 7 \(of \d+", msg), msg
    assert f"sigma={sigma[6]:.4g}" in msg and f"m={m[6]:.4g}" in msg and f"sigma/m={sigma[6] / m[6]:.4g}" in msg, msg
    # the NaN came with a finite input, and re-evaluating gives finite values (the transform counts its calls)
    assert "was finite" in msg and "could not be reproduced" in msg, msg


def infinite_below(threshold):
    def log_likelihood(x, sigma, m, y):
        return (math.inf if sigma < threshold else 1.0) * x.sum(-1)

    return log_likelihood


@CHECK_MODES
def test_an_infinite_guidance_gradient_is_blamed_on_the_guidance(mode, monkeypatch):
    _set_mode(mode, monkeypatch)
    m, sigma = RING.schedule.levels(20)
    first = int(np.flatnonzero(np.asarray(sigma) < 0.3)[0])  # the first level below 0.3
    guided = sg.LikelihoodGuidance(RING, infinite_below(0.3), scale=2.0)
    with pytest.raises(FloatingPointError) as info:
        sg.sample(guided, "ddim", 8, seed=0, steps=20, progress=False)
    msg = str(info.value)
    assert f"model evaluation {first + 1} (" in msg and f"sigma={sigma[first]:.4g}" in msg, msg
    assert "the guidance (LikelihoodGuidance, scale 2)" in msg and "GaussianMixture" in msg, msg


@CHECK_MODES
def test_nan_from_the_network_is_blamed_on_the_model(mode, monkeypatch):
    _set_mode(mode, monkeypatch)
    net = lambda x, t: x * 0 + (math.nan if t[0] < 300 else 0.1)  # noqa: E731  NaN at the lower noise levels
    model = sg.ClassifierGuidance(sg.NetworkScoreModel(net, VP, shape=(2,)), RING.classifier, scale=1.0)
    with pytest.raises(FloatingPointError, match=r"the model \(NetworkScoreModel\(.*returned NaN or inf"):
        sg.sample(model, "ddpm", 4, seed=0, y=1, steps=10, x0_hook=sg.clip_x0(-3, 3), progress=False)


def test_nan_from_the_x0_hook_is_blamed_on_the_hook():
    def nan_hook(x0):
        return x0 * math.nan

    with pytest.raises(FloatingPointError, match=r"the x0 hook \(nan_hook\)"):
        sg.sample(RING, "ddim", 4, seed=0, steps=5, x0_hook=nan_hook, progress=False)


@CHECK_MODES
def test_a_state_that_overflows_is_blamed_on_the_sampler_update(mode, monkeypatch):
    """eps = 3e38 everywhere is finite (its sum overflows: the check confirms element-wise), but DDIM's update
    carries the state past float32's largest value; the next evaluation sees an infinite input."""
    _set_mode(mode, monkeypatch)
    huge = Custom(lambda x, s, m: x * 0 + 3e38)
    with pytest.raises(FloatingPointError) as info:
        sg.sample(huge, "ddim", 8, seed=0, steps=20, progress=False)
    msg = str(info.value)
    assert "state x was already NaN or inf" in msg and "update diverged" in msg and "more steps" in msg, msg


def test_a_state_that_diverges_on_the_last_update_is_caught_after_the_run():
    constant = Custom(lambda x, s, m: torch.full_like(x, 3e38))  # finite whatever its input
    with pytest.raises(FloatingPointError, match=r"every model evaluation returned finite values.*update diverged"):
        sg.sample(constant, "ddim", 8, seed=0, steps=20, progress=False)


def test_finite_huge_outputs_are_not_mistaken_for_nan():
    """A sum of finite values can overflow; the element-wise check must confirm before refusing."""
    model = Custom(lambda x, s, m: torch.where(torch.arange(2) == 0, torch.tensor(3e38), torch.tensor(0.0)).expand_as(x).clone())
    with pytest.raises(FloatingPointError, match="every model evaluation returned finite values"):
        sg.sample(model, "ddpm", 64, seed=0, steps=3, progress=False)


# ------------------------------------------------------------------ 4. labels of mixture targets

MEANS2 = [[-2.0, 0.0], [2.0, 0.0]]


@pytest.mark.parametrize("labels, needle", [
    ([0, 5], r"class(es)? 1, 2, 3, 4 ha(s|ve) no component.*relabel"),
    ([0, 1e9], r"label 1000000000.*2 components"),
    ([1, 1], r"class(es)? 0 ha(s|ve) no component"),
    ([0, 2.5], "integers"),
    ([0, True], "integers"),
])
def test_mixture_labels_must_be_dense_integers(labels, needle):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=needle):
        sg.GaussianMixture([1.0, 1.0], MEANS2, [0.5, 0.5], labels=labels)
    assert time.perf_counter() - start < 1.0


TWO = sg.GaussianMixture([1.0, 1.0], MEANS2, [0.5, 0.5], labels=[0, 1])


@pytest.mark.parametrize("y", [2, -1, 1.5, True])
def test_classes_outside_the_mixture_are_refused(y):
    with pytest.raises(ValueError, match=r"class"):
        TWO.conditional(y)
    with pytest.raises(ValueError, match=r"class"):
        TWO.sample(4, torch.Generator().manual_seed(0), y=y)
    with pytest.raises(ValueError, match=r"class|label"):
        sg.sample(TWO, "ddim", 4, seed=0, y=y, steps=5, progress=False)
    for guided in (sg.ClassifierGuidance(TWO, TWO.classifier), sg.ClassifierFreeGuidance(TWO, None, scale=1.0)):
        with pytest.raises(ValueError, match=r"class|label"):
            sg.sample(guided, "ddim", 4, seed=0, y=y, steps=5, progress=False)


def test_float_label_tensors_are_refused():
    y = torch.full((4,), 1.5)
    with pytest.raises(ValueError, match="integer"):
        sg.sample(TWO, "ddim", 4, seed=0, y=y, steps=5, progress=False)
    with pytest.raises(ValueError, match="integer"):
        sg.ClassifierGuidance(TWO, TWO.classifier).eps(torch.zeros(4, 2), 0.5, 1.0, y=y)


def test_the_conditional_of_a_class_is_a_one_class_mixture():
    c = sg.GaussianMixture([1.0, 2.0, 3.0], [[0.0], [1.0], [2.0]], [1.0, 1.0, 1.0], labels=[1, 0, 1]).conditional(1)
    assert c.num_classes == 1 and c.labels.tolist() == [0, 0]


# ------------------------------------------------------------------ 5. seed, generator, counts


def test_seed_and_generator_together_are_refused():
    with pytest.raises(ValueError, match="seed.*generator"):
        sg.sample(RING, "ddim", 4, seed=5, generator=torch.Generator().manual_seed(5), progress=False)


@pytest.mark.parametrize("seed", [True, 2.5, -1, 2**63, "7"])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        sg.sample(RING, "ddim", 4, seed=seed, steps=5, progress=False)


@pytest.mark.parametrize("n", [2.5, 2.0, True, 0, -3, "4"])
def test_bad_sample_counts_are_refused(n):
    with pytest.raises(ValueError, match=r"^n must be"):
        sg.sample(RING, "ddim", n, seed=0, steps=5, progress=False)


def test_numpy_integers_are_counts_and_seeds():
    res = sg.sample(RING, "ddim", np.int64(3), seed=np.int32(4), steps=np.int64(5), progress=False)
    assert res.samples.shape == (3, 2) and res.seed == 4 and res.nfe == 5


@pytest.mark.parametrize("value", [True, 2.0, 2.7, np.float64(3.0), "3"])
def test_check_int_takes_integers_only(value):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        check_int("steps", value)
    assert check_int("steps", np.int16(3)) == 3


# ------------------------------------------------------------------ 6. extreme but valid settings


def test_langevin_refuses_levels_below_the_dtypes_resolution():
    with pytest.raises(ValueError, match=r"sigma_min=1e-30.*float32.*sigma_min >= \d"):
        sg.sample(RING, "langevin", 4, seed=0, sigma_min=1e-30, progress=False)
    # float64 resolves them: 1e-9 is refused in float32, accepted in float64
    with pytest.raises(ValueError, match=r"sigma_min=1e-09"):
        sg.sample(RING, "langevin", 4, seed=0, levels=40, sigma_min=1e-9, steps_per_level=1, progress=False)
    res = sg.sample(RING, "langevin", 4, seed=0, levels=40, sigma_min=1e-9, steps_per_level=1,
                    dtype=torch.float64, progress=False)
    assert torch.isfinite(res.samples).all()


def test_langevin_warns_when_levels_are_too_coarse():
    with pytest.warns(UserWarning, match=r"levels.*factor of \d+.*raise levels"):
        sg.sample(RING, "langevin", 4, seed=0, levels=3, sigma_min=1e-4, steps_per_level=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults are fine
        sg.sample(RING, "langevin", 4, seed=0, steps_per_level=1, progress=False)


@pytest.mark.parametrize("make", [lambda s: sg.ClassifierGuidance(RING, RING.classifier, scale=s),
                                  lambda s: sg.ClassifierFreeGuidance(RING, None, scale=s)],
                         ids=["classifier", "classifier-free"])
def test_guidance_scales_beyond_any_published_setting_are_refused(make):
    make(100.0)
    for scale in (100.5, 1e6, 1e30):
        with pytest.raises(ValueError, match=r"scale.*at most 100"):
            make(scale)


def test_a_likelihoods_scale_is_the_users_own():
    assert sg.LikelihoodGuidance(RING, infinite_below(0.0), scale=1e6).scale == 1e6


# ------------------------------------------------------------------ 7. memory before work


def test_too_many_samples_are_refused_before_any_work():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"n = 1000000000000 samples of shape \(2,\).*8000\.0 GB.*GB available"):
        sg.sample(RING, "ddim", 10**12, seed=0, progress=False)
    assert time.perf_counter() - start < 1.0


def _little_memory(monkeypatch, nbytes=64 * 1024):
    monkeypatch.setattr(samplers._memory, "available_memory", lambda device: nbytes)


def test_samples_are_drawn_in_batches_when_memory_is_short(monkeypatch):
    _little_memory(monkeypatch)
    n, kw = 1000, dict(steps=10, progress=False)
    res = sg.sample(RING, "ddpm", n, seed=7, **kw)
    b = res.batch_size
    assert 1 <= b < n and res.samples.shape == (n, 2) and res.nfe == 10
    assert torch.equal(sg.sample(RING, "ddpm", n, seed=7, **kw).samples, res.samples)  # same seed, same samples
    g = torch.Generator().manual_seed(7)
    by_hand = [sg.sample(RING, "ddpm", min(b, n - i), generator=g, **kw).samples for i in range(0, n, b)]
    assert torch.equal(torch.cat(by_hand), res.samples)
    # an explicit batch size gives the same samples as the same batches by hand
    _little_memory(monkeypatch, 128 * 1024)
    res2 = sg.sample(RING, "ddpm", n, seed=7, batch_size=300, **kw)
    g = torch.Generator().manual_seed(7)
    by_hand = [sg.sample(RING, "ddpm", k, generator=g, batch_size=k, **kw).samples for k in (300, 300, 300, 100)]
    assert res2.batch_size == 300 and torch.equal(torch.cat(by_hand), res2.samples)


def test_labels_follow_their_batch():
    y = torch.arange(40) % 2
    guided = sg.ClassifierGuidance(TWO, TWO.classifier, scale=4.0)
    whole = sg.sample(guided, "ddim", 40, seed=2, y=y, steps=10, batch_size=40, progress=False).samples
    split = sg.sample(guided, "ddim", 40, seed=2, y=y, steps=10, batch_size=15, progress=False).samples
    assert ((whole[:, 0] > 0) == (y == 1)).all() and ((split[:, 0] > 0) == (y == 1)).all()


@pytest.mark.parametrize("batch_size", [0, 2.5, True, -1])
def test_bad_batch_sizes_are_refused(batch_size):
    with pytest.raises(ValueError, match="batch_size must be"):
        sg.sample(RING, "ddim", 10, seed=0, batch_size=batch_size, progress=False)


def test_a_batch_size_that_cannot_fit_is_refused_with_one_that_does(monkeypatch):
    _little_memory(monkeypatch)
    with pytest.raises(ValueError, match=r"batch_size=1000 needs about [\d.]+ [kMG]?B.*use batch_size=\d+ or less"):
        sg.sample(RING, "ddim", 1000, seed=0, batch_size=1000, progress=False)


class Wide(torch.nn.Module):
    """eps-network 2 -> 1000 -> 2: its activations dwarf the state."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(2, 1000), torch.nn.Tanh(), torch.nn.Linear(1000, 2))

    def forward(self, x, t):
        return self.inner(x)


def test_network_activations_are_measured_without_touching_the_callers_generator():
    net = Wide()
    as_module = sg.NetworkScoreModel(net, VP, shape=(2,))
    as_function = sg.NetworkScoreModel(lambda x, t: net(x, t), VP, shape=(2,))  # no module to measure
    module_bytes = samplers._memory.per_sample_bytes(as_module, torch.float32, torch.device("cpu"), None)
    plain_bytes = samplers._memory.per_sample_bytes(as_function, torch.float32, torch.device("cpu"), None)
    assert module_bytes - plain_bytes == (1000 + 1000 + 2) * 4  # Linear, Tanh, Linear (= Wide's own output)
    # guidance through a network classifier keeps its activations for the backward pass: counted twice
    clf = sg.models.NetworkClassifier(torch.nn.Sequential(torch.nn.Linear(2, 500), torch.nn.Linear(500, 2)), VP)
    clf.net = _TakesT(clf.net)
    guided = sg.ClassifierGuidance(as_function, clf, scale=1.0)
    y = torch.zeros(1, dtype=torch.long)
    assert samplers._memory.per_sample_bytes(guided, torch.float32, torch.device("cpu"), y) - plain_bytes == 2 * (500 + 2) * 4
    with torch.no_grad():
        g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        a = sg.sample(as_module, "ddim", 6, generator=g1, steps=5, progress=False).samples
        b = sg.sample(as_function, "ddim", 6, generator=g2, steps=5, progress=False).samples
    assert torch.equal(a, b) and torch.equal(g1.get_state(), g2.get_state())


def test_a_stack_that_needs_all_n_samples_is_measured_on_them():
    """A measurement with one mask per sample cannot be evaluated on one sample: the activations are measured on
    all n instead, with no warning. Prior pass (no grad) + the DPS likelihood's pass through the prior (with
    grad: kept and differentiated, twice): 3 x Wide's activations; tensors at reused addresses count again."""
    prior = sg.NetworkScoreModel(Wide(), VP, shape=(2,))
    mask = torch.ones(5, 2)
    mask[:, 1] = 0
    posterior = sg.LikelihoodGuidance(prior, sg.gaussian_measurement(prior, mask, torch.zeros(5, 2), 0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = samplers._memory.per_sample_bytes(posterior, torch.float32, torch.device("cpu"), None, 5)
        assert sg.sample(posterior, "ddim", 5, seed=0, steps=3, progress=False).batch_size == 5
    state = samplers._memory.STATE_COPIES * 2 * 4
    assert got - state == 3 * (1000 + 1000 + 2) * 4


class _TakesT(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, t):
        return self.inner(x)


# ------------------------------------------------------------------ 3 on an accelerator (skipped without CUDA)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_nan_is_found_on_cuda_with_flags_read_every_16_evaluations():
    with pytest.raises(FloatingPointError, match=r"model evaluation 7 \(of 16 so far\).*could not be reproduced"):
        sg.sample(NaNAt(RING, 7), "ddim", 8, seed=0, steps=20, device="cuda", progress=False)
    huge = Custom(lambda x, s, m: x * 0 + 3e38)
    with pytest.raises(FloatingPointError, match=r"state x was already NaN or inf"):
        sg.sample(huge, "ddim", 8, seed=0, steps=20, device="cuda", progress=False)


@cuda
def test_the_checks_do_not_sync_the_device_per_step():
    """48 more DDIM steps add at most 3 flag reads (+ slack), not 48 host syncs."""

    def syncs(steps):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                sg.sample(RING, "ddim", 64, seed=0, steps=steps, device="cuda", progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(64) - syncs(16) <= 5
