"""The score-model interface every sampler talks to, and its wrappers.

A :class:`ScoreModel` answers, for a batch ``x`` of shape ``(B, *shape)`` at a noise level given in the
*caller's* coordinates ``x = m * x0 + sigma * eps``:

* ``eps(x, sigma, m)``   the noise,
* ``score(x, sigma, m)`` ``grad_x log p(x) = -eps / sigma``  (the identity everything rests on),
* ``x0(x, sigma, m)``    the denoised estimate ``(x - sigma * eps) / m``.

``sigma`` and ``m`` are Python floats (one level for the whole batch: the fast path samplers use) or
tensors of shape ``(B,)`` (one level per sample). VE callers leave ``m = 1``; VP callers pass
``m = sqrt(abar)``, ``sigma = sqrt(1 - abar)``. eps is the same in every coordinate system, so a model
trained in one family answers queries from the other.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ._checks import check_real
from .schedules import Schedule, ve_levels

Level = Union[float, Tensor]
Parameterization = Literal["eps", "score", "x0", "v"]
PARAMETERIZATIONS = ("eps", "score", "x0", "v")

__all__ = [
    "ScoreModel",
    "NetworkScoreModel",
    "NetworkClassifier",
    "LevelMap",
    "ModelTransform",
    "prepare_levels",
    "X0Hook",
    "clip_x0",
    "dynamic_threshold",
    "to_eps",
    "from_eps",
]


def _col(v: Level, x: Tensor) -> Level:
    """A per-sample level of shape (B,) as (B, 1, ..., 1) so it broadcasts against x; floats pass through."""
    if isinstance(v, Tensor):
        if v.ndim == 0:
            return v.to(x)
        if v.shape != x.shape[:1]:
            raise ValueError(f"a per-sample noise level must have shape (batch,) = {tuple(x.shape[:1])}, got {tuple(v.shape)}")
        return v.to(x).reshape(-1, *([1] * (x.ndim - 1)))
    return v


def check_like(out, like: Tensor, what: str) -> Tensor:
    """``out`` if it is a tensor with exactly ``like``'s shape, dtype and device; else a ValueError naming ``what``.

    Only metadata is read (no computation, no device sync). Samplers update their state in place with
    what a model returns, so a broadcastable shape, another dtype (silently cast) or another device (the
    meta device makes the update a no-op) would give wrong samples instead of an error.
    """
    if not isinstance(out, Tensor):
        raise ValueError(f"{what} must return a tensor with x's shape, dtype and device: expected a Tensor, "
                         f"got {type(out).__name__}")
    wrong = [f"{k} {want}, got {got}" for k, want, got in (("shape", tuple(like.shape), tuple(out.shape)),
                                                            ("dtype", like.dtype, out.dtype),
                                                            ("device", like.device, out.device)) if want != got]
    if wrong:
        raise ValueError(f"{what} must return a tensor with x's shape, dtype and device: expected " + "; expected ".join(wrong))
    return out


def network_input(x: Tensor, x_in: Tensor, read_after: bool) -> Tensor:
    """The tensor to hand a network for its input ``x_in`` (computed from the caller's ``x``): a network may write
    to its input (in-place activations, ``x.mul_``), so a copy when ``x_in`` is the caller's own tensor (the
    sampler's state, when no rescaling was needed) or is read again after the call (to convert an x0 or v output
    to eps); else ``x_in`` itself, a fresh tensor nobody reads again. At most one copy per evaluation."""
    return x_in.clone() if read_after or x_in is x else x_in


def class_labels(y, batch: int, device: Union[str, torch.device, None], num_classes: Optional[int] = None,
                 who: str = "") -> Tensor:
    """Class labels as an int64 tensor of shape (batch,), from an int or an integer tensor/array of shape (), (1,) or (batch,).

    Refuses bools, floats (``int(2.7)`` would quietly be class 2) and a wrong length; with ``num_classes``,
    also a class outside ``0..num_classes - 1`` (reading the values: one host sync). ``who`` prefixes the message.
    """
    if isinstance(y, (bool, np.bool_)) or (isinstance(y, Tensor) and y.dtype == torch.bool) or \
            (isinstance(y, np.ndarray) and y.dtype == np.bool_):
        raise ValueError(f"{who}class labels must be integers, got booleans")
    if isinstance(y, numbers.Integral):
        labels = torch.tensor(int(y), device=device)
    else:
        try:
            labels = torch.as_tensor(y, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{who}class labels must be an int or an integer tensor of shape (batch,), got {type(y).__name__}") from None
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"{who}class labels must be integers, got dtype {labels.dtype}"
                             + (f" ({labels.item()!r})" if labels.numel() == 1 else ""))
    labels = labels.long().reshape(-1)
    if labels.numel() not in (1, batch):
        raise ValueError(f"{who}class labels must be one label or one per sample, shape ({batch},), got {labels.numel()} labels")
    if num_classes is not None:
        outside = (labels < 0) | (labels >= num_classes)
        if bool(outside.any()):
            raise ValueError(f"{who}class labels must be in 0..{num_classes - 1}, got {labels[outside].unique()[:10].tolist()}")
    return labels.expand(batch)


class _OnHost(torch.autograd.Function):
    """Run ``fn`` on the concrete values of noise-level tensors, also under ``torch.func`` transforms.

    Levels are data for checks and float64 schedule arithmetic (numpy), never differentiated. Under
    ``torch.func.vmap`` a per-sample level is a batched tensor whose values Python cannot read; this
    Function's vmap rule hands ``fn`` the whole stack of levels at once instead. ``fn`` takes tensors of
    one shape and returns a tuple of tensors of that shape, elementwise; the outputs are not differentiable.
    """

    generate_vmap_rule = False

    @staticmethod
    def forward(fn, *levels):
        return tuple(fn(*levels))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.num_inputs = len(inputs)
        ctx.mark_non_differentiable(*output)

    @staticmethod
    def backward(ctx, *grads):
        return (None,) * ctx.num_inputs

    @staticmethod
    def vmap(info, in_dims, fn, *levels):
        moved = [v.movedim(d, 0) if d is not None else v.expand(info.batch_size, *v.shape) for v, d in zip(levels, in_dims[1:])]
        out = _OnHost.apply(fn, *moved)
        return out, (0,) * len(out)


def _on_host(fn: Callable[..., tuple], *levels: Tensor) -> tuple:
    """``fn(*levels)`` on the levels' values (broadcast to one shape first); see :class:`_OnHost`."""
    return _OnHost.apply(fn, *torch.broadcast_tensors(*levels))


def check_level(sigma: Level, m: Level, x: Tensor) -> None:
    """Refuse a level that is not finite with sigma >= 0 and m > 0, or a per-sample level not of shape (batch,)."""
    if isinstance(sigma, Tensor) or isinstance(m, Tensor):
        _col(sigma, x), _col(m, x)  # shape check
        device = (sigma if isinstance(sigma, Tensor) else m).device

        def check(s: Tensor, mm: Tensor) -> tuple:
            if not bool(torch.isfinite(s).all() & torch.isfinite(mm).all() & (s >= 0).all() & (mm > 0).all()):
                raise ValueError(f"a noise level needs finite sigma >= 0 and m > 0; got sigma={s}, m={mm}")
            return (s.new_zeros(s.shape),)

        _on_host(check, torch.as_tensor(sigma, device=device), torch.as_tensor(m, device=device))
    elif not (math.isfinite(sigma) and math.isfinite(m) and sigma >= 0 and m > 0):
        raise ValueError(f"a noise level needs finite sigma >= 0 and m > 0; got sigma={sigma}, m={m}")


def _require_positive(name: str, v: Level, why: str) -> None:
    def check(v: Tensor) -> tuple:
        if bool((v <= 0).any()):
            raise ValueError(f"{name} must be > 0 {why}; got {name}={v}")
        return (v.new_zeros(v.shape),)

    if isinstance(v, Tensor):
        _on_host(check, v)
    elif not v > 0:
        raise ValueError(f"{name} must be > 0 {why}; got {name}={v}")


def to_eps(out: Tensor, x: Tensor, m: Level, sigma: Level, parameterization: str) -> Tensor:
    """Convert a network output in ``parameterization`` at level (m, sigma) to eps.

    eps: as is; score: ``eps = -sigma * score``; x0: ``eps = (x - m x0) / sigma``;
    v (Salimans & Ho 2022, ``v = m eps - sigma x0``): ``eps = (sigma x + m v) / (m^2 + sigma^2)``.
    """
    m, sigma = _col(m, x), _col(sigma, x)
    if parameterization == "eps":
        return out
    if parameterization == "score":
        return -sigma * out
    if parameterization == "x0":
        return (x - m * out) / sigma
    if parameterization == "v":
        return (sigma * x + m * out) / (m * m + sigma * sigma)
    raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")


def from_eps(eps: Tensor, x: Tensor, m: Level, sigma: Level, parameterization: str) -> Tensor:
    """The inverse of :func:`to_eps`: express eps at level (m, sigma) in another parameterization."""
    m, sigma = _col(m, x), _col(sigma, x)
    if parameterization == "eps":
        return eps
    if parameterization == "score":
        return -eps / sigma
    if parameterization == "x0":
        return (x - sigma * eps) / m
    if parameterization == "v":
        x0 = (x - sigma * eps) / m
        return m * eps - sigma * x0
    raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")


def declared_bytes(model: object, dtype: torch.dtype) -> int:
    """What ``model`` declares one evaluation takes per sample (:meth:`ScoreModel.eval_bytes_per_sample`);
    0 for a duck-typed model that does not say."""
    declared = getattr(model, "eval_bytes_per_sample", None)
    return int(declared(dtype)) if callable(declared) else 0


class ScoreModel:
    """Base class: implement :meth:`eps`; ``score`` and ``x0`` follow from it.

    Attributes:
        shape: the event shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        schedule: the levels the model was trained on; samplers take their default grids from it.
    """

    shape: tuple[int, ...]
    schedule: Schedule
    #: True when evaluating the model never writes to the caller's ``x`` (it only reads it, and hands any code
    #: that might write, such as a network, a copy). :func:`scoregen.sample` gives a model that does not say so
    #: a copy of its state at every evaluation: samplers update their state in place.
    protects_input: bool = False

    def eps(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    #: True when the model also answers a reverse-step variance (:meth:`eps_and_variance`): a network with
    #: improved-diffusion's learned-range output channels.
    learned_variance: bool = False

    def eps_and_variance(self, x: Tensor, sigma: Level, m: Level = 1.0,
                         y: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """``(eps, v)`` from one evaluation: eps as :meth:`eps` answers it, and the learned variance weight ``v``
        in [0, 1], shaped like x, or None for a model without learned variance (:attr:`learned_variance`).

        ``v`` interpolates the variance of whatever reverse step t -> s the caller takes, in log space
        (Nichol & Dhariwal 2021, eq. 15): ``exp(v log beta_ts + (1 - v) log beta_tilde_ts)``
        (:func:`scoregen.variance.step_variance`); it does not depend on the caller's coordinates."""
        return self.eps(x, sigma, m, y), None

    def score(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        """``-eps / sigma``; sigma must be > 0 (the score of clean data is not defined by an eps model)."""
        _require_positive("sigma", sigma, "to turn eps into a score (score = -eps / sigma)")
        return self.eps(x, sigma, m, y) / -_col(sigma, x)

    def x0(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        """``(x - sigma eps) / m``; m must be > 0."""
        _require_positive("m", m, "to estimate x0 = (x - sigma * eps) / m")
        eps = self.eps(x, sigma, m, y)
        if not isinstance(sigma, Tensor) and not isinstance(m, Tensor):  # one pass (two with m != 1): samplers' fast path
            out = torch.add(x, eps, alpha=-sigma)
            return out if m == 1 else out.div_(m)
        return (x - _col(sigma, x) * eps) / _col(m, x)

    def eval_bytes_per_sample(self, dtype: torch.dtype) -> int:
        """Memory one evaluation holds per sample beyond its input, its result and its networks' activations, in
        bytes, for :func:`scoregen.sample`'s batch sizing (which measures the activations of any ``torch.nn.Module``
        it finds itself). 0 here; override it when a model allocates temporaries much larger than a sample (an exact
        mixture's (batch, components) tables), so that a default batch stays within its memory budget."""
        return 0

    def prepare(self, sigma, m=1.0) -> None:
        """Declare the levels a sampler is about to query, before its loop: ``sigma`` a sequence of noise stds and
        ``m`` a sequence of the same length or one number, in the caller's coordinates (``x = m x0 + sigma eps``).

        A no-op here. A model with per-level lookups (:class:`NetworkScoreModel`'s log-SNR matching) overrides it
        to map the whole grid in one vectorised operation instead of one level at a time inside the loop. It must
        not change any answer: a model answers exactly the same with or without it. Samplers call it through
        :func:`prepare_levels`, which also accepts models without the method."""

    @property
    def sigma_range(self) -> tuple[float, float]:
        """(largest, smallest) VE noise std ``sigma / m`` of the trained levels: Langevin's default range."""
        return ve_levels(self.schedule)

    @property
    def sigma_max_source(self) -> str:
        """Where ``sigma_range``'s largest value comes from, in words (Langevin's grid reports it)."""
        prop = type(self).sigma_range
        if prop is ScoreModel.sigma_range:
            return "the largest VE noise level sigma/m of the model's schedule (no data scale known)"
        return f"{type(self).__name__}.sigma_range"


def innermost(model: object) -> object:
    """The model at the bottom of a stack of :class:`ModelTransform` s (guidance, hooks, the sampler's guard)."""
    while isinstance(model, ModelTransform):
        model = model.model
    return model


def prepare_levels(model: object, sigma, m=1.0) -> None:
    """``model.prepare(sigma, m)`` (:meth:`ScoreModel.prepare`) when the model has that method; nothing otherwise
    (a duck-typed model with ``eps`` only). Samplers call it once with their grid, before their loop."""
    prepare = getattr(model, "prepare", None)
    if callable(prepare):
        prepare(sigma, m)


class LevelMap:
    """Maps a caller's level (sigma, m) onto a schedule's time label by matching log-SNR.

    ``time="nearest"``: the nearest trained level; ``"fractional"``: the exact fractional label, for
    networks that accept it; continuous schedules are always exact. Returns the network's input
    ``x * m_model / m``, the label ``t`` as a float32 tensor (float64 for float64 inputs) of shape (B,)
    in the schedule's own convention, and the model's own ``(m_t, sigma_t)``.
    """

    def __init__(self, schedule: Schedule, time: Literal["nearest", "fractional"] = "nearest"):
        if time not in ("nearest", "fractional"):
            raise ValueError(f"time must be 'nearest' or 'fractional', got {time!r}")
        self.schedule, self.time = schedule, time
        self._cache: dict[tuple[float, float], tuple[float, float, float, float]] = {}

    #: The most levels the cache holds; a query that misses a full cache empties it first.
    CACHE_LIMIT = 65536

    def _model_time(self, log_snr):
        if self.time == "nearest":
            return self.schedule.nearest_time(log_snr)
        return self.schedule.t_from_log_snr(log_snr)

    def _tensor_levels(self, sigma: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(t, m_t, sigma_t) as float64 tensors shaped like the caller's per-sample levels (any shape)."""
        sig, mm = sigma.detach().cpu().numpy(), m.detach().cpu().numpy()
        with np.errstate(divide="ignore"):
            t = np.asarray(self._model_time(2.0 * (np.log(mm) - np.log(sig))), dtype=np.float64)
        m_t, sigma_t = self.schedule.m(t), self.schedule.sigma(t)  # its own coordinates (sub-VP is neither VP nor VE)
        return tuple(torch.as_tensor(np.asarray(a, dtype=np.float64), device=sigma.device) for a in (t, m_t, sigma_t))

    def _scalar(self, sigma: float, m: float) -> tuple[float, float, float, float]:
        """(t, m_t, sigma_t, input scale) for one caller level; cached, since samplers revisit few levels."""
        key = (sigma, m)
        hit = self._cache.get(key)
        if hit is None:
            check_level(sigma, m, None)
            log_snr = 2.0 * (math.log(m) - math.log(sigma)) if sigma > 0 else math.inf
            t = float(self._model_time(log_snr))
            m_t, sigma_t = self.schedule.m(t), self.schedule.sigma(t)
            hit = (t, m_t, sigma_t, m_t / m)
            if len(self._cache) > self.CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def prepare(self, sigma, m=1.0) -> None:
        """Map the caller levels ``(sigma[i], m[i])`` (``m`` a sequence or one number) into the cache in one
        vectorised pass, so that the sampler's loop only looks them up.

        The entries are bit-identical to what :meth:`_scalar` computes one level at a time: the log-SNR with the same
        ``math.log`` per level, then the same numpy functions (``nearest_time`` or ``t_from_log_snr``, the schedule's
        ``m`` and ``sigma``) on arrays, which apply the same element-wise operations as on the 0-d arrays
        of the scalar path. Levels already cached, or invalid (not finite, sigma < 0, m <= 0: their query raises
        the usual error), are skipped; at most :attr:`CACHE_LIMIT` levels are mapped (the first ones)."""
        sig = np.asarray(sigma, dtype=np.float64).reshape(-1)
        mm = np.broadcast_to(np.asarray(m, dtype=np.float64), sig.shape) if np.ndim(m) == 0 else \
            np.asarray(m, dtype=np.float64).reshape(-1)
        if mm.shape != sig.shape:
            raise ValueError(f"prepare: m must be one number or one per sigma ({sig.size}), got {mm.size}")
        keys = [key for key in dict.fromkeys(zip(sig.tolist(), mm.tolist()))
                if key not in self._cache and math.isfinite(key[0]) and math.isfinite(key[1]) and key[0] >= 0 and key[1] > 0]
        if not keys:
            return
        if len(self._cache) + len(keys) > self.CACHE_LIMIT:
            self._cache.clear()
            keys = keys[:self.CACHE_LIMIT]
        # exactly _scalar's log-SNR, one math.log per level (numpy's vectorised log may round differently)
        log_snr = np.array([2.0 * (math.log(mk) - math.log(sk)) if sk > 0 else math.inf for sk, mk in keys])
        t = np.asarray(self._model_time(log_snr), dtype=np.float64)
        m_t, sigma_t = self.schedule.m(t), self.schedule.sigma(t)
        m_t, sigma_t = np.asarray(m_t).reshape(-1), np.asarray(sigma_t).reshape(-1)
        for (sk, mk), ti, mti, sti in zip(keys, t.tolist(), m_t.tolist(), sigma_t.tolist()):
            self._cache[(sk, mk)] = (ti, mti, sti, mti / mk)

    def __call__(self, x: Tensor, sigma: Level, m: Level = 1.0) -> tuple[Tensor, Tensor, Level, Level]:
        """``(x_in, t, m_t, sigma_t)`` for the network, at the caller's level."""
        label_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # bfloat16 would round 999 to 1000
        if isinstance(sigma, Tensor) or isinstance(m, Tensor):
            check_level(sigma, m, x)
            device = (sigma if isinstance(sigma, Tensor) else m).device
            sig = torch.as_tensor(sigma, dtype=torch.float64, device=device).expand(x.shape[0])
            mm = torch.as_tensor(m, dtype=torch.float64, device=device).expand(x.shape[0])
            t, m_t, sigma_t = _on_host(self._tensor_levels, sig, mm)  # works under torch.func.vmap too
            as_t = lambda a: a.to(dtype=x.dtype, device=x.device)  # noqa: E731
            m_t, sigma_t = as_t(m_t), as_t(sigma_t)
            return x * _col(m_t / as_t(mm), x), t.to(dtype=label_dtype, device=x.device), m_t, sigma_t
        t, m_t, sigma_t, scale = self._scalar(float(sigma), float(m))
        x_in = x if scale == 1.0 else x * scale
        return x_in, torch.full((x.shape[0],), t, dtype=label_dtype, device=x.device), m_t, sigma_t


class NetworkScoreModel(ScoreModel):
    """Any network ``net(x, t[, y])`` trained on ``schedule`` with output ``parameterization``, as a score model.

    A query at caller level (m, sigma) is answered by matching log-SNR (:class:`LevelMap`): the level
    maps to the model's time label ``t`` (``time="nearest"`` or ``"fractional"``), the input is rescaled
    by ``m_model / m`` and the output converted to eps.

    This is also how to bring any ``eps(x, t)`` callable: ``NetworkScoreModel(fn, DiscreteVP.linear())``.

    The network may write to its input (in-place activations) without harm: it never gets the caller's ``x``
    itself (a copy when no rescaling is needed) nor an input read again after the call (x0 and v outputs are
    converted to eps with it), so the model :attr:`protects_input`.

    ``data_sigma_max``: the training data's largest pairwise distance (NCSNv2's technique 1), which becomes the
    largest value of :attr:`sigma_range` (Langevin's default sigma_max); by default the network's own
    ``data_sigma_max`` attribute, which :func:`scoregen.load_checkpoint` sets from ``meta.data.sigma_max`` (recorded by
    :func:`scoregen.training.train`). Without it, sigma_range is the trained levels' range.
    """

    protects_input = True

    def __init__(
        self,
        net: Callable[..., Tensor],
        schedule: Schedule,
        parameterization: Parameterization = "eps",
        *,
        shape: Optional[tuple[int, ...]] = None,
        time: Literal["nearest", "fractional"] = "nearest",
        data_sigma_max: Optional[float] = None,
        learned_variance: Optional[bool] = None,
    ):
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")
        self.net, self.schedule, self.parameterization = net, schedule, parameterization
        if learned_variance is None:  # a scoregen network says so itself (trained with objective "hybrid")
            learned_variance = bool(getattr(net, "learned_variance", False))
        self.learned_variance = bool(learned_variance)
        self.levels = LevelMap(schedule, time)
        self.shape = tuple(shape) if shape is not None else tuple(getattr(net, "shape", ()))
        if data_sigma_max is None:  # recorded at training (scoregen.train) and set by load_checkpoint
            data_sigma_max = getattr(net, "data_sigma_max", None)
        self.data_sigma_max = None if data_sigma_max is None else \
            check_real("data_sigma_max (the training data's largest pairwise distance)", data_sigma_max, 0.0, lo_open=True)

    @property
    def time(self) -> str:
        return self.levels.time

    def prepare(self, sigma, m=1.0) -> None:
        """Map every level of the sampler's grid onto the schedule at once (:meth:`LevelMap.prepare`): the first query
        at a new level otherwise costs a log-SNR match (tens of microseconds), a cached one a dictionary lookup."""
        self.levels.prepare(sigma, m)

    @property
    def sigma_range(self) -> tuple[float, float]:
        """(largest, smallest) VE noise std of the trained levels, Langevin's default range; with ``data_sigma_max``
        (the training data's largest pairwise distance, NCSNv2's technique 1) the largest is that distance, at most
        the trained maximum. A VP network's largest VE level (157 on DDPM's linear schedule) is far above the scale
        of data in [-1, 1]; Langevin started there needs hundreds of steps to come down."""
        high, low = super().sigma_range
        if self.data_sigma_max is not None and self.data_sigma_max > low:
            return min(self.data_sigma_max, high), low
        return high, low

    @property
    def sigma_max_source(self) -> str:
        base = super().sigma_range[0]
        if self.data_sigma_max is None or not self.data_sigma_max > super().sigma_range[1]:
            return ("the largest VE noise level sigma/m the network was trained on (no data scale recorded: a "
                    "checkpoint without meta.data.sigma_max; pass sigma_max to start nearer the data's scale)")
        if self.data_sigma_max > base:
            return (f"the largest VE noise level the network was trained on, below the training data's largest "
                    f"pairwise distance {self.data_sigma_max:.4g}")
        return "the training data's largest pairwise distance (NCSNv2 technique 1), recorded at training"

    def eps(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        return self.eps_and_variance(x, sigma, m, y)[0]

    def eps_and_variance(self, x: Tensor, sigma: Level, m: Level = 1.0,
                         y: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """With :attr:`learned_variance` the network returns twice x's channels (dim 1): its prediction, then
        improved-diffusion's variance value in [-1, 1], answered as the weight ``v = (value + 1) / 2``."""
        x_in, t, m_t, sigma_t = self.levels(x, sigma, m)
        net_in = network_input(x, x_in, read_after=self.parameterization in ("x0", "v"))
        out = self._call_net(net_in, t, y)
        want = (x.shape[0], 2 * x.shape[1], *x.shape[2:]) if self.learned_variance and x.ndim > 1 else tuple(x.shape)
        if not isinstance(out, Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            what = "twice its input's channels (prediction, then variance)" if self.learned_variance else \
                "a tensor shaped like its input"
            raise ValueError(f"the network returned {got}, expected {what}: {want}")
        v = None
        if self.learned_variance:
            out, value = out.chunk(2, dim=1)
            v = value.add(1.0).mul_(0.5)
        return to_eps(out, x_in, m_t, sigma_t, self.parameterization), v

    def _call_net(self, x: Tensor, t: Tensor, y: Optional[Tensor]) -> Tensor:
        """``net(x, t[, y])``; a caller in another dtype or on another device than the network's parameters (a float64
        sampler, a likelihood in float64, on a float32 network) has its input cast to the network's dtype and device,
        and the answer cast back."""
        param = self._parameter()
        if param is None or (param.dtype == x.dtype and param.device == x.device):
            return self.net(x, t) if y is None else self.net(x, t, y)
        x_net = x.to(device=param.device, dtype=param.dtype)
        t_net = t.to(device=param.device, dtype=torch.float64 if param.dtype == torch.float64 else torch.float32)
        out = self.net(x_net, t_net) if y is None else self.net(x_net, t_net, y.to(param.device))
        return out.to(device=x.device, dtype=x.dtype) if isinstance(out, Tensor) else out

    def _parameter(self) -> Optional[Tensor]:
        """The network's first floating-point parameter (its dtype and device are the network's), or None for a plain
        function. Found once: ``module.to(...)`` converts a parameter in place, so the one found keeps up."""
        if not hasattr(self, "_param"):
            params = self.net.parameters() if isinstance(self.net, torch.nn.Module) else ()
            self._param = next((p for p in params if p.is_floating_point()), None)
        return self._param

    def __repr__(self) -> str:
        extra = ", learned_variance=True" if self.learned_variance else ""
        return (f"NetworkScoreModel({type(self.net).__name__}, {self.schedule!r}, parameterization={self.parameterization!r}, "
                f"time={self.time!r}{extra})")


class NetworkClassifier:
    """A noise-conditional classifier network ``net(x, t) -> logits`` trained on ``schedule``, queried at
    the caller's level ``(x, sigma, m)`` like :class:`NetworkScoreModel`: the classifier signature that
    :class:`~scoregen.ClassifierGuidance` takes."""

    def __init__(self, net: Callable[..., Tensor], schedule: Schedule, *, time: Literal["nearest", "fractional"] = "nearest"):
        self.net, self.levels = net, LevelMap(schedule, time)

    def prepare(self, sigma, m=1.0) -> None:
        """Map the sampler's grid onto the schedule at once, as :meth:`NetworkScoreModel.prepare` does."""
        self.levels.prepare(sigma, m)

    def __call__(self, x: Tensor, sigma: Level, m: Level = 1.0) -> Tensor:
        x_in, t, _, _ = self.levels(x, sigma, m)
        return self.net(x_in, t)


class ModelTransform(ScoreModel):
    """A score model built from another one (guidance, x0 hooks): forwards shape, schedule, sigma_range.

    ``model`` is the wrapped model; ``role`` says what the transform is in an error message ("the guidance",
    "the x0 hook"), where :func:`scoregen.sample` names the part of a model stack that returned NaN or inf.
    """

    role = "the model transform"

    def __init__(self, model: ScoreModel):
        self.model = model

    @property
    def shape(self):  # type: ignore[override]
        return self.model.shape

    @property
    def schedule(self):  # type: ignore[override]
        return self.model.schedule

    @property
    def sigma_range(self) -> tuple[float, float]:
        return self.model.sigma_range

    @property
    def sigma_max_source(self) -> str:
        return getattr(self.model, "sigma_max_source", "the wrapped model's sigma_range")

    @property
    def learned_variance(self) -> bool:  # type: ignore[override]
        """The wrapped model's, when this transform passes it on (implements :meth:`eps_and_variance`)."""
        passes_on = type(self).eps_and_variance is not ModelTransform.eps_and_variance
        return passes_on and bool(getattr(self.model, "learned_variance", False))

    def eps(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        return self.eps_and_variance(x, sigma, m, y)[0]

    def eps_and_variance(self, x: Tensor, sigma: Level, m: Level = 1.0,
                         y: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """A transform changes eps and passes the wrapped model's learned variance on unchanged (guidance moves the
        mean of a reverse step, not its width); implement this or :meth:`eps`."""
        if type(self).eps is ModelTransform.eps:
            raise NotImplementedError(f"{type(self).__name__} implements neither eps nor eps_and_variance")
        return self.eps(x, sigma, m, y), None

    def prepare(self, sigma, m=1.0) -> None:
        """Forwarded to the wrapped model, and to the classifier a guidance transform queries at the same levels."""
        prepare_levels(self.model, sigma, m)
        classifier = getattr(self, "classifier", None)
        if classifier is not None and classifier is not self.model:
            prepare_levels(classifier, sigma, m)

    #: Set by transforms whose own code only reads x (scoregen's guidance and x0 hooks; guidance differentiates
    #: through a detached view, which autograd keeps from being written): such a stack is as safe as the model
    #: it wraps. A transform that does not say so is assumed to write (:attr:`ScoreModel.protects_input`).
    reads_input_only = False

    @property
    def protects_input(self) -> bool:  # type: ignore[override]
        return self.reads_input_only and getattr(self.model, "protects_input", False)

    def eval_bytes_per_sample(self, dtype: torch.dtype) -> int:
        return declared_bytes(self.model, dtype)


class X0Hook(ModelTransform):
    """Apply ``hook`` to the denoised estimate x0_hat and answer with the consistent eps.

    This is how DDPM-style image samplers clip x0_hat to the data range at each step (diffusers'
    ``clip_sample``): ``eps' = (x - m * hook(x0_hat)) / sigma``. Every sampler gets it for free.
    """

    role = "the x0 hook"
    reads_input_only = True

    def __init__(self, model: ScoreModel, hook: Callable[[Tensor], Tensor]):
        super().__init__(model)
        if not callable(hook):
            raise TypeError(f"x0_hook must be callable as hook(x0) -> x0, got {type(hook).__name__}")
        self.hook = hook

    @property
    def hook_name(self) -> str:
        return getattr(self.hook, "__name__", type(self.hook).__name__)

    def eps_and_variance(self, x: Tensor, sigma: Level, m: Level = 1.0,
                         y: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        _require_positive("sigma", sigma, "to apply an x0 hook")
        m_, sigma_ = _col(m, x), _col(sigma, x)
        eps, v = self.model.eps_and_variance(x, sigma, m, y)
        x0_hat = (x - sigma_ * eps) / m_
        # metadata only, on every call: a hook that broadcasts, casts or moves x0 would silently change eps
        x0 = check_like(self.hook(x0_hat), x0_hat, f"the x0 hook {self.hook_name}")
        return (x - m_ * x0) / sigma_, v


def clip_x0(low: float = -1.0, high: float = 1.0) -> Callable[[Tensor], Tensor]:
    """An x0 hook that clips to the data range [low, high] (DDPM's image samplers)."""
    low, high = check_real("clip_x0's low", low), check_real("clip_x0's high", high)
    if not low < high:
        raise ValueError(f"clip range must have low < high, got [{low:g}, {high:g}]")

    def hook(x0: Tensor) -> Tensor:
        return x0.clamp(low, high)

    hook.__name__ = f"clip_x0({low:g}, {high:g})"  # how error messages name it
    return hook


def dynamic_threshold(percentile: float = 0.995, max_value: float = 1.0) -> Callable[[Tensor], Tensor]:
    """Imagen's dynamic thresholding (Saharia et al. 2022): per sample, clip to the |x0| percentile s >= 1 and divide by s."""
    percentile = check_real("percentile", percentile, 0.0, 1.0, lo_open=True)
    max_value = check_real("max_value (the data range's bound)", max_value, 0.0, lo_open=True)

    def hook(x0: Tensor) -> Tensor:
        s = torch.quantile(x0.reshape(x0.shape[0], -1).abs().float(), percentile, dim=1).clamp_min(max_value)
        s = s.to(x0).reshape(-1, *([1] * (x0.ndim - 1)))
        return x0.clamp(-s, s) / s * max_value

    hook.__name__ = f"dynamic_threshold({percentile:g}, max_value={max_value:g})"
    return hook
