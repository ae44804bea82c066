"""Langevin spends a budget exactly (per-level step counts), and starts at the data's scale wherever it is known."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.io.checkpoints import _config_sha256
from scoregen.samplers import LangevinGrid, langevin_budget, langevin_grid
from scoregen.schedules import DiscreteVE, DiscreteVP, ncsnv2_sigma_max
from stats import ExactEpsNet

RING = sg.load_target("ring2d")


# ------------------------------------------------------------------------------------------- the budget
@pytest.mark.parametrize("nfe, levels", [(50, 33), (100, 33), (1000, 33), (990, 33), (51, 10), (10, 10), (7, 10),
                                         (1, 25), (3, 1), (100_000, 7)])
@pytest.mark.parametrize("final_denoise", [False, True])
def test_the_budget_is_spent_exactly_with_the_extra_steps_first(nfe, levels, final_denoise):
    if final_denoise and nfe < 2:
        with pytest.raises(ValueError, match="leaves none for the levels"):
            langevin_budget(nfe, levels, final_denoise=True)
        return
    opts = langevin_budget(nfe, levels, final_denoise=final_denoise)
    spend = nfe - final_denoise
    L = opts["levels"]
    assert L == min(levels, spend)
    steps = opts["steps_per_level"]
    per_level = [steps] * L if isinstance(steps, int) else steps
    assert isinstance(steps, int) == (spend % L == 0)
    assert len(per_level) == L and sum(per_level) == spend and min(per_level) >= 1
    assert per_level == sorted(per_level, reverse=True) and max(per_level) - min(per_level) <= 1
    assert opts.get("final_denoise", False) is final_denoise


def test_the_benchmark_budgets_are_spent_on_a_33_level_grid():
    for nfe in (50, 100, 1000):
        res = sg.sample(RING, "langevin", 2, seed=0, progress=False, **langevin_budget(nfe, 33))
        assert res.nfe == nfe  # was 33, 99 and 990 with steps_per_level = nfe // levels
    res = sg.sample(RING, "langevin", 2, seed=0, progress=False, **langevin_budget(50, 33, final_denoise=True))
    assert res.nfe == 50


def test_langevin_budget_refuses_bad_arguments():
    for bad, match in [(dict(nfe=0, levels=3), "nfe \\(the evaluation budget\\) must be a positive integer"),
                       (dict(nfe=10.0, levels=3), "must be a positive integer"),
                       (dict(nfe=10, levels=0), "levels must be an integer in \\[1, 100000\\]"),
                       (dict(nfe=10, levels=True), "levels must be an integer"),
                       (dict(nfe=10, levels=3, final_denoise=1), "final_denoise must be True or False")]:
        with pytest.raises(ValueError, match=match):
            langevin_budget(**bad)


# ------------------------------------------------------------------------------ per-level step counts
def test_per_level_steps_cost_their_sum_and_equal_steps_match_an_int():
    opts = dict(levels=4, sigma_max=3.0)
    steps = [3, 1, 2, 5]
    res = sg.sample(RING, "langevin", 8, seed=1, progress=False, steps_per_level=steps, **opts)
    assert res.nfe == 11
    assert sg.sample(RING, "langevin", 8, seed=1, progress=False, steps_per_level=steps, final_denoise=True, **opts).nfe == 12
    same = [sg.sample(RING, "langevin", 8, seed=1, progress=False, steps_per_level=s, **opts).samples
            for s in (3, [3, 3, 3, 3], (3, 3, 3, 3), np.array([3, 3, 3, 3]), torch.tensor([3, 3, 3, 3]))]
    assert all(torch.equal(same[0], s) for s in same[1:])


def test_per_level_steps_run_each_level_its_own_number_of_times():
    seen = []
    sg.sample(RING, "langevin", 2, seed=0, levels=3, sigma_max=0.5, steps_per_level=[2, 1, 4], progress=False,
              callback=lambda info: seen.append(info["sigma"]))

    class Counting(sg.ScoreModel):
        shape, schedule = RING.shape, RING.schedule
        sigma_range = RING.sigma_range
        protects_input = True

        def __init__(self):
            self.levels = []

        def eps(self, x, sigma, m=1.0, y=None):
            self.levels.append(sigma)
            return RING.eps(x, sigma, m, y)

    model = Counting()
    sg.sample(model, "langevin", 2, seed=0, levels=3, sigma_max=0.5, steps_per_level=[2, 1, 4], progress=False)
    assert model.levels == [seen[0]] * 2 + [seen[1]] + [seen[2]] * 4


@pytest.mark.parametrize("steps, match", [
    ([1, 2], r"steps_per_level has 2 entries but the grid has 3 levels"),
    ([1, 0, 2], r"steps_per_level\[1\] must be a positive integer, got 0"),
    ([1, 2.0, 2], r"steps_per_level\[1\] must be a positive integer, got 2.0"),
    ([1, True, 2], r"steps_per_level\[1\] must be a positive integer, got True"),
    ("3", r"steps_per_level must be a positive integer, got '3'"),
    (0, r"steps_per_level must be a positive integer, got 0"),
    (np.array([[1, 2, 3]]), r"steps_per_level must be a positive integer"),
])
def test_bad_per_level_steps_are_refused_before_sampling(steps, match):
    with pytest.raises(ValueError, match=match):
        sg.sample(RING, "langevin", 2, seed=0, levels=3, sigma_max=0.5, steps_per_level=steps, progress=False)


def test_per_level_steps_on_an_ncsn_models_trained_levels_need_one_per_trained_level():
    model = sg.NetworkScoreModel(ExactEpsNet(RING, DiscreteVE.geometric(4.0, 0.01, L=12)), DiscreteVE.geometric(4.0, 0.01, L=12),
                                 shape=(2,))
    res = sg.sample(model, "langevin", 2, seed=0, progress=False, **langevin_budget(30, 12))
    assert res.nfe == 30
    with pytest.raises(ValueError, match="has 10 entries but the grid has 12 levels"):
        sg.sample(model, "langevin", 2, seed=0, steps_per_level=[1] * 10, progress=False)


# ---------------------------------------------------------------------------------- the starting sigma
def _vp_net(scale=None) -> sg.NetworkScoreModel:
    return sg.NetworkScoreModel(ExactEpsNet(RING, DiscreteVP.linear()), DiscreteVP.linear(), time="fractional",
                                shape=RING.shape, data_sigma_max=scale)


@pytest.mark.parametrize("nfe", [5, 10, 20])
def test_langevin_on_a_vp_network_starts_at_the_recorded_data_scale(nfe):
    """Without a data scale, Langevin on a VP network starts at its largest trained level (sigma/m = 157 on DDPM's
    linear schedule) and at 5-20 evaluations ends 8-65 times the data's spread from its mean; with the data's
    largest pairwise distance recorded (NCSNv2's technique 1: 4.0 for ring2d) it ends within 2.3 times."""
    data = RING.sample(4000, torch.Generator().manual_seed(0))
    mean, spread = data.mean(0), data.var(0).sum().sqrt()
    ratios = {}
    for scale in (None, RING.sigma_range[0]):
        model = _vp_net(scale)
        grid = langevin_grid(model, RING.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 5 levels from 157: coarser than the warning's bound, as the old default was
            x = sg.sample(model, "langevin", 1000, seed=0, progress=False, **langevin_budget(nfe, len(grid))).samples
        ratios[scale] = float(((x - mean) ** 2).sum(1).mean().sqrt() / spread)
    assert ratios[None] > 6, ratios  # the old start: 8x (20 NFE) to 65x (5 NFE) the data's spread
    assert ratios[RING.sigma_range[0]] < 3, ratios  # measured 2.25 (5), 1.63 (10), 1.22 (20)


def test_the_grid_says_where_sigma_max_came_from():
    net = _vp_net()
    grid = langevin_grid(net, (2,))
    assert isinstance(grid, LangevinGrid) and isinstance(grid, list)
    assert grid[0] == pytest.approx(157.4, abs=0.1) and "no data scale recorded" in grid.source
    scaled = langevin_grid(_vp_net(4.0), (2,))
    assert scaled[0] == 4.0 and scaled[-1] == grid[-1] and "largest pairwise distance" in scaled.source
    assert "4 -> 0.01" in scaled.describe() and scaled.describe().startswith("10 levels")
    capped = _vp_net(1e6)  # a data scale above the trained levels: the trained maximum
    assert capped.sigma_range == net.sigma_range and "below the training data's" in capped.sigma_max_source
    given = langevin_grid(_vp_net(4.0), 2, levels=5, sigma_max=2.0)
    assert given.source == "given (sigma_max)" and list(given) == list(np.geomspace(2.0, grid[-1], 5))
    assert "technique 1" in langevin_grid(RING, 2).source  # an exact mixture knows its data scale
    ncsn = sg.NetworkScoreModel(lambda x, t: x, DiscreteVE.geometric(4.0, 0.01, L=12), shape=(2,))
    assert "trained NCSN levels" in langevin_grid(ncsn, 2).source and len(langevin_grid(ncsn, 2)) == 12
    guided = sg.ClassifierGuidance(_vp_net(4.0), RING.classifier, scale=1.0)
    assert langevin_grid(guided, 2) == scaled and langevin_grid(guided, 2).source == scaled.source
    # the grid the sampler used is the one langevin_grid reports
    seen = []
    sg.sample(_vp_net(4.0), "langevin", 2, seed=0, steps_per_level=1, progress=False,
              callback=lambda info: seen.append(info["sigma"]))
    assert seen == list(scaled)


def test_a_data_scale_is_a_finite_positive_number():
    for bad in (0.0, -1.0, float("nan"), True, "4"):
        with pytest.raises(ValueError, match="data_sigma_max"):
            _vp_net(bad)


def test_training_records_the_data_scale_and_loading_hands_it_to_the_score_model(tmp_path):
    from scoregen.networks import MLPScoreNet
    from scoregen.training import TrainConfig, train
    from scoregen.training.recipes import ncsn_schedule

    x = RING.sample(300, torch.Generator().manual_seed(0))
    assert ncsnv2_sigma_max(x) == float(ncsn_schedule(x).sigmas[0])  # the NCSN recipe's sigma_max, the same number
    torch.manual_seed(0)
    net = MLPScoreNet(2, DiscreteVP.linear(), "eps")
    train(net, x, None, TrainConfig("ddpm", steps=2, batch_size=8, checkpoint_every=2), tmp_path, progress=False,
          meta={"data": {"name": "ring"}})
    config = sg.io.read_checkpoint_config(tmp_path)
    assert config["meta"]["data"] == {"name": "ring", "sigma_max": ncsnv2_sigma_max(x)}
    assert net.data_sigma_max == ncsnv2_sigma_max(x)  # the trained network in memory too
    loaded, _ = sg.load_checkpoint(tmp_path)
    model = loaded.score_model()
    assert model.data_sigma_max == ncsnv2_sigma_max(x) and model.sigma_range[0] == ncsnv2_sigma_max(x)
    assert langevin_grid(model, 2)[0] == ncsnv2_sigma_max(x)

    # a damaged record is refused, naming the field
    path = tmp_path / "config.json"
    edited = json.loads(path.read_text())
    edited["meta"]["data"]["sigma_max"] = -1.0
    edited["config_sha256"] = _config_sha256(edited)
    path.write_text(json.dumps(edited, indent=1))
    with pytest.raises(ValueError, match=r"'meta.data.sigma_max' .* must be a finite number > 0, got -1.0"):
        sg.load_checkpoint(tmp_path)


def test_the_shipped_digits_checkpoints_record_the_digits_scale():
    from scoregen.data import load_data

    scale = ncsnv2_sigma_max(load_data("digits").x)
    assert scale == pytest.approx(9.6299, abs=1e-4)
    for name in ("digits-ddpm", "digits-ncsn", "digits-cond", "digits-classifier"):  # trained on all 1797 digits
        config = sg.io.read_checkpoint_config(sg.io.checkpoint_dir(name))  # config_sha256 still valid
        assert config["meta"]["data"]["sigma_max"] == scale, name
    net, config = sg.load_checkpoint("digits-ddpm")
    grid = langevin_grid(net.score_model(), net.shape)
    assert grid[0] == scale and len(grid) == 24 and "largest pairwise distance" in grid.source
    ncsn, _ = sg.load_checkpoint("digits-ncsn")  # an NCSN network's first sigma is the same distance
    assert float(ncsn.schedule.sigmas[0]) == scale
