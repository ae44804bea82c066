"""Interoperability: networks trained elsewhere in (diffusers pipelines, original NCSNv2 checkpoints,
k-diffusion-style denoisers), score functions out to other pipelines (plain differentiable functions
that work under ``torch.func``, and k-diffusion / EDM denoisers).

diffusers and PyYAML are optional: they are imported only when a diffusers pipeline or an NCSNv2 YAML
config is loaded (``pip install 'scoregen[diffusers]'`` / ``'scoregen[ncsnv2]'``).
"""

from .diffusers import from_diffusers, load_diffusers
from .export import denoiser, eps_fn, score_fn
from .kdiffusion import from_denoiser
from .ncsnv2 import load_ncsnv2

__all__ = ["load_diffusers", "from_diffusers", "load_ncsnv2", "score_fn", "eps_fn", "denoiser", "from_denoiser"]
