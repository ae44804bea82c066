"""The benchmark ranks samplers: its headline metric separates a coarse from a fine sampler far beyond its noise, a
perfect sampler scores at its floor, budgets are spent exactly, and the report holds what it says."""

import math

import pytest
import torch

import scoregen as sg
from scoregen.bench import budget_options, format_table, guidance_sweep, rank, resolve_subject, run_bench

@pytest.fixture(scope="module", params=["ring2d", "gmm64"])
def exact_result(request):
    # the default n of exact targets; DDIM at 10 and 1000 steps, the two ends the issue asks to tell apart
    subject = resolve_subject(request.param)
    return run_bench(subject, ["ddim"], [10, 1000], progress=False)


def _headline_separates_ddim_10_from_1000_steps_by_five_standard_errors(exact_result):
    assert exact_result.n == 10000 and exact_result.headline == "mmd2"
    coarse, fine = (next(r for r in exact_result.rows if r.sampler == "ddim" and r.budget == b) for b in (10, 1000))
    gap = coarse.metrics["mmd2"] - fine.metrics["mmd2"]
    assert gap > 5 * math.hypot(coarse.metrics["mmd2_se"], fine.metrics["mmd2_se"])
    assert [p for p, r in rank(exact_result, [coarse, fine])][0] == "1"
    assert rank(exact_result, [coarse, fine])[0][1] is fine


def _exact_sampler_scores_within_two_standard_errors_of_its_floor(exact_result):
    exact = exact_result.rows[0]
    assert exact.source == "reference" and exact.sampler == "exact"
    assert exact_result.floors["mmd2"][0] == 0.0
    assert abs(exact.metrics["mmd2"]) < 2 * exact.metrics["mmd2_se"]
    # the other metrics' floors: an exact draw lies within 3 spreads of the mean of 5 others
    for key in ("component_fd", "sliced_w2", "mode_tv"):
        mean, std = exact_result.floors[key]
        assert abs(exact.metrics[key] - mean) < 3 * std * math.sqrt(1 + 1 / 5), key


def _table_names_the_floor_and_ranks_within_each_budget(exact_result):
    table = format_table(exact_result)
    assert "floor" in table and "perfect sampler" in table and "MMD^2" in table
    assert "bandwidth" in table  # the legend says which kernel


def test_exact_bench(exact_result):
    """One bench run per target, checked three ways (in one test: under pytest-xdist a module fixture runs again on
    every worker that needs it)."""
    _headline_separates_ddim_10_from_1000_steps_by_five_standard_errors(exact_result)
    _exact_sampler_scores_within_two_standard_errors_of_its_floor(exact_result)
    _table_names_the_floor_and_ranks_within_each_budget(exact_result)


def test_budgets_are_spent_exactly():
    ring = sg.load_target("ring2d")
    for nfe in (5, 33, 50, 99, 1000):
        options = budget_options("langevin", nfe, ring)
        assert sg.sample(ring, "langevin", 2, seed=0, **options).nfe == nfe
        assert sg.sample(ring, "ddim", 2, seed=0, **budget_options("ddim", nfe, ring)).nfe == nfe
    assert budget_options("ddpm", 5000, ring) == {"steps": 1000}  # at most the trained levels


def test_guidance_sweep_raises_class_accuracy_with_the_scale():
    sweep = guidance_sweep(resolve_subject("ring2d"), [0, 3], "ddim", 20, n=400, label=2, progress=False)
    acc = [r.metrics["class_accuracy"] for r in sweep.rows[1:]]
    # unguided: 1 in 8 classes is class 2 (+-5 standard errors of 400 draws); guided: nearly all
    assert abs(acc[0] - 1 / 8) < 5 * math.sqrt(1 / 8 * 7 / 8 / 400)
    assert acc[1] > 0.95


def test_digits_scorer_floor_and_a_degraded_sampler():
    from scoregen.bench.scorers import DigitsScorer

    judge, config = sg.load_checkpoint("digits-judge")
    scorer = DigitsScorer(judge, 300, seed=0)
    floor_mean, floor_std = scorer.floor()["fd"]
    real = scorer.score(scorer.reference_samples(0))
    assert abs(real["fd"] - floor_mean) < 4 * floor_std
    g = torch.Generator().manual_seed(0)
    noisy = (scorer.reference_samples(0) + 0.5 * torch.randn(300, 1, 8, 8, generator=g)).clamp(-1, 1)
    assert scorer.score(noisy)["fd"] > floor_mean + 10 * floor_std
    with pytest.raises(ValueError, match="n <= 896"):
        DigitsScorer(judge, 2000)


def test_unknown_models_and_classifiers_are_refused():
    with pytest.raises(ValueError, match="unknown benchmark model"):
        resolve_subject("no-such-model")
    with pytest.raises(ValueError, match="classifier, not a score model"):
        resolve_subject("digits-classifier")
    with pytest.raises(ValueError, match="n \\(samples per run"):
        run_bench(resolve_subject("ring2d"), ["ddim"], [5], n=1, progress=False)


def test_a_checkpoint_trained_on_an_exact_target_is_scored_against_it(tmp_path):
    from scoregen.cli import main

    out = tmp_path / "ring-ddpm"
    assert main(["train", "--data", "ring2d", "--objective", "ddpm", "--steps", "20", "--out", str(out), "--no-progress"]) == 0
    subject = resolve_subject(str(out))
    assert subject.kind == "exact" and "trained on ring2d" in subject.name
    result = run_bench(subject, ["ddim"], [5], n=200, progress=False)
    # 20 training steps: far from the exact mixture, by many standard errors
    row = result.rows[1]
    assert row.metrics["mmd2"] > 10 * row.metrics["mmd2_se"]
