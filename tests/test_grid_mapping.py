"""Samplers declare their grid before their loop (ScoreModel.prepare): a network adapter maps every level at once.

The first query of a NetworkScoreModel at a new level matches log-SNR against the trained levels (tens of
microseconds); LevelMap.prepare maps the whole grid in one vectorised pass. It must change nothing: the cached entries
are bit-identical to the ones the per-level path computes, so the samples are too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.models import LevelMap, NetworkClassifier, prepare_levels
from scoregen.samplers import langevin_grid
from scoregen.samplers.grids import step_grid


def levels_to_clean(model, steps):
    """(m, sigma) lists of the trained grid of ``steps`` levels (all when None), ending clean."""
    times = model.schedule.times
    grid = step_grid(model, steps if steps is not None or times is None else len(times), "trained", default_steps=1000)
    return list(grid.m), list(grid.sigma)
from scoregen.schedules import ContinuousVE, ContinuousVP, DiscreteVE, DiscreteVP
from stats import ExactEpsNet

SCHEDULES = {
    "vp-linear": DiscreteVP.linear(),
    "vp-cosine-0": DiscreteVP.cosine(first_index=0),
    "vp-short": DiscreteVP.linear(T=7),
    "ve-geometric": DiscreteVE.geometric(8.0, 0.01, L=7),
    "ve-one-level": DiscreteVE([0.5]),
    "continuous-vp": ContinuousVP(),
    "continuous-ve": ContinuousVE(),
}
TRI = sg.GaussianMixture([0.5, 0.3, 0.2], [[-2.5, -1.0], [2.5, -0.5], [0.0, 3.5]], [0.3, 0.4, 0.5], name="tri")


def _grids(schedule) -> list[tuple[list[float], list[float]]]:
    """(sigma, m) lists a sampler queries: DDPM/DDIM's trained levels, Langevin's VE levels (m = 1), odd levels."""
    model = sg.NetworkScoreModel(lambda x, t: x, schedule, shape=(2,))
    out = []
    for steps in (None, 10, 50):
        if steps is not None and schedule.times is not None and steps > len(schedule.times):
            continue
        m, sigma = levels_to_clean(model, steps)
        out.append((sigma[:-1], m[:-1]))
    for levels in (10, 33):
        grid = langevin_grid(model, 64, levels, sigma_max=max(model.sigma_range[1] * 2, 20.0))
        out.append((list(grid), [1.0] * len(grid)))
    rng = np.random.default_rng(0)
    sigma = np.exp(rng.uniform(-12, 8, 200)).tolist() + [0.0, 1e-300, 1e300]
    m = np.exp(rng.uniform(-3, 3, 203)).tolist()
    out.append((sigma, m))
    return out


@pytest.mark.parametrize("time", ["nearest", "fractional"])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_prepared_entries_are_bit_identical_to_the_per_level_ones(name, time):
    schedule = SCHEDULES[name]
    for sigma, m in _grids(schedule):
        prepared, lazy = LevelMap(schedule, time), LevelMap(schedule, time)
        prepared.prepare(sigma, m)
        for s, mm in zip(sigma, m):
            key = (float(s), float(mm))
            assert key in prepared._cache, key
            want = lazy._scalar(*key)
            got = prepared._cache[key]
            assert got == want and all(type(v) is float for v in got), (name, time, key, got, want)


def test_prepare_takes_one_m_for_every_level_and_skips_what_a_query_refuses():
    levels = LevelMap(DiscreteVP.linear())
    levels.prepare([0.5, 2.0, math.nan, -1.0, math.inf], 1.0)
    assert set(levels._cache) == {(0.5, 1.0), (2.0, 1.0)}
    levels.prepare([0.5, 0.5], [0.0, -2.0])  # m <= 0: left to the query, which raises the usual error
    assert len(levels._cache) == 2
    with pytest.raises(ValueError, match="a noise level needs finite sigma >= 0 and m > 0"):
        levels(torch.zeros(1, 2), math.nan, 1.0)
    with pytest.raises(ValueError, match="m must be one number or one per sigma"):
        levels.prepare([0.1, 0.2], [1.0, 1.0, 1.0])


def test_prepare_maps_at_most_the_cache_limit(monkeypatch):
    monkeypatch.setattr(LevelMap, "CACHE_LIMIT", 8)
    levels, lazy = LevelMap(DiscreteVP.linear(), "fractional"), LevelMap(DiscreteVP.linear(), "fractional")
    sigma = np.geomspace(10.0, 0.01, 20).tolist()
    levels.prepare(sigma)
    assert list(levels._cache) == [(s, 1.0) for s in sigma[:8]]  # the first levels, which the sampler queries first
    x = torch.randn(3, 2, dtype=torch.float64)
    for s in sigma:  # the rest is mapped as queried, as before
        a, b = levels(x, s, 1.0), lazy(x, s, 1.0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]


class _NoPrepare(sg.NetworkScoreModel):
    """The same adapter without the up-front mapping: every level is mapped at its first query, as before."""

    def prepare(self, sigma, m=1.0):
        pass


SAMPLER_CASES = [("ddpm", dict(steps=30)), ("ddim", dict(steps=20)), ("ddim", dict(steps=20, eta=0.7)),
                 ("langevin", dict(levels=12, steps_per_level=3, sigma_max=6.0)),
                 ("langevin", dict(levels=5, steps_per_level=[1, 2, 3, 2, 1], sigma_max=3.0, final_denoise=True))]


@pytest.mark.parametrize("time", ["nearest", "fractional"])
@pytest.mark.parametrize("schedule", [DiscreteVP.linear(), DiscreteVE.geometric(8.0, 0.01, L=40), ContinuousVP()],
                         ids=["vp", "ve", "continuous-vp"])
@pytest.mark.parametrize("sampler, options", SAMPLER_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_samples_are_bit_identical_with_and_without_the_grid_declared(sampler, options, schedule, time):
    net = ExactEpsNet(TRI, schedule)
    fast = sg.NetworkScoreModel(net, schedule, time=time, shape=(2,))
    slow = _NoPrepare(net, schedule, time=time, shape=(2,))
    for dtype in (torch.float32, torch.float64):
        a = sg.sample(fast, sampler, 64, seed=5, dtype=dtype, progress=False, **options)
        b = sg.sample(slow, sampler, 64, seed=5, dtype=dtype, progress=False, **options)
        assert a.nfe == b.nfe and torch.equal(a.samples, b.samples), (sampler, options, dtype)


def test_a_sampler_run_maps_its_grid_once_and_then_only_looks_levels_up(monkeypatch):
    model = sg.NetworkScoreModel(ExactEpsNet(TRI, DiscreteVP.linear()), DiscreteVP.linear(), time="fractional", shape=(2,))
    calls = []
    real = LevelMap._model_time
    monkeypatch.setattr(LevelMap, "_model_time", lambda self, lam: calls.append(np.size(lam)) or real(self, lam))
    for sampler, options, levels in [("ddim", dict(steps=10), 10), ("ddpm", dict(steps=25), 25),
                                     ("langevin", dict(levels=7, steps_per_level=2, sigma_max=3.0, final_denoise=True), 7)]:
        calls.clear()
        model.levels._cache.clear()
        sg.sample(model, sampler, 4, seed=0, progress=False, **options)
        assert calls == [levels], (sampler, calls)  # one vectorised mapping of the whole grid, nothing per step


class _Recorder(sg.ScoreModel):
    """Records the grids it is told about; answers eps = 0."""

    def __init__(self, schedule):
        self.schedule, self.shape, self.prepared = schedule, (2,), []

    def prepare(self, sigma, m=1.0):
        self.prepared.append((list(sigma), m if isinstance(m, float) else list(m)))

    def eps(self, x, sigma, m=1.0, y=None):
        return torch.zeros_like(x)


def test_each_sampler_declares_exactly_the_levels_it_queries_through_every_wrapper():
    schedule = DiscreteVP.linear()
    inner = _Recorder(schedule)
    guided = sg.ClassifierGuidance(inner, TRI.classifier, scale=1.0)
    model = sg.X0Hook(guided, sg.clip_x0(-5, 5))
    m, sigma = levels_to_clean(inner, 10)
    res = sg.sample(model, "ddim", 3, seed=0, y=1, steps=10, progress=False)
    assert res.nfe == 10  # declaring is not an evaluation
    assert inner.prepared == [(sigma[:-1], m[:-1])]
    inner.prepared.clear()
    sg.sample(model, "ddpm", 3, seed=0, y=1, steps=10, progress=False)
    assert inner.prepared == [(sigma[:-1], m[:-1])]
    inner.prepared.clear()
    sg.sample(model, "langevin", 3, seed=0, y=1, levels=6, steps_per_level=1, sigma_max=5.0, progress=False)
    assert inner.prepared == [(list(langevin_grid(inner, 2, 6, sigma_max=5.0)), 1.0)]


def test_guidance_forwards_the_grid_to_a_network_classifier():
    schedule = DiscreteVP.linear()
    classifier = NetworkClassifier(lambda x, t: torch.zeros(x.shape[0], 3, dtype=x.dtype), schedule)
    guided = sg.ClassifierGuidance(sg.NetworkScoreModel(lambda x, t: torch.zeros_like(x), schedule, shape=(2,)),
                                   classifier, scale=1.0)
    m, sigma = levels_to_clean(guided, 10)
    guided.prepare(sigma[:-1], m[:-1])
    assert set(classifier.levels._cache) == set(zip(sigma[:-1], m[:-1])) == set(guided.model.levels._cache)


def test_models_without_prepare_still_sample():
    class Bare:  # duck-typed: eps, score and attributes, no prepare
        shape, schedule, sigma_range, protects_input = (2,), DiscreteVP.linear(), TRI.sigma_range, True

        def eps(self, x, sigma, m=1.0, y=None):
            return TRI.eps(x, sigma, m, y)

        def score(self, x, sigma, m=1.0, y=None):
            return TRI.score(x, sigma, m, y)

    prepare_levels(Bare(), [0.5], 1.0)  # nothing to call: no error
    for sampler, options in [("ddim", dict(steps=5)), ("ddpm", dict(steps=5)), ("langevin", dict(levels=3, steps_per_level=1, sigma_max=0.5))]:
        assert torch.equal(sg.samplers.SAMPLERS[sampler](Bare(), torch.ones(2, 2), generator=torch.Generator().manual_seed(0),
                                                         progress=False, **options),
                           sg.samplers.SAMPLERS[sampler](TRI, torch.ones(2, 2), generator=torch.Generator().manual_seed(0),
                                                         progress=False, **options))
