"""scoregen: one score-model interface, pluggable diffusion and score-based samplers, guidance, exact targets."""

from .guidance import ClassifierFreeGuidance, ClassifierGuidance
from .metrics import mode_tv, sliced_w2, sliced_w2_noise_floor
from .models import NetworkScoreModel, ScoreModel, X0Hook, clip_x0, dynamic_threshold
from .samplers import SAMPLERS, SampleResult, sample
from .schedules import ContinuousVE, ContinuousVP, DiscreteVE, DiscreteVP
from .targets import GaussianMixture, load_target

__version__ = "0.1.0"

__all__ = [
    "ScoreModel",
    "NetworkScoreModel",
    "X0Hook",
    "clip_x0",
    "dynamic_threshold",
    "ClassifierGuidance",
    "ClassifierFreeGuidance",
    "DiscreteVP",
    "DiscreteVE",
    "ContinuousVP",
    "ContinuousVE",
    "GaussianMixture",
    "load_target",
    "sample",
    "SampleResult",
    "SAMPLERS",
    "sliced_w2",
    "sliced_w2_noise_floor",
    "mode_tv",
]
