"""Step grids fitted to a model and a solver (scoregen.samplers.tune): the search, its disk cache, its files.

The search is checked on a target it was not developed on (a random 16-D mixture drawn here from a fixed seed), on
initial noises it never saw (another seed): the fitted grid must beat every fixed spacing (trained, karras, logsnr,
time) for the same solver and number of steps, by the endpoint error against a fine reference solve and by the
MMD to the exact target, beyond three standard errors of the difference.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.metrics import mmd_to_mixture
from scoregen.models import NetworkScoreModel
from scoregen.networks.mlp import MLPScoreNet
from scoregen.samplers import SAMPLERS, sample
from scoregen.samplers.grids import step_grid, ve_levels
from scoregen.samplers.tune import (TunedGrid, _errors, _trimmed, load_grid, model_fingerprint, optimized_grid,
                                    reference_endpoints, save_grid, tune_grid)
from scoregen.schedules import DiscreteVP
from scoregen.targets import GaussianMixture

FIXED = ("trained", "karras", "logsnr", "time")


def random_mixture(seed: int = 16, k: int = 6, d: int = 16, cls=GaussianMixture) -> GaussianMixture:
    rng = np.random.default_rng(seed)
    return cls(rng.uniform(1, 3, k), rng.normal(0, 1.5, (k, d)), rng.uniform(0.3, 0.8, k), name=f"rand{d}")


MIX = random_mixture()


class Counting(GaussianMixture):
    """A mixture that counts its evaluations."""

    calls = 0

    def eps(self, x, sigma, m=1.0, y=None):
        self.calls += 1
        return super().eps(x, sigma, m, y)


@pytest.fixture(scope="module")
def fresh():
    """Initial noises the searches never see (their seeds are 0 and 1), and their reference endpoints."""
    z = torch.randn(2000, MIX.dim, generator=torch.Generator().manual_seed(1000), dtype=torch.float64)
    return z, reference_endpoints(MIX, z, 128)


# ------------------------------------------------------------------------------------------ the search
SOLVERS = [("euler", 4), ("heun", 4)] + ([("dpmpp_2m", 4)] if "dpmpp_2m" in SAMPLERS else [])


@pytest.mark.parametrize("solver,steps", SOLVERS)
def test_tuned_grid_beats_every_fixed_spacing_on_fresh_noise(solver, steps, fresh):
    z, ref = fresh
    grid = tune_grid(MIX, solver, steps, n=128, seed=0, reference=128, progress=False)
    hi, lo = ve_levels(MIX.schedule)
    s = grid.s
    assert isinstance(grid, TunedGrid) and grid.spacing == "optimized" and grid.solver == solver
    assert len(grid) == steps and s[0] == pytest.approx(hi, rel=1e-12) and s[-1] == 0.0 and s[-2] >= lo * (1 - 1e-12)
    assert all(a > b for a, b in zip(s, s[1:]))
    assert grid.info["chosen"] == "optimized" and grid.model == model_fingerprint(MIX)

    grids = {sp: step_grid(MIX, steps, sp) for sp in FIXED}
    grids["optimized"] = grid
    err, mmd = {}, {}
    for name, g in grids.items():
        e = _errors(SAMPLERS[solver](MIX, z.clone(), sigmas=g, progress=False), ref)
        err[name] = (math.sqrt(_trimmed(e, 0.05)), float(e.median().sqrt()), float(e.mean().sqrt()))
        mmd[name] = mmd_to_mixture(sample(MIX, solver, 4000, seed=77, sigmas=g, dtype=torch.float64).samples, MIX)
    best = {i: min(err[k][i] for k in FIXED) for i in range(3)}
    # endpoint error: the 95% best-matched samples, the median, and the plain RMSE, all at least 20% below
    for i in range(3):
        assert err["optimized"][i] < 0.8 * best[i], (solver, i, err)
    rival = min(FIXED, key=lambda k: mmd[k].value)
    margin = 3 * math.hypot(mmd["optimized"].se, mmd[rival].se)
    assert mmd["optimized"].value + margin < mmd[rival].value, (solver, mmd)


def test_the_search_is_seeded_and_bounded():
    a = tune_grid(MIX, "euler", 3, n=32, reference=32, max_evals=15, progress=False)
    b = tune_grid(MIX, "euler", 3, n=32, reference=32, max_evals=15, progress=False)
    c = tune_grid(MIX, "euler", 3, n=32, reference=32, max_evals=15, seed=5, progress=False)
    assert a.s == b.s and a.s != c.s
    assert a.info["evals"] == 15  # the budget is the number of solver runs the search makes
    assert set(a.info["validation"]) >= set(FIXED) - {"time"}  # DDPM's trained and time spacings are one grid
    one = tune_grid(MIX, "euler", 1, n=8, reference=8, progress=False)  # nothing to search: [hi, 0]
    assert one.s == pytest.approx([ve_levels(MIX.schedule)[0], 0.0], rel=1e-12) and one.info["evals"] == 0


# ------------------------------------------------------------------------------------------ the cache
def test_optimized_grid_is_searched_once_then_read_from_the_cache(tmp_path):
    mix = random_mixture(3, k=3, d=4, cls=Counting)
    first = optimized_grid(mix, "euler", 3, cache_dir=tmp_path, progress=False)
    assert mix.calls > 100
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("euler-3-") and files[0].endswith(".json")
    mix.calls = 0
    again = optimized_grid(mix, "euler", 3, cache_dir=tmp_path, progress=False)
    assert mix.calls == 0 and again.s == first.s and again.solver == "euler" and again.model == first.model
    # another model, solver or step count is another entry
    other = random_mixture(4, k=3, d=4, cls=Counting)
    optimized_grid(other, "euler", 3, cache_dir=tmp_path, progress=False)
    optimized_grid(mix, "heun", 3, cache_dir=tmp_path, progress=False)
    assert len(os.listdir(tmp_path)) == 3
    # a damaged entry is searched again and replaced
    path = tmp_path / files[0]
    path.write_text("{not json")
    mix.calls = 0
    assert optimized_grid(mix, "euler", 3, cache_dir=tmp_path, progress=False).s == first.s and mix.calls > 0
    assert json.loads(path.read_text())["sigmas"] == first.s


def test_spacing_optimized_through_sample_uses_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCOREGEN_CACHE", str(tmp_path))
    mix = random_mixture(5, k=3, d=4, cls=Counting)
    r1 = sample(mix, "euler", 50, seed=0, steps=3, spacing="optimized", progress=False)
    assert r1.nfe == 3 and mix.calls > 100  # the search's calls are not the sampler's NFE
    assert len(os.listdir(tmp_path / "grids")) == 1
    capsys.readouterr()
    mix.calls = 0
    r2 = sample(mix, "euler", 50, seed=0, steps=3, spacing="optimized", progress=False)
    assert mix.calls == 3 and r2.nfe == 3 and torch.equal(r1.samples, r2.samples)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""  # a cache hit prints nothing
    grid = step_grid(mix, 3, "optimized", solver="euler")
    assert torch.equal(sample(mix, "euler", 50, seed=0, sigmas=grid).samples, r1.samples)


def test_fingerprints():
    assert model_fingerprint(random_mixture(1)) == model_fingerprint(random_mixture(1))
    assert model_fingerprint(random_mixture(1)) != model_fingerprint(random_mixture(2))
    torch.manual_seed(0)
    net = MLPScoreNet(2, DiscreteVP.linear(T=100), hidden=16, depth=2, emb_dim=8)
    a = net.score_model()
    assert model_fingerprint(a) == model_fingerprint(net.score_model())
    assert model_fingerprint(a) != model_fingerprint(net.score_model(time="nearest"))
    assert model_fingerprint(sg.X0Hook(a, lambda x0: x0.clamp(-1, 1))) == model_fingerprint(a)  # fitted without the hook
    before = model_fingerprint(a)
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3  # one weight of the same network
    assert model_fingerprint(a) != before


def test_models_that_cannot_be_fingerprinted_are_refused_with_the_way_out(tmp_path):
    plain = NetworkScoreModel(lambda x, t: torch.zeros_like(x), DiscreteVP.linear(T=100), shape=(2,))
    guided = sg.ClassifierFreeGuidance(random_mixture(1), None, 1.0)
    for model in (plain, guided):
        with pytest.raises(ValueError, match=r"cannot fingerprint.*tune_grid.*sigmas=grid"):
            optimized_grid(model, "euler", 3, cache_dir=tmp_path)
        with pytest.raises(ValueError, match="tune_grid"):
            sample(model, "euler", 4, seed=0, steps=3, spacing="optimized")
    assert os.listdir(tmp_path) == []
    # tune_grid itself takes any model
    grid = tune_grid(plain, "euler", 2, n=4, reference=4, max_evals=3, progress=False)
    assert grid.model is None and len(grid) == 2


# ------------------------------------------------------------------------------------------ files
def test_grid_files_round_trip(tmp_path):
    grid = tune_grid(MIX, "heun", 3, n=32, reference=32, max_evals=20, progress=False)
    path = tmp_path / "sub" / "grid.json"
    save_grid(grid, path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "scoregen-grid" and doc["sigmas"] == grid.s and doc["steps"] == 3
    assert doc["solver"] == "heun" and doc["model"] == model_fingerprint(MIX) and doc["info"]["evals"] == 20
    loaded = load_grid(path)
    assert loaded == grid and loaded.s == grid.s and loaded.info == grid.info
    assert load_grid(path, MIX) == grid
    x = sample(MIX, "heun", 20, seed=3, sigmas=grid).samples
    assert torch.equal(sample(MIX, "heun", 20, seed=3, sigmas=loaded).samples, x)
    assert torch.allclose(sample(MIX, "heun", 20, seed=3, sigmas=doc["sigmas"]).samples, x)  # the plain list too
    with pytest.warns(UserWarning, match="fitted to another model"):
        load_grid(path, random_mixture(2))
    odd = TunedGrid(grid.m, grid.sigma, "optimized", True, "heun", None, {"fit": {"karras": math.inf}, "dtype": torch.float64})
    save_grid(odd, tmp_path / "odd.json")  # what JSON cannot hold is written plainly
    assert load_grid(tmp_path / "odd.json").info == {"fit": {"karras": None}, "dtype": "torch.float64"}
    karras = step_grid(MIX, 5, "karras")  # any StepGrid
    save_grid(karras, tmp_path / "k.json")
    assert load_grid(tmp_path / "k.json").s == karras.s


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('{"sigmas": [3, 1, 0]}', "not a scoregen grid file"),
    ('{"format": "scoregen-grid", "version": 2, "sigmas": [3, 1, 0]}', "version"),
    ('{"format": "scoregen-grid", "version": 1, "sigmas": [1, 3, 0]}', "strictly decreasing"),
    ('{"format": "scoregen-grid", "version": 1, "sigmas": [3, 1]}', "ending with 0"),
    ('{"format": "scoregen-grid", "version": 1, "sigmas": [3, "1", 0]}', "finite numbers"),
    ('{"format": "scoregen-grid", "version": 1, "sigmas": [3, 1, 0], "steps": 5}', "holds 2 steps"),
])
def test_bad_grid_files(tmp_path, content, match):
    path = tmp_path / "g.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_grid(path)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown solver"):
        tune_grid(MIX, "rk4", 3)
    with pytest.raises(ValueError, match="stochastic"):
        tune_grid(MIX, "ddim", 3, n=4, reference=4, options={"eta": 1.0}, progress=False)
    with pytest.raises(ValueError, match="stochastic"):
        tune_grid(MIX, "ddpm", 3, n=4, reference=4, progress=False)
    with pytest.raises(ValueError, match="steps"):
        tune_grid(MIX, "euler", 0)
    with pytest.raises(ValueError, match="trim"):
        tune_grid(MIX, "euler", 3, trim=0.5)
    with pytest.raises(ValueError, match="set by the search"):
        tune_grid(MIX, "euler", 3, options={"sigmas": [1.0, 0.0]})
    with pytest.raises(ValueError, match="init"):
        tune_grid(MIX, "euler", 3, init=["cosine"])
    with pytest.raises(ValueError, match="score model"):
        tune_grid(object(), "euler", 3)
    with pytest.raises(ValueError, match="needs .*solver|pass solver"):
        step_grid(MIX, 3, "optimized")
    with pytest.raises(ValueError, match=".json"):
        save_grid(step_grid(MIX, 3, "karras"), tmp_path / "g.txt")
    with pytest.raises(ValueError, match="StepGrid"):
        save_grid([1.0, 0.0], tmp_path / "g.json")
    with pytest.raises(FileNotFoundError):
        load_grid(tmp_path / "missing.json")
