"""Samplers: one signature, chosen by name in one call.

Every sampler is a function ``sampler(model, z, *, generator, y, callback, progress, **options) -> x0``
where ``z`` is standard normal noise of shape (B, *shape) that the sampler scales to its own first level.
:func:`sample` draws ``z`` from a seeded generator, counts network evaluations (NFE), times the run and
checks the result, so swapping samplers on a model is one argument::

    sample(model, "ddpm", n=1000, seed=0)
    sample(model, "langevin", n=1000, seed=0, levels=10, steps_per_level=100)
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..models import ModelTransform, ScoreModel, X0Hook
from .ddim import ddim
from .ddpm import ddpm
from .langevin import langevin

__all__ = ["SAMPLERS", "SampleResult", "sample", "sampler_options", "ddpm", "ddim", "langevin"]

SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "langevin": langevin, "ddim": ddim}
_SHARED = {"generator", "y", "callback", "progress"}


@dataclass
class SampleResult:
    """Samples of shape (n, *shape), the number of model evaluations, wall-clock seconds, and the seed used."""

    samples: Tensor
    nfe: int
    wall_time: float
    sampler: str
    seed: Optional[int]
    options: dict = field(default_factory=dict)


class _Counted(ModelTransform):
    """Counts eps/score/x0 queries: each is one network evaluation."""

    def __init__(self, model: ScoreModel):
        super().__init__(model)
        self.nfe = 0

    def eps(self, x, sigma, m=1.0, y=None):
        self.nfe += 1
        return self.model.eps(x, sigma, m, y)

    def score(self, x, sigma, m=1.0, y=None):
        self.nfe += 1
        return self.model.score(x, sigma, m, y)

    def x0(self, x, sigma, m=1.0, y=None):
        self.nfe += 1
        return self.model.x0(x, sigma, m, y)


def sampler_options(sampler: Union[str, Callable]) -> set[str]:
    """The sampler's own keyword options (``steps``, ``eta``, ...), without the shared arguments."""
    params = inspect.signature(_resolve(sampler)[1]).parameters
    return {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY} - _SHARED


def _resolve(sampler: Union[str, Callable]) -> tuple[str, Callable]:
    if callable(sampler):
        return getattr(sampler, "__name__", "custom"), sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    return sampler, SAMPLERS[sampler]


def sample(
    model: ScoreModel,
    sampler: Union[str, Callable] = "ddpm",
    n: int = 1,
    *,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    y: Union[int, Tensor, None] = None,
    x0_hook: Optional[Callable[[Tensor], Tensor]] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: Optional[bool] = None,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
    **options,
) -> SampleResult:
    """Draw ``n`` samples from ``model`` with ``sampler`` (a name in :data:`SAMPLERS` or a sampler function).

    Args:
        seed / generator: the source of every random draw; same seed, same samples. With neither, a
            fresh seed is drawn and reported in the result.
        y: class label(s) passed to the model (int, or a tensor of shape (n,)); guidance uses it.
        x0_hook: applied to x0_hat at every step (e.g. :func:`scoregen.clip_x0`), via :class:`~scoregen.X0Hook`.
        progress: show a progress bar (None: only on a terminal).
        options: the sampler's own options, e.g. ``steps``, ``variance``, ``eta``, ``levels``.
    """
    name, fn = _resolve(sampler)
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - sampler_options(fn))
        if unknown:
            raise ValueError(f"sampler {name!r} has no option(s) {unknown}; its options are {sorted(sampler_options(fn))}")
    if not model.shape:
        raise ValueError("the model does not declare its sample shape; give it a `shape` (e.g. NetworkScoreModel(..., shape=(2,)))")
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        generator = torch.Generator(device).manual_seed(seed)
    if isinstance(y, int):
        y = torch.full((int(n),), y, dtype=torch.long, device=device)
    elif y is not None:
        y = torch.as_tensor(y, device=device)
        if y.shape != (int(n),):
            raise ValueError(f"y must be an int or a tensor of shape (n,) = ({n},), got shape {tuple(y.shape)}")

    counted = _Counted(model if x0_hook is None else X0Hook(model, x0_hook))
    z = torch.randn((int(n), *model.shape), generator=generator, device=device, dtype=dtype)
    with torch.no_grad():
        start = time.perf_counter()
        x = fn(counted, z, generator=generator, y=y, callback=callback, progress=progress, **options)
        wall = time.perf_counter() - start
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            f"sampler {name!r} produced NaN or inf after {counted.nfe} model evaluations: check that the model "
            "returns finite values at the levels this sampler visits, and that the step size suits it "
            "(more steps, or a smaller step_lr for langevin)"
        )
    return SampleResult(x, counted.nfe, wall, name, seed, dict(options))
