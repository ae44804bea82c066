"""Other pipelines' denoisers as scoregen score models (the reverse of :mod:`scoregen.interop.export`).

k-diffusion (Crowson) and EDM (Karras et al. 2022) describe every model as a denoiser ``D(x, sigma)``:
``x = x0 + sigma * n`` in variance-exploding coordinates, ``sigma`` a tensor of shape ``(B,)``, and
``D`` the estimate of x0. k-diffusion's wrappers put other models in that form (``VDenoiser``,
``DiscreteEpsDDPMDenoiser``, ``CompVisDenoiser``: for a DDPM eps-network the input is scaled by
``c_in = 1 / sqrt(sigma^2 + 1)`` and sigma maps to the network's time label by interpolating log sigma
over its trained levels). :func:`from_denoiser` turns any such ``D`` into a :class:`~scoregen.ScoreModel`,
so every scoregen sampler and guidance transform runs on it.

EDM's networks come in two forms, both accepted: the preconditioned denoiser (an EDM ``*Precond`` module, or
:func:`scoregen.interop.edm.load_edm` for a snapshot file), and the raw network ``F(c_in x, c_noise, labels)``
that EDM's ``EDMPrecond`` wraps; for the latter pass ``sigma_data`` and :func:`from_denoiser` applies EDM's
preconditioning itself (:func:`edm_preconditioned`). Conditional EDM networks take one-hot labels: pass
``label_map=one_hot(num_classes)`` so that scoregen's integer labels ``y`` of shape (B,) reach them as such.

A DDPM-style ``eps(x_t, t)`` callable with its schedule needs no adapter here: that is
``NetworkScoreModel(fn, schedule, "eps", shape=...)`` (``time="fractional"`` for networks that take
fractional labels), and :func:`scoregen.interop.export.eps_fn` is its inverse.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_int, check_real
from ..models import Level, ScoreModel, _col, check_level, network_input
from ..schedules import ContinuousVE

__all__ = ["DenoiserScoreModel", "from_denoiser", "edm_preconditioned", "one_hot"]


def one_hot(num_classes: int) -> Callable[[Tensor], Tensor]:
    """A ``label_map`` for :func:`from_denoiser`: integer labels ``y`` of shape (B,) in [0, num_classes) to
    one-hot rows of shape (B, num_classes) in float32 (what EDM's conditional networks take as
    ``class_labels``). A label outside the range is a ValueError naming it."""
    num_classes = check_int("num_classes", num_classes, 1)

    def to_one_hot(y: Tensor) -> Tensor:
        if not isinstance(y, Tensor) or y.ndim != 1 or y.dtype.is_floating_point or y.is_complex():
            got = f"shape {tuple(y.shape)} of {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"one_hot({num_classes}) maps integer class labels of shape (B,), got {got}")
        if y.numel() and not (0 <= int(y.min()) and int(y.max()) < num_classes):
            raise ValueError(f"class labels must lie in [0, {num_classes - 1}] for this {num_classes}-class network, "
                             f"got labels from {int(y.min())} to {int(y.max())}")
        return F.one_hot(y.long(), num_classes).to(torch.float32)

    to_one_hot.__name__ = f"one_hot_{num_classes}"
    return to_one_hot


def edm_preconditioned(network: Callable[..., Tensor], sigma_data: float) -> Callable[..., Tensor]:
    """EDM's denoiser around a raw network ``F`` (Karras et al. 2022, Table 1, "Ours"):
    ``D(x, sigma, *labels) = c_skip x + c_out F(c_in x, c_noise, *labels)`` with ``s`` = sigma, ``sd`` =
    ``sigma_data``, ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``,
    ``c_in = 1 / sqrt(s^2 + sd^2)``, ``c_noise = log(s) / 4``.

    ``F`` receives ``c_in x`` shaped like x and ``c_noise`` of shape (B,) (EDM's networks embed it as a real
    time label); any further arguments (the label) are passed on unchanged. sigma has shape (B,).
    """
    if not callable(network):
        raise TypeError(f"network must be callable as F(c_in x, c_noise), got {type(network).__name__}")
    sigma_data = check_real("sigma_data", sigma_data, 0.0, lo_open=True)
    sd2 = sigma_data ** 2

    def denoiser(x: Tensor, sigma: Tensor, *args, **kwargs) -> Tensor:
        s = _col(sigma, x)
        c_skip, c_out, c_in = sd2 / (s ** 2 + sd2), s * sigma_data / (s ** 2 + sd2).sqrt(), 1 / (s ** 2 + sd2).sqrt()
        out = network(c_in * x, sigma.log() / 4, *args, **kwargs)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the network returned {got}, expected a tensor shaped like its input {tuple(x.shape)}")
        return c_skip * x + c_out * out

    denoiser.__name__ = f"edm_preconditioned({getattr(network, '__name__', type(network).__name__)})"
    return denoiser


class DenoiserScoreModel(ScoreModel):
    """A denoiser ``D(x, sigma) -> x0_hat`` trained on VE levels ``[sigma_min, sigma_max]``, as a score model.

    A query ``eps(x, sigma, m)`` at the caller's level ``x = m x0 + sigma eps`` is answered by log-SNR
    matching, as :class:`~scoregen.NetworkScoreModel` does: the VE level with the same log-SNR is
    ``s = sigma / m`` and the VE state ``x / m``; ``s`` is clamped to ``[sigma_min, sigma_max]`` (a level
    outside the trained range is answered at its nearest end, so ``sigma = 0`` is answered at ``sigma_min``)
    and ``eps = (x / m - D(x / m, s)) / s``. ``D`` receives ``s`` as a tensor of shape ``(B,)`` in x's dtype,
    and the class label ``y`` (after ``label_map``, when given) as ``D(x, s, y)`` or, with ``label_kwarg``, as
    ``D(x, s, **{label_kwarg: y})``.

    ``schedule`` is ``ContinuousVE(sigma_min, sigma_max, t_min=0)``: samplers' default grids run from
    sigma_max down to sigma_min, geometrically. ``D`` gets its own copy of the input (:attr:`protects_input`).
    """

    protects_input = True

    def __init__(self, denoiser: Callable[..., Tensor], shape: tuple[int, ...], sigma_min: float, sigma_max: float,
                 *, label_kwarg: Optional[str] = None, label_map: Optional[Callable[[Tensor], Tensor]] = None):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable as D(x, sigma), got {type(denoiser).__name__}")
        sigma_min = check_real("sigma_min", sigma_min, 0.0, lo_open=True)
        sigma_max = check_real("sigma_max", sigma_max, 0.0, lo_open=True)
        if not sigma_max > sigma_min:
            raise ValueError(f"need finite sigma_max > sigma_min > 0, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
        if label_map is not None and not callable(label_map):
            raise TypeError(f"label_map must be callable as label_map(y), got {type(label_map).__name__}")
        self.denoiser, self.shape, self.label_kwarg = denoiser, tuple(int(s) for s in shape), label_kwarg
        self.label_map = label_map
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.schedule = ContinuousVE(sigma_min, sigma_max, t_min=0.0)

    def ve_sigma(self, x: Tensor, sigma: Level, m: Level = 1.0) -> Tensor:
        """The VE sigma the denoiser is queried at, clamped to the trained range, shape (B,) in x's dtype."""
        check_level(sigma, m, x)
        if isinstance(sigma, Tensor) or isinstance(m, Tensor):
            s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device) / torch.as_tensor(m, dtype=x.dtype, device=x.device)
            return s.clamp(self.sigma_min, self.sigma_max).expand(x.shape[0])
        return x.new_full((x.shape[0],), min(max(sigma / m, self.sigma_min), self.sigma_max))

    def eps(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        s = self.ve_sigma(x, sigma, m)
        x_ve = x if not isinstance(m, Tensor) and m == 1.0 else x / _col(m, x)
        d_in = network_input(x, x_ve, read_after=True)  # eps below reads x_ve: D may write to its own copy only
        if y is not None and self.label_map is not None:
            y = self.label_map(y)
        if y is None:
            out = self.denoiser(d_in, s)
        elif self.label_kwarg is None:
            out = self.denoiser(d_in, s, y)
        else:
            out = self.denoiser(d_in, s, **{self.label_kwarg: y})
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the denoiser returned {got}, expected a tensor shaped like its input {tuple(x.shape)}")
        return (x_ve - out) / _col(s, x)

    def __repr__(self) -> str:
        name = getattr(self.denoiser, "__name__", type(self.denoiser).__name__)
        return f"DenoiserScoreModel({name}, shape={self.shape}, sigma=[{self.sigma_min:g}, {self.sigma_max:g}])"


def from_denoiser(denoiser: Callable[..., Tensor], shape: tuple[int, ...], sigma_min: float, sigma_max: float,
                  *, label_kwarg: Optional[str] = None, label_map: Optional[Callable[[Tensor], Tensor]] = None,
                  sigma_data: Optional[float] = None) -> DenoiserScoreModel:
    """Wrap a k-diffusion / EDM denoiser ``D(x, sigma) -> x0_hat`` (VE coordinates) as a scoregen score model.

    Args:
        denoiser: ``D(x, sigma[, y])`` with x of shape ``(B, *shape)``, ``x = x0 + sigma * n``, sigma of
            shape ``(B,)``; e.g. a ``k_diffusion.external`` wrapper or :func:`~scoregen.interop.export.denoiser`.
        shape: the event shape of one sample, e.g. ``(3, 32, 32)``.
        sigma_min, sigma_max: the trained VE range (EDM: 0.002, 80; a DDPM model wrapped by
            ``DiscreteEpsDDPMDenoiser``: its ``sigma_min``, ``sigma_max``); queries are clamped to it.
        label_kwarg: pass a class label as this keyword (k-diffusion wrappers take ``**kwargs``) instead of
            as the third positional argument.
        label_map: applied to the integer labels ``y`` (shape (B,)) before they reach the denoiser, e.g.
            :func:`one_hot` ``(num_classes)`` for EDM's conditional networks, which take one-hot rows.
        sigma_data: when given, ``denoiser`` is not a denoiser but EDM's raw network
            ``F(c_in x, c_noise[, label])``, and the model's denoiser is EDM's preconditioning of it,
            ``D = c_skip x + c_out F`` (:func:`edm_preconditioned`; EDM trains with sigma_data = 0.5).

    Returns:
        a :class:`DenoiserScoreModel` with ``eps = (x - D(x, sigma)) / sigma`` for VE callers and log-SNR
        matching (input ``x / m``, level ``sigma / m``) for VP callers.
    """
    if sigma_data is not None:
        denoiser = edm_preconditioned(denoiser, sigma_data)
    return DenoiserScoreModel(denoiser, shape, sigma_min, sigma_max, label_kwarg=label_kwarg, label_map=label_map)
