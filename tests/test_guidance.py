"""Classifier guidance with the target's exact noisy classifier.

With an exact score and the exact ``log p(y | x_t)`` at every level, guidance at gamma = 1 is the exact
conditional score, so samples must match ``mixture.conditional(y)`` within the sample-size tolerances of
stats.py; gamma > 1 sharpens towards the class; gamma = 0 is the unguided model.
"""

from __future__ import annotations

import functools
from statistics import NormalDist

import pytest
import torch

import scoregen as sg
from scoregen.schedules import DiscreteVP
from stats import assert_matches_mixture, assert_proportion_above, binomial_se, network_model

# Two classes, each a pair of well-separated components (labels 0, 1, 0, 1), unequal weights and stds:
# the conditionals are 2-component mixtures with weights 0.73 / 0.27 (y = 0) and 0.56 / 0.44 (y = 1).
QUAD = sg.GaussianMixture(
    [0.4, 0.25, 0.15, 0.2],
    [[-3.0, 0.0], [3.0, 0.0], [0.0, 3.5], [0.0, -3.5]],
    [0.3, 0.4, 0.5, 0.35],
    labels=[0, 1, 0, 1],
    name="quad",
)
N = 6000  # the lightest conditional component gets ~1600 samples

# Langevin on a DDPM network (VE levels -> VP labels): 20 levels x 100 steps, as in test_samplers.py.
LANGEVIN = dict(levels=20, steps_per_level=100, sigma_max=8.0, sigma_min=0.02)


def guided(model, scale):
    return sg.ClassifierGuidance(model, QUAD.classifier, scale)


# Measured discretisation bias (60,000 samples, rescaled to n = 6000), worst statistic: ddpm 1.3-1.7 SE
# (the s = 0.3 / 0.4 components' variance, -2.6% as unguided), langevin 1.1-1.9 SE (the light component's
# weight: the unadjusted Langevin step's bias). The limit is 5.43 SE (z = 5, Bonferroni over 10 statistics).
@pytest.mark.parametrize(
    "sampler, y",
    # langevin: 11 s each; guided Langevin on an exact conditional stays in the default run at other scales
    [("ddpm", 0), ("ddpm", 1), pytest.param("langevin", 0, marks=pytest.mark.slow),
     pytest.param("langevin", 1, marks=pytest.mark.slow)],
)
def test_scale_one_samples_the_exact_conditional(sampler, y):
    if sampler == "ddpm":
        model, options = QUAD, {}
    else:
        model, options = network_model(QUAD, DiscreteVP.linear()), LANGEVIN
    result = sg.sample(guided(model, 1.0), sampler, N, seed=31 + y, y=y, progress=False, **options)
    assert_matches_mixture(result.samples, QUAD.conditional(y), z=5.0, what=f"{sampler} samples guided to y={y}")


# Overlapping classes: y = 0 is N(-1, 1), y = 1 is N(+1, 1), equal weights, in 1-D. The exact conditional's
# purity (fraction of samples whose clean-level class posterior argmax is y, i.e. x on y's side of 0) is
# Phi(1) = 0.841; unguided it is 1/2.
OVERLAP = sg.GaussianMixture([1.0, 1.0], [[-1.0], [1.0]], [1.0, 1.0], name="overlap")
N_PURITY = 4000  # binomial SE of a purity near 0.84: 0.0058


@functools.lru_cache(maxsize=None)
def purity(sampler: str, y: int, scale: float) -> float:
    options = dict(steps=1000) if sampler == "ddim" else {}
    x = sg.sample(
        sg.ClassifierGuidance(OVERLAP, OVERLAP.classifier, scale), sampler, N_PURITY,
        seed=1000 + 10 * y + int(10 * scale), y=y, progress=False, **options,
    ).samples
    return float((OVERLAP.classifier(x.double()).argmax(-1) == y).double().mean())


@pytest.mark.parametrize("y", [0, 1])
def test_scale_one_purity_is_the_exact_conditional_purity(y):
    """Two-sided binomial test of the purity at gamma = 1 against Phi(1) (z = 5)."""
    exact = NormalDist().cdf(1.0)
    p = purity("ddpm", y, 1.0)
    se = binomial_se(exact, N_PURITY)
    assert abs(p - exact) <= 5 * se, f"purity {p:.4f} vs exact {exact:.4f}: {(p - exact) / se:+.2f} SE"


@pytest.mark.parametrize("y", [0, 1])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (1.0, 4.0)])
def test_larger_scale_raises_class_purity(sampler, y, lo, hi):
    """Independent runs (different seeds), so the purities' difference has SE sqrt(p1 q1 / n + p2 q2 / n);
    the increase must exceed 5 of those (z = 5, one-sided)."""
    assert_proportion_above(
        purity(sampler, y, hi), purity(sampler, y, lo), N_PURITY, N_PURITY, z=5.0,
        what=f"{sampler} purity for y={y}, gamma={hi} over gamma={lo}",
    )


@pytest.mark.parametrize(
    "sampler, options",
    [("ddpm", dict(steps=50)), ("ddim", dict(steps=20)), ("langevin", dict(levels=3, steps_per_level=5))],
)
def test_scale_zero_is_the_unguided_model(sampler, options):
    """gamma = 0 must not change a single bit: same seed, same noise, same model queries (the label is
    consumed by the guidance wrapper, so the unguided mixture is sampled without one)."""
    plain = sg.sample(QUAD, sampler, 500, seed=7, progress=False, **options).samples
    zero = sg.sample(guided(QUAD, 0.0), sampler, 500, seed=7, y=1, progress=False, **options).samples
    assert torch.equal(zero, plain)


@pytest.mark.parametrize(
    "sampler, options", [("ddpm", dict(steps=5)), ("ddim", dict(steps=5)), ("langevin", dict(levels=2, steps_per_level=2))]
)
def test_missing_label_is_a_clear_value_error(sampler, options):
    with pytest.raises(ValueError, match=r"classifier guidance needs a class label: pass y="):
        sg.sample(guided(QUAD, 1.0), sampler, 10, seed=0, progress=False, **options)


def test_negative_scale_is_rejected():
    with pytest.raises(ValueError, match=r"guidance scale must be a finite number >= 0"):
        guided(QUAD, -1.0)
