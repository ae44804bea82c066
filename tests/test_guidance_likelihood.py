"""Likelihood guidance: the posterior score ``score(x_t) + grad_x log p(y | x_t)`` from a prior score model and
a noisy log-likelihood, with classifier guidance as one case and DPS / PiGDM for linear-Gaussian measurements.

Exact math: a single-Gaussian prior ``x0 ~ N(mu, s^2 I)`` and a measurement ``y = A x0 + sigma_y n`` make every
quantity Gaussian. At level ``x_t = m x0 + sigma eps``:

* ``x0 | x_t ~ N(x0_hat, r_t^2 I)`` with ``x0_hat = mu + g (x_t - m mu)``, ``g = m s^2 / (m^2 s^2 + sigma^2)``,
  ``r_t^2 = s^2 sigma^2 / (m^2 s^2 + sigma^2)``; so ``y | x_t ~ N(A x0_hat, r_t^2 A A^T + sigma_y^2 I)``: the
  exact noisy log-likelihood;
* ``x0 | y ~ N(mu_post, P)``, ``P = (I / s^2 + A^T A / sigma_y^2)^-1``, ``mu_post = P (mu / s^2 + A^T y / sigma_y^2)``;
  so ``x_t | y ~ N(m mu_post, m^2 P + sigma^2 I)``: the exact posterior score, written independently of the first.

Bayes' rule says the guided score with the exact log-likelihood is the second; a sampler on it must reproduce
the posterior's moments.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoregen as sg
from scoregen.guidance import (
    ClassifierGuidance,
    GaussianMeasurement,
    LikelihoodGuidance,
    classifier_log_likelihood,
    gaussian_measurement,
)
from stats import bonferroni_z

F64 = torch.float64

# ----------------------------------------------------------------------------- (a) a Gaussian prior, exactly

MU = torch.tensor([0.5, -1.0], dtype=F64)
S = 0.8
PRIOR = sg.GaussianMixture([1.0], [MU.tolist()], [S], name="gaussian")
A = torch.tensor([[1.0, 0.5]], dtype=F64)  # one measurement of a 2-D x0: not a mask, A A^T = 1.25
SIGMA_Y = 0.3
Y_OBS = torch.tensor([1.2], dtype=F64)

# (sigma, m): VE levels, VP levels (m^2 + sigma^2 = 1) from nearly clean to nearly pure noise, and a mixed one
LEVELS = [(0.05, 1.0), (0.7, 1.0), (4.0, 1.0), (0.1, math.sqrt(1 - 0.01)), (0.6, 0.8), (0.999, math.sqrt(1 - 0.999**2)), (0.5, 2.0)]


def _col(level, x):
    return torch.as_tensor(level, dtype=F64).expand(x.shape[0])[:, None]


def exact_log_likelihood(A, y_obs, sigma_y):
    """log p(y | x_t) for the Gaussian prior: N(y; A x0_hat, r_t^2 A A^T + sigma_y^2 I), written out."""

    def log_likelihood(x, sigma, m, y=None):
        sigma, m = _col(sigma, x), _col(m, x)
        g = m * S**2 / (m**2 * S**2 + sigma**2)
        x0_hat = MU + g * (x - m * MU)
        r2 = (S**2 * sigma**2 / (m**2 * S**2 + sigma**2))[:, 0]
        cov = r2[:, None, None] * (A @ A.T) + sigma_y**2 * torch.eye(A.shape[0], dtype=F64)
        residual = y_obs - x0_hat @ A.T
        return torch.distributions.MultivariateNormal(torch.zeros(A.shape[0], dtype=F64), cov).log_prob(residual)

    return log_likelihood


def posterior(A, y_obs, sigma_y):
    """(mu_post, P): x0 | y ~ N(mu_post, P)."""
    P = torch.linalg.inv(torch.eye(2, dtype=F64) / S**2 + A.T @ A / sigma_y**2)
    return P @ (MU / S**2 + A.T @ y_obs / sigma_y**2), P


def posterior_score(x, sigma, m, A, y_obs, sigma_y):
    """grad_x log p(x_t | y) with x_t | y ~ N(m mu_post, m^2 P + sigma^2 I); sigma, m floats or (B,)."""
    mu_post, P = posterior(A, y_obs, sigma_y)
    sigma, m = _col(sigma, x)[:, :, None], _col(m, x)[:, :, None]
    cov = m**2 * P + sigma**2 * torch.eye(2, dtype=F64)  # (B, 2, 2)
    return -torch.linalg.solve(cov, (x - m[:, :, 0] * mu_post)[:, :, None])[:, :, 0]


def _x(n=7, seed=0):
    return 1.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("sigma, m", LEVELS)
def test_exact_log_likelihood_gives_the_exact_posterior_score(sigma, m):
    guided = LikelihoodGuidance(PRIOR, exact_log_likelihood(A, Y_OBS, SIGMA_Y))
    x = _x()
    want = posterior_score(x, sigma, m, A, Y_OBS, SIGMA_Y)
    torch.testing.assert_close(guided.score(x, sigma, m), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(guided.eps(x, sigma, m), -sigma * want, rtol=1e-10, atol=1e-12)
    # and the guidance term alone is the gradient of the log-likelihood, not the unguided score
    assert not torch.allclose(PRIOR.score(x, sigma, m), want)


def test_exact_posterior_score_at_per_sample_levels():
    guided = LikelihoodGuidance(PRIOR, exact_log_likelihood(A, Y_OBS, SIGMA_Y))
    sigma = torch.tensor([s for s, _ in LEVELS], dtype=F64)
    m = torch.tensor([mm for _, mm in LEVELS], dtype=F64)
    x = _x(len(LEVELS), seed=1)
    want = posterior_score(x, sigma, m, A, Y_OBS, SIGMA_Y)
    torch.testing.assert_close(guided.score(x, sigma, m), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(guided.eps(x, sigma, m), -sigma[:, None] * want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sigma, m", LEVELS)
def test_gaussian_measurement_with_a_mask_and_the_prior_variance_is_exact(sigma, m):
    """For a mask (A A^T = I on the observed entries) and data_var = s^2, r_t^2 is the exact variance of x0
    given x_t, so the helper's log-likelihood is the exact one: value (normalising constant included) and gradient."""
    mask = torch.tensor([1.0, 0.0], dtype=F64)
    y_full = torch.tensor([1.2, 123.0], dtype=F64)  # the hidden entry is ignored
    measurement = gaussian_measurement(PRIOR, mask, y_full, SIGMA_Y, data_var=S**2)
    exact = exact_log_likelihood(torch.tensor([[1.0, 0.0]], dtype=F64), y_full[:1], SIGMA_Y)
    x = _x(seed=2)
    torch.testing.assert_close(measurement(x, sigma, m), exact(x, sigma, m), rtol=1e-10, atol=1e-12)
    guided = LikelihoodGuidance(PRIOR, measurement)
    want = posterior_score(x, sigma, m, torch.tensor([[1.0, 0.0]], dtype=F64), y_full[:1], SIGMA_Y)
    torch.testing.assert_close(guided.score(x, sigma, m), want, rtol=1e-10, atol=1e-12)


def test_gaussian_measurement_with_an_operator_matches_the_formula():
    """A callable A, a per-sample measurement, per-sample levels: log N(y; A x0_hat, (sigma_y^2 + r_t^2) I) by hand."""
    A2 = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.0, 1.0]], dtype=F64)
    x = _x(4, seed=3)
    y_obs = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    sigma = torch.tensor([0.2, 0.5, 1.0, 3.0], dtype=F64)
    m = torch.tensor([1.0, 0.8, 1.0, 0.3], dtype=F64)
    for data_var in (None, 2.0):
        measurement = gaussian_measurement(PRIOR, lambda x0: x0 @ A2.T, y_obs, 0.4, data_var=data_var)
        x0_hat = PRIOR.x0(x, sigma, m)
        ve2 = (sigma / m) ** 2
        var = 0.4**2 + (torch.zeros(4, dtype=F64) if data_var is None else data_var * ve2 / (data_var + ve2))
        want = -0.5 * ((y_obs - x0_hat @ A2.T) ** 2).sum(1) / var - 1.5 * torch.log(2 * math.pi * var)
        torch.testing.assert_close(measurement(x, sigma, m), want, rtol=1e-12, atol=1e-12)
        # one level for the batch: the same as that level per sample
        torch.testing.assert_close(measurement(x, 0.5, 0.8)[1], want[1], rtol=1e-12, atol=1e-12)


N_SAMPLES = 4000


def test_ddim_on_the_exact_posterior_score_samples_the_posterior():
    """DDIM (eta = 0, all 1000 trained levels) on prior + exact log-likelihood reproduces x0 | y's mean and
    covariance. SEs at n = 4000: mean_j sqrt(P_jj / n); covariance entry sqrt((P_ii P_jj + P_ij^2) / n)
    (Gaussian samples). Measured discretisation bias at n = 20000: <= 0.83 SE (means), <= 0.72 SE (covariance),
    i.e. <= 0.4 SE at this n; the limit is z = 5 with Bonferroni over the 5 statistics (5.3 SE)."""
    guided = LikelihoodGuidance(PRIOR, exact_log_likelihood(A, Y_OBS, SIGMA_Y))
    samples = sg.sample(guided, "ddim", N_SAMPLES, seed=11, steps=1000, dtype=F64, progress=False).samples
    mu_post, P = posterior(A, Y_OBS, SIGMA_Y)
    mean, cov = samples.mean(0), torch.cov(samples.T)
    limit = bonferroni_z(5.0, 5)
    stats = [(f"mean[{j}]", mean[j], mu_post[j], torch.sqrt(P[j, j] / N_SAMPLES)) for j in range(2)]
    stats += [(f"cov[{i},{j}]", cov[i, j], P[i, j], torch.sqrt((P[i, i] * P[j, j] + P[i, j] ** 2) / N_SAMPLES))
              for i, j in [(0, 0), (0, 1), (1, 1)]]
    bad = [f"{name} = {float(v):.4f} (exact {float(e):.4f}, {float((v - e) / se):+.2f} SE)"
           for name, v, e, se in stats if not abs(float((v - e) / se)) <= limit]
    assert not bad, f"posterior samples beyond {limit:.2f} SE: " + "; ".join(bad)
    # the prior is far from the posterior on this scale: the test can tell them apart
    assert abs(float(mean[0] - MU[0])) > 20 * float(torch.sqrt(P[0, 0] / N_SAMPLES))


# ----------------------------------------------------------------------------- (b) classifier guidance is the same combinator

QUAD = sg.GaussianMixture(
    [0.4, 0.25, 0.15, 0.2], [[-3.0, 0.0], [3.0, 0.0], [0.0, 3.5], [0.0, -3.5]], [0.3, 0.4, 0.5, 0.35],
    labels=[0, 1, 0, 1], name="quad",
)


def _by_hand(x, sigma, m, y):
    return torch.log_softmax(QUAD.classifier(x, sigma, m), -1).gather(1, torch.as_tensor(y).expand(x.shape[0])[:, None])[:, 0]


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.5])
def test_classifier_guidance_is_likelihood_guidance_with_the_classifier_log_likelihood(scale):
    x = 2.0 * torch.randn(40, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    y = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(6))
    cg = ClassifierGuidance(QUAD, QUAD.classifier, scale)
    lg = LikelihoodGuidance(QUAD, classifier_log_likelihood(QUAD.classifier), scale)
    hand = LikelihoodGuidance(QUAD, _by_hand, scale)
    assert isinstance(cg, LikelihoodGuidance)
    for sigma, m in [(0.3, 1.0), (0.6, 0.8), (torch.full((40,), 0.6, dtype=F64), torch.full((40,), 0.8, dtype=F64))]:
        assert torch.equal(cg.eps(x, sigma, m, y), lg.eps(x, sigma, m, y))
        assert torch.equal(cg.score(x, sigma, m, y), lg.score(x, sigma, m, y))
        torch.testing.assert_close(cg.eps(x, sigma, m, y), hand.eps(x, sigma, m, y), rtol=1e-12, atol=1e-12)
    if scale > 0:  # guidance changes the answer: the equalities above are not vacuous
        assert not torch.allclose(cg.eps(x, 0.6, 0.8, y), QUAD.eps(x, 0.6, 0.8))
    a = sg.sample(cg, "ddim", 300, seed=3, y=1, steps=20, progress=False).samples
    b = sg.sample(lg, "ddim", 300, seed=3, y=1, steps=20, progress=False).samples
    assert torch.equal(a, b)


def test_likelihoods_of_independent_observations_add():
    """A class label and a measurement at once: one lambda summing two log-likelihoods."""
    measurement = gaussian_measurement(QUAD, torch.tensor([1.0, 0.0]), torch.tensor([2.9, 0.0]), 0.2, data_var=1.0)
    clf = classifier_log_likelihood(QUAD.classifier)
    both = LikelihoodGuidance(QUAD, lambda x, sigma, m, y: clf(x, sigma, m, y) + measurement(x, sigma, m, y))
    x = torch.randn(6, 2, dtype=F64)
    y = torch.ones(6, dtype=torch.long)
    g = both.grad_log_likelihood(x, 0.5, 0.9, y)
    parts = (LikelihoodGuidance(QUAD, clf).grad_log_likelihood(x, 0.5, 0.9, y)
             + LikelihoodGuidance(QUAD, measurement).grad_log_likelihood(x, 0.5, 0.9, y))
    torch.testing.assert_close(g, parts, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- (c) DPS moves samples to the measurement

FOUR = sg.GaussianMixture([0.25] * 4, [[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]], [0.5] * 4, name="four")
X0_TRUE = torch.tensor([2.6, 0.4], dtype=F64)  # a draw from component 0
N_DPS = 1000


@pytest.mark.parametrize(
    "task, operator, sigma_y, data_var",
    [
        ("denoising, DPS", lambda x0: x0, 0.5, None),
        ("inpainting x[0], PiGDM variance", torch.tensor([1.0, 0.0], dtype=F64), 0.1, 1.0),
        ("inpainting x[0], DPS", torch.tensor([1.0, 0.0], dtype=F64), 0.1, None),
    ],
)
def test_dps_moves_samples_to_the_measurement(task, operator, sigma_y, data_var):
    """The measurement singles out component 0 (the exact posterior puts all but ~1e-10 of its mass there), so
    guided samples must land in it and be far closer to the true x0 than prior samples. Measured (n = 2000):
    prior MSE 16.5; guided MSE 0.46-0.78 with 100% of samples in component 0. Limits: MSE below 0.15 x the
    prior's and >= 98% in component 0."""
    clean = operator(X0_TRUE[None])[0] if callable(operator) else operator * X0_TRUE
    y_obs = clean + sigma_y * torch.randn(2, generator=torch.Generator().manual_seed(5), dtype=F64)
    steps = 200 if data_var is None and not callable(operator) else 50  # plain DPS with small sigma_y needs more steps
    measurement = gaussian_measurement(FOUR, operator, y_obs, sigma_y, data_var=data_var)
    guided = sg.sample(LikelihoodGuidance(FOUR, measurement), "ddim", N_DPS, seed=2, steps=steps, dtype=F64, progress=False).samples
    prior = sg.sample(FOUR, "ddim", N_DPS, seed=2, steps=steps, dtype=F64, progress=False).samples
    mse = lambda s: float(((s - X0_TRUE) ** 2).sum(1).mean())  # noqa: E731
    in_true = float((FOUR.component_posterior(guided).argmax(-1) == 0).double().mean())
    assert mse(guided) < 0.15 * mse(prior), f"{task}: guided MSE {mse(guided):.3f} vs prior {mse(prior):.3f}"
    assert in_true >= 0.98, f"{task}: only {in_true:.3f} of guided samples in the measured component"


def test_scale_zero_is_the_prior_bit_for_bit():
    measurement = gaussian_measurement(FOUR, lambda x0: x0, torch.tensor([2.6, 0.4]), 0.5)
    plain = sg.sample(FOUR, "ddim", 200, seed=7, steps=20, progress=False).samples
    zero = sg.sample(LikelihoodGuidance(FOUR, measurement, 0.0), "ddim", 200, seed=7, steps=20, progress=False).samples
    assert torch.equal(plain, zero)


def test_guidance_works_on_images_with_a_per_sample_mask():
    """(B, C, H, W) data through a network-style model: per-sample masks and measurements, float32."""
    net = lambda x, t: 0.1 * x  # noqa: E731
    model = sg.NetworkScoreModel(net, sg.DiscreteVP.linear(), shape=(1, 4, 4))
    mask = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    y_obs = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    measurement = gaussian_measurement(model, mask, y_obs, 0.1, data_var=1.0)
    res = sg.sample(LikelihoodGuidance(model, measurement), "ddim", 3, seed=0, steps=10, progress=False)
    assert res.samples.shape == (3, 1, 4, 4) and res.nfe == 10 and torch.isfinite(res.samples).all()
    x = torch.randn(3, 1, 4, 4)
    value = measurement(x, 0.5, 0.8)
    assert value.shape == (3,)
    # unobserved pixels carry no likelihood gradient
    g = LikelihoodGuidance(model, measurement).grad_log_likelihood(x, 0.5, 0.8)
    assert torch.all(g[mask == 0] == 0) and torch.any(g[mask == 1] != 0)


# ----------------------------------------------------------------------------- (d) clear errors


def test_log_likelihood_of_the_wrong_shape_is_refused():
    x = torch.randn(5, 2, dtype=F64)
    for bad, got in [(lambda x, s, m, y: x.sum(1, keepdim=True), r"\(5, 1\)"), (lambda x, s, m, y: x.sum(), r"\(\)"),
                     (lambda x, s, m, y: x[:3].sum(1), r"\(3,\)"), (lambda x, s, m, y: 1.0, "float")]:
        with pytest.raises(ValueError, match=r"one value per sample, shape \(batch,\) = \(5,\), got " + got):
            LikelihoodGuidance(FOUR, bad).eps(x, 0.5, 1.0)


def test_non_differentiable_log_likelihood_is_refused():
    x = torch.randn(5, 2, dtype=F64)
    with pytest.raises(ValueError, match="not differentiable in x"):
        LikelihoodGuidance(FOUR, lambda x, s, m, y: x.detach().sum(1)).eps(x, 0.5, 1.0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"guidance scale must be a finite number >= 0"):
        LikelihoodGuidance(FOUR, lambda x, s, m, y: x.sum(1), -0.5)
    with pytest.raises(TypeError, match="log_likelihood must be callable"):
        LikelihoodGuidance(FOUR, torch.zeros(3))
    y_obs = torch.zeros(2)
    with pytest.raises(ValueError, match=r"sigma_y .* must be a finite number >= 0"):
        gaussian_measurement(FOUR, lambda x0: x0, y_obs, -0.1)
    with pytest.raises(ValueError, match="sigma_y = 0 with data_var=None"):
        gaussian_measurement(FOUR, lambda x0: x0, y_obs, 0.0)
    with pytest.raises(ValueError, match=r"data_var .* must be a finite number > 0"):
        gaussian_measurement(FOUR, lambda x0: x0, y_obs, 0.1, data_var=0.0)
    with pytest.raises(TypeError, match="operator .* must be a callable A\\(x0\\) or a 0/1 mask"):
        gaussian_measurement(FOUR, "identity", y_obs, 0.1)
    with pytest.raises(TypeError, match="y_obs .* must be a tensor"):
        gaussian_measurement(FOUR, lambda x0: x0, [0.0, 0.0], 0.1)
    # sigma_y = 0 is allowed with data_var (noiseless inpainting), and is finite at every sigma > 0
    noiseless = gaussian_measurement(FOUR, torch.tensor([1.0, 0.0]), y_obs, 0.0, data_var=1.0)
    assert torch.isfinite(noiseless(torch.randn(3, 2), 0.01)).all()
    with pytest.raises(ValueError, match="variance sigma_y\\^2 \\+ r_t\\^2 is 0"):
        noiseless(torch.randn(3, 2), 0.0)


def test_bad_masks_and_measurement_shapes_are_refused():
    with pytest.raises(ValueError, match=r"mask operator must have the model's sample shape \(2,\) or \(batch, \*\(2,\)\), got \(3,\)"):
        gaussian_measurement(FOUR, torch.ones(3), torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match="only 0 \\(unobserved\\) and 1 \\(observed\\)"):
        gaussian_measurement(FOUR, torch.tensor([0.5, 1.0]), torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match=r"y_obs must have the model's sample shape \(2,\)"):
        gaussian_measurement(FOUR, torch.tensor([1.0, 0.0]), torch.zeros(3), 0.1)
    x = torch.randn(4, 2, dtype=F64)
    # a callable operator: checked against what A returns, at the first query
    measurement = gaussian_measurement(FOUR, lambda x0: x0[:, :1], torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match=r"y_obs has shape \(2,\), but A maps a batch x0 of shape \(4, 2\) to \(4, 1\): "
                                         r"pass y_obs of shape \(1,\) .* or \(4, 1\)"):
        LikelihoodGuidance(FOUR, measurement).eps(x, 0.5, 1.0)
    per_sample = gaussian_measurement(FOUR, lambda x0: x0, torch.zeros(3, 2), 0.1)  # 3 measurements, 4 samples
    with pytest.raises(ValueError, match=r"y_obs has shape \(3, 2\)"):
        per_sample(x, 0.5)
    with pytest.raises(ValueError, match="must map x0 of shape \\(4, 2\\) to a batch"):
        gaussian_measurement(FOUR, lambda x0: x0.sum(), torch.zeros(()), 0.1)(x, 0.5)
    # a per-sample mask for another batch size
    with pytest.raises(ValueError, match="3 masks for a batch of 4 samples"):
        gaussian_measurement(FOUR, torch.ones(3, 2), torch.zeros(2), 0.1)(x, 0.5)


def test_hidden_measurement_entries_may_be_nan_but_observed_ones_must_be_finite():
    mask = torch.tensor([1.0, 0.0])
    hidden_nan = gaussian_measurement(FOUR, mask, torch.tensor([2.6, float("nan")]), 0.3)
    filled = gaussian_measurement(FOUR, mask, torch.tensor([2.6, 123.0]), 0.3)
    x = torch.randn(4, 2, dtype=F64)
    assert torch.equal(hidden_nan(x, 0.5), filled(x, 0.5))
    res = sg.sample(LikelihoodGuidance(FOUR, hidden_nan), "ddim", 8, seed=0, steps=10, progress=False)
    assert torch.isfinite(res.samples).all()
    with pytest.raises(ValueError, match="NaN or inf at observed entries"):
        gaussian_measurement(FOUR, mask, torch.tensor([float("inf"), 0.0]), 0.3)
    with pytest.raises(ValueError, match="y_obs holds NaN or inf"):
        gaussian_measurement(FOUR, lambda x0: x0, torch.tensor([0.0, float("nan")]), 0.3)
    with pytest.raises(ValueError, match="a finite number >= 0, got inf"):
        LikelihoodGuidance(FOUR, hidden_nan, float("inf"))


def test_guidance_under_torch_func_says_to_call_it_eagerly():
    from scoregen.interop import score_fn

    f = score_fn(LikelihoodGuidance(FOUR, gaussian_measurement(FOUR, lambda x0: x0, torch.zeros(2), 0.3)), "ve")
    x = torch.randn(4, 2, dtype=F64)
    assert f(x, 0.5).shape == (4, 2)  # eagerly it works
    with pytest.raises(RuntimeError, match="does not run inside torch.func transforms"):
        torch.func.vmap(f, in_dims=(0, None))(x, 0.5)


def test_classifier_errors_are_unchanged():
    x = torch.randn(4, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"the classifier must return logits of shape \(batch, classes\), got \(4,\)"):
        ClassifierGuidance(QUAD, lambda x, s, m: x.sum(1)).eps(x, 0.5, 1.0, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class labels must be in 0..1"):
        ClassifierGuidance(QUAD, QUAD.classifier).eps(x, 0.5, 1.0, torch.full((4,), 2))
    for scale in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"classifier guidance needs a class label: pass y="):
            ClassifierGuidance(QUAD, QUAD.classifier, scale).eps(x, 0.5, 1.0)
    with pytest.raises(ValueError, match=r"classifier guidance needs a class label"):
        LikelihoodGuidance(QUAD, classifier_log_likelihood(QUAD.classifier)).eps(x, 0.5, 1.0)


def test_repr_names_the_measurement():
    text = repr(GaussianMeasurement(FOUR, torch.tensor([1.0, 0.0]), torch.zeros(2), 0.1, data_var=1.0))
    assert "mask" in text and "sigma_y=0.1" in text and "data_var=1.0" in text
