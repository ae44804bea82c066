"""scoregen: one score-model interface, pluggable diffusion and score-based samplers, guidance, exact targets."""

from .guidance import ClassifierFreeGuidance, ClassifierGuidance, LikelihoodGuidance, gaussian_measurement
from . import likelihood
from .io import load_checkpoint
from .likelihood import NLLResult, ode_nll, vlb
from .metrics import (class_report, component_frechet, frechet_distance, mmd_to_mixture, mode_tv, sliced_w2,
                      sliced_w2_noise_floor, sliced_w2_to_mixture)
from .models import NetworkScoreModel, ScoreModel, X0Hook, clip_x0, dynamic_threshold
from .pretrained import pretrained_names
from .samplers import (SAMPLERS, SPACINGS, SampleResult, StepGrid, batch_ranges, load_grid, sample, save_grid, step_grid,
                       tune_grid)
from .schedules import ContinuousSubVP, ContinuousVE, ContinuousVP, DiscreteVE, DiscreteVP
from .targets import GaussianMixture, load_target
from .variance import VARIANCES, analytic_variance

__version__ = "0.1.0"

__all__ = [
    "ScoreModel",
    "NetworkScoreModel",
    "X0Hook",
    "clip_x0",
    "dynamic_threshold",
    "ClassifierGuidance",
    "ClassifierFreeGuidance",
    "LikelihoodGuidance",
    "gaussian_measurement",
    "DiscreteVP",
    "DiscreteVE",
    "ContinuousVP",
    "ContinuousVE",
    "ContinuousSubVP",
    "GaussianMixture",
    "load_target",
    "sample",
    "batch_ranges",
    "SampleResult",
    "SAMPLERS",
    "SPACINGS",
    "StepGrid",
    "step_grid",
    "tune_grid",
    "save_grid",
    "load_grid",
    "sliced_w2",
    "sliced_w2_noise_floor",
    "sliced_w2_to_mixture",
    "mmd_to_mixture",
    "component_frechet",
    "frechet_distance",
    "mode_tv",
    "class_report",
    "load_checkpoint",
    "pretrained_names",
    "likelihood",
    "vlb",
    "ode_nll",
    "NLLResult",
    "analytic_variance",
    "VARIANCES",
]
