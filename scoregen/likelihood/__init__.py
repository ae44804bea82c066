"""Likelihoods of diffusion and score models, per sample, in nats (``details=True``: bits/dim and every term).

* :func:`vlb`: the variational bound (ELBO) on the model's levels or a respaced subsequence, with any reverse
  variance (``beta_tilde``, ``beta``, ``learned``, ``analytic``) and a discretised or continuous decoder;
* :func:`ode_nll`: the probability-flow ODE's exact likelihood (instantaneous change of variables), with an exact
  or Hutchinson divergence and uniform dequantization for discrete data.

docs/likelihood.md explains the estimators, their costs and how they relate.
"""

from .gaussian import Bins, discretized_gaussian_nll, gaussian_nll, normal_kl
from .ode import ode_nll
from .plot import plot_terms
from .result import NLLResult, concat_results, gather_results
from .vlb import prior_kl, vlb

__all__ = ["vlb", "ode_nll", "NLLResult", "Bins", "normal_kl", "gaussian_nll", "discretized_gaussian_nll", "prior_kl", "plot_terms",
           "concat_results", "gather_results"]
