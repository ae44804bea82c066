"""Issue 8, sampling path: nothing lost, nothing silent.

Every case here is a run that used to go wrong quietly (corrupted state, broadcast or ignored outputs,
NaN found only at the end, garbage with exit 0, a hang, an out-of-memory crash) and must now either
give the right samples or stop early with an error that names what went wrong. All on exact
Gaussian-mixture targets or tiny stand-in models, fixed seeds; the whole file runs in a few seconds.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings

import numpy as np
import pytest
import torch

import scoregen as sg
import scoregen.memory as memory
import scoregen.samplers as samplers
from scoregen.interop import from_denoiser
from scoregen.guidance import LikelihoodGuidance
from scoregen.models import ModelTransform, ScoreModel
from scoregen._checks import check_int
from scoregen.schedules import DiscreteVP

RING = sg.load_target("ring2d")
VP = DiscreteVP.linear()


def _deferred(monkeypatch) -> None:
    """Run sample()'s finiteness checks as on an accelerator: device-side flags read every 16 evaluations."""
    monkeypatch.setattr(samplers._guard, "check_every", lambda device: 16)


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


class MisbehavesOnCall(ModelTransform):
    """The wrapped model, but on its ``at``-th call (counting every call) it misbehaves (:meth:`act`)."""

    def __init__(self, model, at):
        super().__init__(model)
        self.at, self.calls = at, 0

    def act(self, x, out):
        raise NotImplementedError

    def eps(self, x, sigma, m=1.0, y=None):
        self.calls += 1
        out = self.model.eps(x, sigma, m, y)
        return self.act(x, out) if self.calls == self.at else out


class ScribblesOnCall(MisbehavesOnCall):
    """Writes to its input after reading it."""

    def act(self, x, out):
        x.mul_(1e6)
        return out


@pytest.mark.parametrize("at", [1, 5])
@pytest.mark.parametrize("sampler, options", [("ddpm", dict(steps=10)), ("ddim", dict(steps=10)),
                                              ("langevin", dict(levels=3, steps_per_level=3, sigma_min=0.1))])
def test_a_model_that_writes_to_its_input_on_any_call_cannot_corrupt_the_state(at, sampler, options):
    """Every evaluation gets a copy of the state, not only the first: a write on the 5th call changes nothing."""
    kw = dict(seed=3, progress=False, **options)
    dirty, clean = ScribblesOnCall(RING, at), ScribblesOnCall(RING, 0)  # the same stack, never writing
    got = sg.sample(dirty, sampler, 16, **kw).samples
    assert dirty.calls > at and torch.equal(got, sg.sample(clean, sampler, 16, **kw).samples)


def test_a_network_never_gets_the_callers_tensor():
    """NetworkScoreModel hands its network a copy when the input would be the caller's own tensor (no rescaling)
    or is read again after the call (x0 and v outputs are converted to eps with it), else the rescaled input, a
    fresh tensor nobody reads again: so sample() need not copy its state for it (protects_input)."""
    def net(x, t):
        x.mul_(0)  # an in-place network
        return torch.ones_like(x)

    x = torch.randn(4, 2)
    kept = x.clone()
    trained = float(VP.sigma(500)), float(VP.m(500))  # a trained VP level: no rescaling, x_in is x
    ve = 0.5, 1.0  # a VE level: x_in = x * m_model, a new tensor
    for (sigma, m), parameterization in [(trained, "eps"), (trained, "x0"), (ve, "eps"), (ve, "score"), (ve, "x0"), (ve, "v")]:
        model = sg.NetworkScoreModel(net, VP, parameterization, shape=(2,))
        eps = model.eps(x, sigma, m)
        honest = sg.NetworkScoreModel(lambda x, t: torch.ones_like(x), VP, parameterization, shape=(2,)).eps(x, sigma, m)
        assert torch.equal(x, kept) and torch.equal(eps, honest), parameterization
        assert model.protects_input


def test_only_models_that_protect_their_input_skip_the_copy():
    class Custom(ScribblesOnCall):
        pass

    assert RING.protects_input and sg.X0Hook(RING, sg.clip_x0()).protects_input
    assert sg.ClassifierGuidance(RING, RING.classifier, 1.0).protects_input
    assert not Custom(RING, 0).protects_input  # a user's transform may write: sample() copies for it
    assert not sg.X0Hook(Custom(RING, 0), sg.clip_x0()).protects_input


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


class NaNAt(MisbehavesOnCall):
    """Returns NaN instead of the wrapped model's eps."""

    def act(self, x, out):
        return out * math.nan


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


class Watched(LikelihoodGuidance):
    """Guidance that logs every attribute set on any of its instances, by the instance's id."""

    sets: list = []

    def __setattr__(self, name, value):
        Watched.sets.append((id(self), name))
        super().__setattr__(name, value)


def test_finding_the_culprit_never_modifies_the_users_model_stack():
    """The stack is re-evaluated on copies: the user's objects (possibly shared with other stacks or threads)
    are never modified, not even temporarily."""
    inner = NaNAt(RING, 0)  # never NaN itself
    guided = Watched(inner, infinite_below(0.3), scale=2.0)
    Watched.sets.clear()
    with pytest.raises(FloatingPointError, match=r"the guidance \(Watched, scale 2\) returned NaN"):
        sg.sample(guided, "ddim", 8, seed=0, steps=20, progress=False)
    assert id(guided) not in {who for who, _ in Watched.sets} and guided.model is inner


def halves(model, z, *, generator=None, y=None, callback=None, progress=None):
    """A custom sampler that evaluates the model on half of its batch."""
    x = z.clone()
    for _ in range(4):
        x[:4] -= 0.1 * model.eps(x[:4], 0.5, 1.0, y)
    return x


@CHECK_MODES
def test_a_query_shaped_unlike_the_state_is_checked_as_it_returns(mode, monkeypatch):
    """The deferred flags are shaped like the state; a custom sampler's half-batch query is checked at once."""
    _set_mode(mode, monkeypatch)
    with pytest.raises(FloatingPointError, match=r"model evaluation 3 \(of 3 so far\)"):
        sg.sample(NaNAt(RING, 3), halves, 8, seed=0, progress=False)


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


def test_a_sparse_labelling_names_its_first_gaps_and_a_short_relabelling():
    K = 1000
    labels = list(range(0, 2 * K, 2))  # 0, 2, 4, ...: 999 classes without a component
    with pytest.raises(ValueError) as info:
        sg.GaussianMixture([1.0] * K, [[float(i)] for i in range(K)], [1.0] * K, labels=labels)
    msg = str(info.value)
    assert "classes 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, ... (999 in all) have no component" in msg, msg
    assert "largest label 1998, for 1000 components" in msg and "e.g. labels [0, 1, 2, 3, 4," in msg, msg
    assert len(msg) < 500, msg


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


def test_the_coarse_grid_warning_points_at_the_users_call():
    kw = dict(levels=3, sigma_min=1e-4, steps_per_level=1, progress=False)
    with pytest.warns(UserWarning, match="raise levels") as through_sample:
        sg.sample(RING, "langevin", 4, seed=0, **kw)
    with pytest.warns(UserWarning, match="raise levels") as direct:
        samplers.langevin(RING, torch.randn(4, 2), **kw)
    assert [w.filename for w in through_sample] == [w.filename for w in direct] == [__file__]


def _denoiser(x, sigma):
    return 0.5 * x


NOT_NUMBERS = [  # (what, how it is passed, what the error says)
    ("classifier guidance scale", lambda: sg.ClassifierGuidance(RING, RING.classifier, scale=True),
     r"guidance scale must be a finite number >= 0, got True"),
    ("classifier guidance scale", lambda: sg.ClassifierGuidance(RING, RING.classifier, scale="3"),
     r"guidance scale must be a finite number >= 0, got '3'"),
    ("classifier-free scale", lambda: sg.ClassifierFreeGuidance(RING, None, scale=np.bool_(True)), r"guidance scale w must be"),
    ("classifier-free null label", lambda: sg.ClassifierFreeGuidance(RING, 1.5, scale=1.0),
     r"null_label must be a non-negative integer, got 1\.5"),
    ("likelihood scale", lambda: sg.LikelihoodGuidance(RING, infinite_below(0.0), scale="1"), r"guidance scale must be"),
    ("ddim eta", lambda: sg.sample(RING, "ddim", 4, seed=0, eta=True, progress=False),
     r"eta \(0: deterministic DDIM, 1: DDPM-equivalent\) must be a finite number >= 0 and <= 1, got True"),
    ("ddim steps", lambda: sg.sample(RING, "ddim", 4, seed=0, steps=True, progress=False), r"steps must be an integer"),
    ("langevin step_lr", lambda: sg.sample(RING, "langevin", 4, seed=0, step_lr=True, progress=False),
     r"step_lr must be a finite number > 0, got True"),
    ("langevin sigma_max", lambda: sg.sample(RING, "langevin", 4, seed=0, sigma_max="5", progress=False),
     r"sigma_max must be a finite number > 0, got '5'"),
    ("langevin sigma_min", lambda: sg.sample(RING, "langevin", 4, seed=0, sigma_min=True, progress=False),
     r"sigma_min must be a finite number > 0, got True"),
    ("langevin levels", lambda: sg.sample(RING, "langevin", 4, seed=0, levels=True, progress=False),
     r"levels must be an integer in \[1, 100000\], got True"),
    ("langevin steps_per_level", lambda: sg.sample(RING, "langevin", 4, seed=0, steps_per_level="3", progress=False),
     r"steps_per_level must be a positive integer, got '3'"),
    ("clip_x0 low", lambda: sg.clip_x0(True, 2), r"clip_x0's low must be a finite number, got True"),
    ("clip_x0 high", lambda: sg.clip_x0(-1, "2"), r"clip_x0's high must be a finite number, got '2'"),
    ("dynamic_threshold percentile", lambda: sg.dynamic_threshold(percentile=True),
     r"percentile must be a finite number > 0 and <= 1, got True"),
    ("dynamic_threshold max_value", lambda: sg.dynamic_threshold(max_value="1"), r"max_value .* must be a finite number > 0"),
    ("measurement sigma_y", lambda: sg.gaussian_measurement(RING, lambda x0: x0, torch.zeros(2), sigma_y=True),
     r"sigma_y .* must be a finite number >= 0, got True"),
    ("measurement data_var", lambda: sg.gaussian_measurement(RING, lambda x0: x0, torch.zeros(2), 0.1, data_var="1"),
     r"data_var .* must be a finite number > 0, got '1'"),
    ("mixture weights", lambda: sg.GaussianMixture([True, 1.0], MEANS2, [0.5, 0.5]),
     r"'weights' must be a list of numbers, not booleans or strings"),
    ("mixture means", lambda: sg.GaussianMixture([1.0, 1.0], [["-2", "0"], [2.0, 0.0]], [0.5, 0.5]),
     r"'means' must be a list of equal-length lists of numbers, not booleans or strings"),
    ("mixture stds", lambda: sg.GaussianMixture([1.0, 1.0], MEANS2, ["0.5", 0.5]), r"'stds' must be a list of numbers, not"),
    ("denoiser sigma_min", lambda: from_denoiser(_denoiser, (2,), True, 10.0), r"sigma_min must be a finite number > 0, got True"),
]


@pytest.mark.parametrize("make, needle", [case[1:] for case in NOT_NUMBERS], ids=[case[0] for case in NOT_NUMBERS])
def test_booleans_and_strings_are_not_numbers(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()


def test_numpy_numbers_are_numbers():
    assert sg.ClassifierGuidance(RING, RING.classifier, scale=np.float32(2.5)).scale == 2.5
    assert sg.ClassifierFreeGuidance(RING, np.int64(3), scale=np.int32(2)).null_label == 3
    x0 = torch.tensor([[-5.0, 5.0]])
    assert torch.equal(sg.clip_x0(np.float64(-1), np.int64(1))(x0), torch.tensor([[-1.0, 1.0]]))


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

CPU = torch.device("cpu")
#: ring2d's estimate per sample in float32: 6 copies of a 2-D state, and the mixture's declared temporaries,
#: six (B, K) and four (B, d) tables (K = 8 components, d = 2)
RING_PER_SAMPLE = samplers._batches.STATE_COPIES * 2 * 4 + (6 * 8 + 4 * 2) * 4


def test_too_many_samples_are_refused_before_any_work():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"n = 1000000000000 samples of shape \(2,\).*8\.0 TB.*GB available"):
        sg.sample(RING, "ddim", 10**12, seed=0, progress=False)
    assert time.perf_counter() - start < 1.0


def _available(monkeypatch, nbytes):
    monkeypatch.setattr(samplers._batches, "available_memory", lambda device: nbytes)


def test_the_default_batch_does_not_depend_on_the_free_memory(monkeypatch):
    """Samples depend on the batch size, so the default batch is a fixed budget (DEFAULT_BATCH_BYTES) over the
    estimate per sample: the same batch, and the same samples, with 1 MB, 1 GB or 1 TB free, or unknown."""
    monkeypatch.setattr(samplers._batches, "DEFAULT_BATCH_BYTES", 16 * 1024)
    assert samplers._batches.per_sample_bytes(RING, torch.float32, CPU, None) == RING_PER_SAMPLE
    n, kw = 1000, dict(steps=10, progress=False)
    runs = []
    for free in (10**6, 10**9, 10**12, None):
        _available(monkeypatch, free)
        runs.append(sg.sample(RING, "ddpm", n, seed=7, **kw))
    assert [r.batch_size for r in runs] == [16 * 1024 // RING_PER_SAMPLE] * 4  # 60
    assert all(torch.equal(r.samples, runs[0].samples) for r in runs) and runs[0].nfe == 10
    # and with a seed the batches do not matter: one batch of all n gives the same samples
    assert torch.equal(sg.sample(RING, "ddpm", n, seed=7, batch_size=n, **kw).samples, runs[0].samples)


def test_the_default_batch_is_all_samples_for_a_small_target():
    assert sg.sample(RING, "ddim", 1000, seed=0, steps=2, progress=False).batch_size == 1000


def test_a_default_batch_that_does_not_fit_is_refused_with_one_that_does(monkeypatch):
    free = 64 * 1024
    _available(monkeypatch, free)
    fits = (free - 1000 * 2 * 4) // RING_PER_SAMPLE  # what is left beside the result, in samples: 211
    with pytest.raises(ValueError, match=rf"the default batch of 1000 samples \(as many as fit in 2\.1 GB\) needs about "
                                         rf"272\.0 kB .*pass batch_size={fits} or less \(--batch-size {fits} on the command line\)"):
        sg.sample(RING, "ddim", 1000, seed=0, steps=5, progress=False)
    assert sg.sample(RING, "ddim", 1000, seed=0, steps=5, batch_size=fits, progress=False).batch_size == fits
    with pytest.raises(ValueError, match=rf"batch_size={fits + 1} needs about .*pass batch_size={fits} or less"):
        sg.sample(RING, "ddim", 1000, seed=0, steps=5, batch_size=fits + 1, progress=False)
    with pytest.raises(ValueError, match=r"result alone, more than half .*draw fewer samples \(n <= 4096\)"):
        sg.sample(RING, "ddim", 5000, seed=0, steps=5, progress=False)


def test_an_explicit_batch_size_that_fits_is_honoured(monkeypatch):
    _available(monkeypatch, 128 * 1024)
    n, kw = 1000, dict(steps=10, progress=False)
    res = sg.sample(RING, "ddpm", n, seed=7, batch_size=300, **kw)
    by_hand = [sg.sample(RING, "ddpm", k, seed=7, index_offset=i, batch_size=k, **kw).samples
               for i, k in ((0, 300), (300, 300), (600, 300), (900, 100))]
    assert res.batch_size == 300 and torch.equal(torch.cat(by_hand), res.samples)


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
    module_bytes = samplers._batches.per_sample_bytes(as_module, torch.float32, CPU, None)
    plain_bytes = samplers._batches.per_sample_bytes(as_function, torch.float32, CPU, None)
    assert module_bytes - plain_bytes == (1000 + 1000 + 2) * 4  # Linear, Tanh, Linear (= Wide's own output)
    # guidance through a network classifier keeps its activations for the backward pass: counted twice
    clf = sg.models.NetworkClassifier(torch.nn.Sequential(torch.nn.Linear(2, 500), torch.nn.Linear(500, 2)), VP)
    clf.net = _TakesT(clf.net)
    guided = sg.ClassifierGuidance(as_function, clf, scale=1.0)
    y = torch.zeros(1, dtype=torch.long)
    assert samplers._batches.per_sample_bytes(guided, torch.float32, CPU, y) - plain_bytes == 2 * (500 + 2) * 4
    with torch.no_grad():
        g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        a = sg.sample(as_module, "ddim", 6, generator=g1, steps=5, progress=False).samples
        b = sg.sample(as_function, "ddim", 6, generator=g2, steps=5, progress=False).samples
    assert torch.equal(a, b) and torch.equal(g1.get_state(), g2.get_state())


def test_a_stack_that_cannot_be_probed_on_one_sample_counts_the_state_only():
    """A measurement with one mask per sample cannot be evaluated on one sample. The probe is not retried on all n
    samples, which would allocate what the estimate exists to prevent: a warning at the user's call says the
    estimate counts the state only, and the run goes on."""
    prior = sg.NetworkScoreModel(Wide(), VP, shape=(2,))
    mask = torch.ones(5, 2)
    mask[:, 1] = 0
    posterior = sg.LikelihoodGuidance(prior, sg.gaussian_measurement(prior, mask, torch.zeros(5, 2), 0.1))
    needle = r"could not measure the network activations on one sample \(ValueError: the per-sample mask has 5 masks"
    with pytest.warns(RuntimeWarning, match=needle) as caught:
        res = sg.sample(posterior, "ddim", 5, seed=0, steps=3, progress=False)
    assert res.batch_size == 5 and torch.isfinite(res.samples).all()
    assert [w.filename for w in caught if w.category is RuntimeWarning] == [__file__]
    with pytest.warns(RuntimeWarning, match=needle):
        got = samplers._batches.per_sample_bytes(posterior, torch.float32, CPU, None)
    assert got == samplers._batches.STATE_COPIES * 2 * 4


# ------------------------------------------------------------------ scoregen.memory


def test_activation_bytes_sums_module_outputs_and_always_removes_its_hooks():
    net = Wide().inner
    x = torch.randn(3, 2)
    with torch.no_grad():
        assert memory.activation_bytes([net], lambda: net(x)) == 3 * (1000 + 1000 + 2) * 4
    assert memory.activation_bytes([net], lambda: net(x)) == 2 * 3 * (1000 + 1000 + 2) * 4  # kept for backward: twice
    with pytest.raises(RuntimeError):
        memory.activation_bytes([net], lambda: net(torch.randn(3, 5)))
    assert not any(m._forward_hooks for m in net.modules())


def test_available_memory_is_the_tightest_of_ram_address_space_and_cgroup_limits(monkeypatch, tmp_path):
    """The cgroups of /proc/self/cgroup and their ancestors, v2 and v1: a parent's limit binds its children."""
    (tmp_path / "cgroup").write_text("4:memory:/job/step\n1:cpu,cpuacct:/elsewhere\n0::/svc/unit\n")
    files = {"svc/unit/memory.max": "max\n", "svc/unit/memory.current": "100\n",  # v2, no limit of its own
             "svc/memory.max": "1000000\n", "svc/memory.current": "400000\n",  # v2 parent: 600000 left
             "memory/job/step/memory.limit_in_bytes": "9223372036854771712\n",  # v1 "unlimited"
             "memory/job/step/memory.usage_in_bytes": "5\n",
             "memory/job/memory.limit_in_bytes": "5000000\n", "memory/job/memory.usage_in_bytes": "1000000\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(memory, "_PROC_CGROUP", str(tmp_path / "cgroup"))
    monkeypatch.setattr(memory, "_CGROUP_ROOT", str(tmp_path))
    assert sorted(memory._cgroup_headrooms()) == [600000, 4000000, 9223372036854771707]
    monkeypatch.setattr(memory, "_machine_available", lambda: 10**12)
    monkeypatch.setattr(memory, "_address_space_headroom", lambda: None)
    assert memory.available_memory(CPU) == 600000
    monkeypatch.setattr(memory, "_address_space_headroom", lambda: 500000)
    assert memory.available_memory(CPU) == 500000
    monkeypatch.setattr(memory, "_PROC_CGROUP", str(tmp_path / "missing"))
    monkeypatch.setattr(memory, "_address_space_headroom", lambda: None)
    assert memory.available_memory(CPU) == 10**12
    assert memory.available_memory(torch.device("meta")) is None


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_the_address_space_limit_is_counted_from_the_current_size(monkeypatch):
    import resource

    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (size + 10**9, resource.RLIM_INFINITY))
    assert abs(memory._address_space_headroom() - 10**9) < 64 * 2**20  # what the interpreter maps meanwhile
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert memory._address_space_headroom() is None


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
