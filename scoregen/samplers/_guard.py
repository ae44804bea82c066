""":func:`scoregen.sample`'s guard around the model stack: every model evaluation of every sampler goes through
:class:`Guarded`, so that the samplers' loops hold the algorithms only.

It hands the model a copy of the state, counts the evaluations, checks the first answer's kind and every answer's
finiteness, and, when an answer is NaN or inf, names the evaluation, its level and the part of the model stack
that produced it (:func:`_blame`, which re-evaluates a copy of the stack, never the user's objects).
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import Tensor

from ..models import Level, ModelTransform, ScoreModel, check_like

#: On an accelerator, the finiteness flags are read (one host sync) every this many model evaluations.
CHECK_EVERY = 16


def check_every(device: torch.device) -> int:
    """1: check each model output as it returns (CPU, where reading a value costs nothing extra); else read
    device-side flags every :data:`CHECK_EVERY` evaluations, so that an accelerator never waits on the host per step."""
    return 1 if device.type == "cpu" else CHECK_EVERY


def _finite(t: Tensor) -> bool:
    """Whether ``t`` is all finite: one sum, confirmed element-wise only when the sum is not (a sum of huge
    finite values can overflow). One host sync."""
    return math.isfinite(t.sum().item()) or bool(torch.isfinite(t).all())


class Guarded(ModelTransform):
    """The model stack as a sampler sees it in :func:`scoregen.sample`, for one batch whose state is like ``state``.

    Samplers update their state in place, and a model may write to its input (an in-place activation, ``x.mul_``):
    on every evaluation a model gets a copy of x, unless it :attr:`~scoregen.ScoreModel.protects_input` itself
    (exact mixtures, which only read x; network adapters, which hand their network a copy).
    It counts the evaluations (NFE) and checks what the sampler gets back:

    * on the first evaluation, that the answer is a tensor with exactly x's shape, dtype and device;
    * on every evaluation, that it is finite. On CPU each answer is checked as it returns. On an accelerator a
      per-step check would make the device wait for the host, so device-side flags record the first non-finite
      evaluation and keep a copy of its input (``torch.where``, so later steps do not overwrite it); they are read
      every ``check_every`` evaluations and at the end (:meth:`finish`). The flags are shaped like the state: a
      query of another shape or dtype (a custom sampler evaluating part of its batch) is checked as it returns.

    A non-finite answer raises FloatingPointError naming the evaluation, its level and the part of the model
    stack that produced it (:meth:`_diagnose`).

    A sampler's :meth:`~scoregen.ScoreModel.prepare` (its grid, declared before its loop) passes through to the stack
    (:meth:`ModelTransform.prepare`): it evaluates nothing, so it is neither counted nor checked.
    """

    def __init__(self, model: ScoreModel, sampler: str, name: str, state: Tensor):
        super().__init__(model)
        self.sampler, self.name = sampler, name
        self._protected = bool(getattr(model, "protects_input", False))  # see ScoreModel.protects_input
        self.check_every = check_every(state.device)
        self.nfe = 0
        self._queries: dict[int, tuple] = {}  # evaluation -> (method, sigma, m, y) since the flags were last read
        # device-side: the first non-finite evaluation (0: none) and its input
        self._bad_at = torch.zeros((), dtype=torch.long, device=state.device) if self.check_every > 1 else None
        self._bad_x = torch.empty_like(state) if self.check_every > 1 else None

    def eps(self, x, sigma, m=1.0, y=None):
        return self._evaluate("eps", x, sigma, m, y)

    def score(self, x, sigma, m=1.0, y=None):
        return self._evaluate("score", x, sigma, m, y)

    def x0(self, x, sigma, m=1.0, y=None):
        return self._evaluate("x0", x, sigma, m, y)

    def eps_and_variance(self, x, sigma, m=1.0, y=None):
        return self._evaluate("eps_and_variance", x, sigma, m, y)

    def _evaluate(self, method: str, x: Tensor, sigma: Level, m: Level, y: Optional[Tensor]):
        self.nfe += 1
        # the state is updated in place: a model that does not promise to leave its input alone gets a copy
        out = getattr(self.model, method)(x if self._protected else x.clone(), sigma, m, y)
        answer = out[0] if method == "eps_and_variance" else out  # (eps, learned variance weight or None)
        if self.nfe == 1:
            check_like(answer, x, f"{self.name}.{method}")
        if self._bad_x is not None and x.shape == self._bad_x.shape and x.dtype == self._bad_x.dtype:
            self._flag(answer, method, x, sigma, m, y)
        elif not _finite(answer):
            self.finish()  # a flagged earlier evaluation is the first to report
            raise self._diagnose(self.nfe, method, x, sigma, m, y)
        return out

    def _flag(self, out: Tensor, method: str, x: Tensor, sigma: Level, m: Level, y: Optional[Tensor]) -> None:
        """Record on the device whether this is the first non-finite evaluation, and keep its input if so."""
        first = ~torch.isfinite(out).all() & (self._bad_at == 0)
        self._bad_at.masked_fill_(first, self.nfe)
        torch.where(first, x, self._bad_x, out=self._bad_x)
        self._queries[self.nfe] = (method, sigma, m, y)
        if self.nfe % self.check_every == 0:
            self.finish()

    def finish(self) -> None:
        """Read the device-side flags (one host sync): raise for the first non-finite evaluation since the last read."""
        if self._bad_at is None:
            return
        bad = int(self._bad_at)
        if bad:
            method, sigma, m, y = self._queries[bad]
            raise self._diagnose(bad, method, self._bad_x, sigma, m, y)
        self._queries.clear()

    def _diagnose(self, i: int, method: str, x: Tensor, sigma: Level, m: Level, y: Optional[Tensor]) -> FloatingPointError:
        """The error for evaluation ``i``, whose input was ``x``: the sampler's update diverged (x was not finite),
        or the part of the model stack that returns NaN or inf on this finite input (:func:`_blame`)."""
        head = (f"sampler {self.sampler!r}: model evaluation {i} (of {self.nfe} so far) returned NaN or inf, at "
                f"{_level_text(sigma, m)}. ")
        if not bool(torch.isfinite(x).all()):
            return FloatingPointError(
                head + "The sampler's state x was already NaN or inf at this evaluation's input: the sampler's own update "
                "diverged, its step too large for what the model returned at the previous levels. Use more steps (or a "
                "smaller step_lr for langevin), and check that the model's outputs have a sensible size at these levels")
        culprit = _blame(self.model, method, x.clone(), sigma, m, y)
        return FloatingPointError(head + "The sampler's state x was finite at its input: " + culprit)


def _level_text(sigma: Level, m: Level) -> str:
    if isinstance(sigma, Tensor) or isinstance(m, Tensor):
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().flatten()
        mm = torch.as_tensor(m, dtype=torch.float64).detach().cpu().flatten()
        rng = lambda v: f"[{v.min().item():.4g}, {v.max().item():.4g}]"  # noqa: E731
        return f"per-sample levels sigma in {rng(s)}, m in {rng(mm)} (VE noise sigma/m in {rng(s / mm)})"
    return f"sigma={sigma:.4g}, m={m:.4g} (VE noise sigma/m={sigma / m:.4g})"


def _describe(layer: ScoreModel) -> str:
    """A part of a model stack as an error message names it: "the guidance (ClassifierGuidance, scale 2)"."""
    if isinstance(layer, ModelTransform):
        detail = getattr(layer, "hook_name", None) or type(layer).__name__
        scale = getattr(layer, "scale", None)
        return f"{layer.role} ({detail}{'' if scale is None else f', scale {scale:g}'})"
    text = repr(layer) if type(layer).__repr__ is not object.__repr__ else type(layer).__name__
    return f"the model ({text if len(text) <= 200 else text[:197] + '...'})"


class _Probe:
    """Stands in for one part of a model stack while :func:`_blame` re-evaluates it: records whether any of its
    answers was NaN or inf, and otherwise behaves as the part itself."""

    def __init__(self, model: ScoreModel):
        self.model, self.bad = model, False

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def _watch(self, out):
        self.bad = self.bad or (isinstance(out, Tensor) and not bool(torch.isfinite(out).all()))
        return out

    def eps(self, *args, **kwargs):
        return self._watch(self.model.eps(*args, **kwargs))

    def score(self, *args, **kwargs):
        return self._watch(self.model.score(*args, **kwargs))

    def x0(self, *args, **kwargs):
        return self._watch(self.model.x0(*args, **kwargs))

    def eps_and_variance(self, *args, **kwargs):
        eps, v = self.model.eps_and_variance(*args, **kwargs)
        return self._watch(eps), v


def _probed(layer: ScoreModel) -> tuple[ScoreModel, list[_Probe]]:
    """A copy of the stack from ``layer`` down with a :class:`_Probe` as every transform's inner model, and the
    probes, outermost first. Each transform is a shallow copy (``copy.copy``) whose ``model`` is set on the copy:
    the user's objects, which other threads or other stacks may share, are never modified."""
    if not isinstance(layer, ModelTransform):
        return layer, []
    inner, probes = _probed(layer.model)
    twin = copy.copy(layer)
    twin.model = _Probe(inner)
    return twin, [twin.model, *probes]


def _blame(top: ScoreModel, method: str, x: Tensor, sigma: Level, m: Level, y: Optional[Tensor]) -> str:
    """Which part of the stack ``top`` returns NaN or inf on ``x`` at this level, from the innermost model outwards.

    A probed copy of the stack (:func:`_probed`) is evaluated once, exactly as the sampler called it, so each part
    is queried with the arguments its wrapper really passes (guidance queries its model without the label,
    classifier-free guidance with two halves). The innermost part whose answer is not finite is to blame.
    """
    try:
        twin, probes = _probed(top)
        out = getattr(twin, method)(x, sigma, m, y)
        out = out[0] if method == "eps_and_variance" else out
    except Exception as e:  # noqa: BLE001  reported, not hidden: the message says what re-evaluating raised
        return f"re-evaluating the model stack on that input raised {type(e).__name__}: {e}"
    for probe in reversed(probes):
        if probe.bad:
            inner = "" if not isinstance(probe.model, ModelTransform) else " while what it wraps returned finite values"
            return f"{_describe(probe.model)} returned NaN or inf{inner}. Check it at this level"
    if isinstance(out, Tensor) and not bool(torch.isfinite(out).all()):
        inner = f" while what it wraps, {_describe(top.model)}, returned finite values" if isinstance(top, ModelTransform) else ""
        return f"{_describe(top)} returned NaN or inf{inner}. Check it at this level"
    return ("re-evaluating the model stack on the same input and level gave finite values, so the NaN could not be "
            "reproduced: the model's output depends on more than its input and level (randomness, or state kept "
            "between calls), and the part of the stack that produced it cannot be named")
