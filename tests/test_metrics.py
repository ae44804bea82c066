import math

import numpy as np
import pytest
import torch

from scoregen import GaussianMixture, load_target, mode_tv, sliced_w2, sliced_w2_noise_floor


def test_sliced_w2_in_one_dimension_is_exact_w2():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 1, generator=g, dtype=torch.float64)
    b = torch.randn(500, 1, generator=g, dtype=torch.float64) * 2 + 1
    # 1-D W2 between equal-size empirical measures: match sorted samples.
    expected = math.sqrt(float(((a.sort(0).values - b.sort(0).values) ** 2).mean()))
    assert sliced_w2(a, b) == pytest.approx(expected, rel=1e-12)
    assert sliced_w2(a, a + 0.3) == pytest.approx(0.3, rel=1e-12)


def test_sliced_w2_is_a_symmetric_homogeneous_distance():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(300, 5, generator=g), torch.randn(300, 5, generator=g) + 0.5
    assert sliced_w2(a, a) == 0.0
    assert sliced_w2(a, b) == pytest.approx(sliced_w2(b, a), rel=1e-12)
    assert sliced_w2(3 * a, 3 * b) == pytest.approx(3 * sliced_w2(a, b), rel=1e-9)
    assert sliced_w2(a, b) > 0.1


def test_sliced_w2_of_a_shift_matches_the_projection_average():
    # Shifting every sample by delta moves each projection by u.delta; E[(u.delta)^2] = |delta|^2 / d for
    # uniform unit u. With 4096 directions the Monte Carlo error of that average is ~ sqrt(2/4096) ~ 2%.
    d = 8
    a = torch.randn(200, d, generator=torch.Generator().manual_seed(2))
    delta = torch.full((d,), 0.5)
    got = sliced_w2(a, a + delta, projections=4096)
    assert got == pytest.approx(float(delta.norm()) / math.sqrt(d), rel=0.06)


def test_sliced_w2_unequal_sizes_and_bad_shapes():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2000, 2, generator=g)
    # The same empirical distribution, each point twice: quantile interpolation leaves only a tiny gap.
    assert sliced_w2(a, a.repeat(2, 1)) < 0.01
    with pytest.raises(ValueError, match="same d"):
        sliced_w2(a, torch.randn(10, 3))
    with pytest.raises(ValueError, match="at least 2"):
        sliced_w2(a[:1], a)


def test_noise_floor_shrinks_like_one_over_sqrt_n():
    target = load_target("ring2d")
    small = np.mean([sliced_w2_noise_floor(target, 1000, seed=s) for s in range(4)])
    large = np.mean([sliced_w2_noise_floor(target, 16000, seed=s) for s in range(4)])
    # sqrt(16) = 4 times smaller in expectation; allow a factor 2 for the spread of a 4-seed average.
    assert 2.0 < small / large < 8.0


def test_mode_tv_is_exact_on_constructed_sample_sets():
    target = GaussianMixture([0.5, 0.3, 0.2], [[-5.0], [0.0], [5.0]], [0.1, 0.1, 0.1])
    at_means = torch.tensor([[-5.0]] * 5 + [[0.0]] * 3 + [[5.0]] * 2)
    assert mode_tv(at_means, target) == pytest.approx(0.0, abs=1e-12)
    all_first = torch.full((10, 1), -5.0)
    assert mode_tv(all_first, target) == pytest.approx(0.5, abs=1e-12)


def test_class_report_against_hand_computed_values():
    from scoregen.metrics import class_report

    # softmax of (log 3, 0) is (3/4, 1/4); of (0, log 4) is (1/5, 4/5)
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0], [0.0, math.log(4.0)]])
    report = class_report(logits, torch.tensor([0.5, 0.5]), requested=torch.tensor([0, 1, 1]))
    assert report["confidence"] == pytest.approx((0.75 + 0.75 + 0.8) / 3)
    assert torch.allclose(report["histogram"], torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    assert report["tv"] == pytest.approx(1 / 6)
    assert report["requested_rate"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"requested labels must have shape \(N,\) = \(3,\), got \(2,\)"):
        class_report(logits, torch.tensor([0.5, 0.5]), requested=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN or inf"):
        class_report(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="at least one sample"):
        class_report(torch.zeros(0, 2), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="summing to 1"):
        class_report(logits, torch.tensor([0.5, 0.6]))
