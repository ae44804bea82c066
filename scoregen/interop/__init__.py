"""Interoperability: networks trained elsewhere in (diffusers pipelines, improved/guided-diffusion, score_sde, EDM
and NCSNv2 checkpoints, k-diffusion-style denoisers), score functions out to other pipelines (plain differentiable
functions that work under ``torch.func``, and k-diffusion / EDM denoisers).

:func:`load_pretrained` reads any of these, its format detected (:func:`detect_format`). diffusers and PyYAML are
optional: they are imported only when a diffusers pipeline or an NCSNv2 YAML config is loaded
(``pip install 'scoregen[diffusers]'`` / ``'scoregen[ncsnv2]'``).
"""

from .diffusers import from_diffusers, load_diffusers, nearest_sampler
from .edm import load_edm
from .export import denoiser, eps_fn, score_fn
from .formats import FORMATS, Pretrained, detect_format, load_pretrained
from .kdiffusion import from_denoiser, one_hot
from .ncsnv2 import load_ncsnv2, ncsnv2_initial_state
from .openai import load_openai, load_openai_classifier, openai_timesteps
from .score_sde import load_score_sde, score_sde_config

__all__ = [
    "load_pretrained", "detect_format", "FORMATS", "Pretrained",
    "load_diffusers", "from_diffusers", "nearest_sampler",
    "load_openai", "load_openai_classifier", "openai_timesteps",
    "load_score_sde", "score_sde_config",
    "load_edm",
    "load_ncsnv2", "ncsnv2_initial_state",
    "score_fn", "eps_fn", "denoiser", "from_denoiser", "one_hot",
]
