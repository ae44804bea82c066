"""scoregen score models as plain functions for other pipelines.

Every function here turns a :class:`~scoregen.ScoreModel` into a plain callable ``f(x, level, y=None)``:

* :func:`score_fn`  ``grad_x log p(x_level)``,
* :func:`eps_fn`    the noise eps (a DDPM-style ``eps(x, t)`` network),
* :func:`denoiser`  ``D(x, sigma) = x0_hat``, the k-diffusion / EDM denoiser.

``x`` is a batch of shape ``(B, *model.shape)`` or one unbatched sample of shape ``model.shape`` (the
shape ``torch.func.vmap`` hands a function mapped over a batch; a model whose ``shape`` is ``()`` is
always queried batched). The level is a Python float (one level for all), a 0-d tensor, or a tensor of
shape ``(B,)`` (one level per sample). What the level means is the ``convention``:

* ``"ve"``: ``level = sigma`` in variance-exploding coordinates ``x = x0 + sigma * eps`` (NCSN, score-SDE VE,
  k-diffusion and EDM).
* ``"vp"``: ``level = t``, a time label of a variance-preserving schedule (by default the model's own;
  any other with ``schedule=``), in the coordinates ``x = m_t * x0 + sigma_t * eps`` with
  ``m_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``. Discrete schedules take their own labels
  (``DiscreteVP(..., first_index=1)``: 1..T, ``first_index=0``: diffusers' 0..T-1) and fractional labels
  (log-SNR interpolated); ``ContinuousVP`` takes t in [0, 1].

The functions are differentiable in ``x`` with ``torch.autograd`` and with ``torch.func`` (``grad``,
``vmap``, ``jacrev``, ...), and ``vmap`` may map over per-sample levels too (for networks through
:class:`~scoregen.models.LevelMap`, for exact targets directly). The level itself is data, not a
differentiable input. Guidance transforms (:mod:`scoregen.guidance`) take their classifier gradient
with ``torch.autograd`` internally, so they work eagerly but not under ``torch.func`` transforms.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..models import Level, ScoreModel, _col, _on_host
from ..schedules import Schedule

__all__ = ["score_fn", "eps_fn", "denoiser", "CONVENTIONS"]

Convention = Literal["ve", "vp"]
CONVENTIONS = ("ve", "vp")

#: ``f(x, level, y=None) -> Tensor`` shaped like x.
LevelFn = Callable[..., Tensor]


def score_fn(model: ScoreModel, convention: Convention = "ve", *, y: Optional[Tensor] = None,
             schedule: Optional[Schedule] = None) -> LevelFn:
    """The model's score as a plain function ``score(x, level, y=None) -> grad_x log p_level(x)``.

    Args:
        model: any score model (a network adapter, an exact target, a guided model).
        convention: ``"ve"`` (level = sigma, ``x = x0 + sigma eps``) or ``"vp"`` (level = time t of a VP
            schedule, ``x = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``); see the module docstring.
        y: default class label for conditional models; a ``y`` passed to the call overrides it.
        schedule: the VP schedule whose times the ``"vp"`` level is (default: ``model.schedule``).

    Returns:
        ``score(x, level, y=None)``: x of shape ``(B, *shape)`` (or ``shape``), level a float, a 0-d
        tensor or shape ``(B,)``; returns a tensor shaped like x, in the same coordinates as x
        (``-eps / sigma`` with the sigma of the convention). sigma must be > 0 unless the model has a
        clean score (exact targets do).
    """
    return _level_fn(model, convention, schedule, y, "score", "grad_x log p(x)")


def eps_fn(model: ScoreModel, convention: Convention = "ve", *, y: Optional[Tensor] = None,
           schedule: Optional[Schedule] = None) -> LevelFn:
    """The model's noise prediction as a plain function ``eps(x, level, y=None)``, like an eps-network.

    Same arguments and conventions as :func:`score_fn`; returns ``eps`` with ``x = m x0 + sigma eps``
    (``-sigma * score``). With ``convention="vp"`` and a discrete schedule this is a DDPM eps-network
    ``eps(x_t, t)``: what ``NetworkScoreModel(fn, schedule, "eps")`` and k-diffusion's
    ``DiscreteEpsDDPMDenoiser(fn, alphas_cumprod, quantize)`` (with a ``first_index=0`` schedule, whose
    labels are positions in ``alphas_cumprod``) take.
    """
    return _level_fn(model, convention, schedule, y, "eps", "eps")


def denoiser(model: ScoreModel, *, y: Optional[Tensor] = None) -> LevelFn:
    """The model as a k-diffusion / EDM denoiser ``D(x, sigma, y=None) -> x0_hat``.

    ``x = x0 + sigma * n`` is in VE coordinates; ``D = x - sigma * eps(x, sigma)`` is the posterior mean
    of x0 (Karras et al. 2022), so k-diffusion's ``to_d(x, sigma, D) = (x - D) / sigma`` is eps. sigma is
    a float, a 0-d tensor or shape ``(B,)`` (k-diffusion passes ``sigma * x.new_ones(B)``); ``D(x, 0) = x``.
    A VP-trained network is queried by log-SNR matching, i.e. at input ``x / sqrt(1 + sigma^2)``: the
    ``c_in`` of k-diffusion's ``DiscreteEpsDDPMDenoiser``.
    """

    def D(x: Tensor, sigma: Union[float, Tensor], y: Optional[Tensor] = y) -> Tensor:
        xb, unbatched = _batched(model, x)
        sigma = _per_sample(sigma, xb, unbatched)
        out = xb - _col(sigma, xb) * model.eps(xb, sigma, 1.0, y)
        return out[0] if unbatched else out

    D.__doc__ = f"x0_hat = x - sigma * eps of {model!r}; x = x0 + sigma * n of shape (B, *shape) or shape."
    return D


# ----------------------------------------------------------------------------- helpers

_LEVEL_DOC = {"ve": "level = sigma, x = x0 + sigma eps", "vp": "level = time t of a VP schedule, x = m_t x0 + sigma_t eps"}


def _level_fn(model: ScoreModel, convention: str, schedule: Optional[Schedule], y: Optional[Tensor],
              method: str, what: str) -> LevelFn:
    """``f(x, level, y)``: the model's ``method`` ("score" or "eps") at the convention's level."""
    to_level = _level_map(model, convention, schedule)
    query = getattr(model, method)

    def f(x: Tensor, level: Union[float, Tensor], y: Optional[Tensor] = y) -> Tensor:
        xb, unbatched = _batched(model, x)
        sigma, m = to_level(_per_sample(level, xb, unbatched))
        out = query(xb, sigma, m, y)
        return out[0] if unbatched else out

    f.__doc__ = f"{what} of {model!r} at level ({_LEVEL_DOC[convention]}); x of shape (B, *shape) or shape."
    return f


def _level_map(model: ScoreModel, convention: str, schedule: Optional[Schedule]) -> Callable[[Level], tuple[Level, Level]]:
    """level -> (sigma, m) in the caller's coordinates; refuses an unknown convention up front."""
    if convention not in CONVENTIONS:
        raise ValueError(
            f"unknown convention {convention!r}: use 've' (the level is sigma, x = x0 + sigma * eps) or "
            "'vp' (the level is a time t of a variance-preserving schedule, x = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps)"
        )
    if convention == "ve":
        if schedule is not None:
            raise ValueError("schedule= only applies to convention='vp' (in 've' the level is sigma itself)")
        return lambda sigma: (sigma, 1.0)
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    if schedule is None or not getattr(schedule, "variance_preserving", False):
        raise ValueError(
            f"convention='vp' takes times of a variance-preserving schedule, but {'the model has none' if schedule is None else repr(schedule) + ' is variance exploding'}; "
            "pass schedule=DiscreteVP.linear() or ContinuousVP(), or use convention='ve'"
        )

    def host(t: Tensor) -> tuple[Tensor, Tensor]:
        labels = t.detach().cpu().numpy().astype(np.float64)
        m, sigma = schedule.m(labels), schedule.sigma(labels)  # its own coordinates (sub-VP: m^2 + sigma^2 < 1)
        return tuple(torch.as_tensor(np.asarray(a, dtype=np.float64), device=t.device) for a in (sigma, m))

    def vp(t: Level) -> tuple[Level, Level]:
        if isinstance(t, Tensor):
            return _on_host(host, t)  # works under torch.func.vmap too
        m, sigma = schedule.m(t), schedule.sigma(t)
        return float(sigma), float(m)

    return vp


def _batched(model: ScoreModel, x: Tensor) -> tuple[Tensor, bool]:
    """x as a batch (B, *shape), and whether it came unbatched (shape ``model.shape``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor of shape (batch, *{tuple(model.shape)}), got {type(x).__name__}")
    shape = tuple(getattr(model, "shape", ()) or ())
    if shape and tuple(x.shape) == shape:
        return x.unsqueeze(0), True
    if shape and tuple(x.shape[1:]) != shape:
        raise ValueError(f"x must have shape (batch, *{shape}) or {shape} for this model, got {tuple(x.shape)}")
    if x.ndim == 0:
        raise ValueError("x must have a batch dimension: shape (batch, ...)")
    return x, False


def _per_sample(level: Union[float, Tensor], x: Tensor, unbatched: bool) -> Level:
    """A float stays a float (the models' fast path); a tensor level becomes shape (B,)."""
    if isinstance(level, Tensor):
        if level.ndim == 0:
            return level.expand(x.shape[0])
        if unbatched or level.shape != x.shape[:1]:
            want = "a scalar (0-d) level for one unbatched sample" if unbatched else f"a float, a 0-d tensor or shape (batch,) = {tuple(x.shape[:1])}"
            raise ValueError(f"the noise level must be {want}, got shape {tuple(level.shape)}")
        return level
    if isinstance(level, (bool, str)) or not isinstance(level, (int, float, np.number)):
        raise TypeError(f"the noise level must be a float or a tensor, got {type(level).__name__}")
    return float(level)
