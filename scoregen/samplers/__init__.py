"""Samplers: one signature, chosen by name in one call.

Every sampler is a function ``sampler(model, z, *, generator, y, callback, progress, **options) -> x0``
where ``z`` is standard normal noise of shape (B, *shape) that the sampler scales to its own first level.
:func:`sample` draws ``z`` from a seeded generator, counts network evaluations (NFE), times the run and
checks the model and the result, so swapping samplers on a model is one argument::

    sample(model, "ddpm", n=1000, seed=0)
    sample(model, "langevin", n=1000, seed=0, levels=10, steps_per_level=100)

The samplers' loops hold the algorithms only: every check of what a model returns lives in :class:`_Counted`,
the wrapper :func:`sample` hands them instead of the model.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..models import Level, ModelTransform, ScoreModel, X0Hook, check_like, class_labels
from .._checks import check_int
from . import _memory
from .ddim import ddim
from .ddpm import ddpm
from .langevin import langevin

__all__ = ["SAMPLERS", "SampleResult", "sample", "sampler_options", "ddpm", "ddim", "langevin"]

SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "langevin": langevin, "ddim": ddim}
_SHARED = {"generator", "y", "callback", "progress"}

#: On an accelerator, the finiteness flags are read (one host sync) every this many model evaluations.
CHECK_EVERY = 16


@dataclass
class SampleResult:
    """Samples of shape (n, *shape), the number of model evaluations per trajectory (per batch), wall-clock
    seconds of sampling, the sampler's name, the seed used (None when a generator was passed), the sampler's
    options and the batch size the n samples were drawn in."""

    samples: Tensor
    nfe: int
    wall_time: float
    sampler: str
    seed: Optional[int]
    options: dict = field(default_factory=dict)
    batch_size: Optional[int] = None


def _check_every(device: torch.device) -> int:
    """1: check each model output as it returns (CPU, where reading a value costs nothing extra); else read
    device-side flags every :data:`CHECK_EVERY` evaluations, so that an accelerator never waits on the host per step."""
    return 1 if device.type == "cpu" else CHECK_EVERY


class _Counted(ModelTransform):
    """:func:`sample`'s view of the model stack: every model evaluation of every sampler goes through it.

    It counts the evaluations (NFE) and checks what the sampler gets back:

    * on the first evaluation of a run, that the model left its input untouched (against a copy taken before
      the call: samplers update their state in place, so a model that writes to its input corrupts it) and
      returned a tensor with exactly x's shape, dtype and device;
    * on every evaluation, that the result is finite. On CPU each result is checked as it returns: one sum,
      confirmed element-wise only when the sum is not finite (a sum of huge finite values can overflow). On an
      accelerator a per-step check would make the device wait for the host, so device-side flags record the
      first non-finite evaluation and keep a copy of its input (``torch.where``, so later steps do not
      overwrite it); they are read every ``check_every`` evaluations and at the end (:meth:`finish`).

    A non-finite result raises FloatingPointError naming the evaluation, its level and the part of the model
    stack that produced it (:meth:`_diagnose`).
    """

    def __init__(self, model: ScoreModel, sampler: str, name: str, check_every: int):
        super().__init__(model)
        self.sampler, self.name, self.check_every = sampler, name, check_every
        self.nfe = 0
        self._queries: dict[int, tuple] = {}  # evaluation -> (method, sigma, m, y) since the flags were last read
        self._bad_at: Optional[Tensor] = None  # device-side: first non-finite evaluation (0: none)
        self._bad_x: Optional[Tensor] = None  # device-side: that evaluation's input

    def eps(self, x, sigma, m=1.0, y=None):
        return self._evaluate("eps", x, sigma, m, y)

    def score(self, x, sigma, m=1.0, y=None):
        return self._evaluate("score", x, sigma, m, y)

    def x0(self, x, sigma, m=1.0, y=None):
        return self._evaluate("x0", x, sigma, m, y)

    def _evaluate(self, method: str, x: Tensor, sigma: Level, m: Level, y: Optional[Tensor]) -> Tensor:
        self.nfe += 1
        if self.nfe == 1:
            before = x.clone()
            out = getattr(self.model, method)(x, sigma, m, y)
            if bool(((before != x) & ~(before.isnan() & x.isnan())).any()):
                raise ValueError(f"{self.name}.{method} modified its input x in place: x is the sampler's state, which "
                                 f"the model must only read. Compute on a copy (x = x.clone()) or with out-of-place "
                                 f"operations (x * 2, not x.mul_(2))")
            check_like(out, x, f"{self.name}.{method}")
        else:
            out = getattr(self.model, method)(x, sigma, m, y)
        if self.check_every == 1:
            if not math.isfinite(out.sum().item()) and not bool(torch.isfinite(out).all()):
                raise self._diagnose(self.nfe, method, x, sigma, m, y)
        else:
            self._flag(out, method, x, sigma, m, y)
        return out

    def _flag(self, out: Tensor, method: str, x: Tensor, sigma: Level, m: Level, y: Optional[Tensor]) -> None:
        """Record on the device whether this is the first non-finite evaluation, and keep its input if so."""
        if self._bad_x is None:
            self._bad_at = torch.zeros((), dtype=torch.long, device=x.device)
            self._bad_x = torch.empty_like(x)
        if self._bad_x.shape != x.shape or self._bad_x.dtype != x.dtype:  # a custom sampler's odd query: check now
            self.finish()
            if not bool(torch.isfinite(out).all()):
                raise self._diagnose(self.nfe, method, x, sigma, m, y)
            return
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


def _blame(top: ScoreModel, method: str, x: Tensor, sigma: Level, m: Level, y: Optional[Tensor]) -> str:
    """Which part of the stack ``top`` returns NaN or inf on ``x`` at this level, from the innermost model outwards.

    The stack is re-evaluated once, exactly as the sampler called it, with a :class:`_Probe` in place of every
    transform's inner model (``ModelTransform.model``), so each part is queried with the arguments its wrapper
    really passes (guidance queries its model without the label, classifier-free guidance with two halves).
    The innermost part whose answer is not finite is to blame; the probes are removed before returning.
    """
    chain = [top]
    while isinstance(chain[-1], ModelTransform):
        chain.append(chain[-1].model)
    probes: list[_Probe] = []
    try:
        for layer in chain[:-1]:
            probes.append(_Probe(layer.model))
            layer.model = probes[-1]
        out = getattr(top, method)(x, sigma, m, y)
    except Exception as e:  # noqa: BLE001  reported, not hidden: the message says what re-evaluating raised
        return f"re-evaluating the model stack on that input raised {type(e).__name__}: {e}"
    finally:
        for layer, probe in zip(chain, probes):
            layer.model = probe.model
    for wrapper, probe in reversed(list(zip(chain, probes))):
        if probe.bad:
            inner = "" if not isinstance(probe.model, ModelTransform) else " while what it wraps returned finite values"
            return f"{_describe(probe.model)} returned NaN or inf{inner}. Check it at this level"
    if isinstance(out, Tensor) and not bool(torch.isfinite(out).all()):
        inner = f" while what it wraps, {_describe(chain[1])}, returned finite values" if len(chain) > 1 else ""
        return f"{_describe(top)} returned NaN or inf{inner}. Check it at this level"
    return ("re-evaluating the model stack on the same input and level gave finite values, so the NaN could not be "
            "reproduced: the model's output depends on more than its input and level (randomness, or state kept "
            "between calls), and the part of the stack that produced it cannot be named")


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


def _check_seed(seed, generator: Optional[torch.Generator], device: torch.device) -> Optional[int]:
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both: the samples would come from the generator while the "
                         "result reports the seed")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device} but sampling runs on {device}: "
                         f"make it with torch.Generator({str(device)!r})")
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


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
    batch_size: Optional[int] = None,
    **options,
) -> SampleResult:
    """Draw ``n`` samples from ``model`` with ``sampler`` (a name in :data:`SAMPLERS` or a sampler function).

    Args:
        n: the number of samples, an integer >= 1 (a Python or numpy integer; not a float or a bool).
        seed / generator: the source of every random draw, one or the other; same seed, same samples. ``seed`` is
            an integer in [0, 2**63). With neither, a fresh seed is drawn and reported in the result.
        y: class label(s) passed to the model: an int, or an integer tensor of shape (n,); guidance uses it.
        x0_hook: applied to x0_hat at every step (e.g. :func:`scoregen.clip_x0`), via :class:`~scoregen.X0Hook`.
        progress: show a progress bar (None: only on a terminal).
        batch_size: draw the n samples in consecutive batches of at most this many (None: chosen from the
            memory estimate below). The batches use the same generator in order, each drawing its initial
            noise and then its sampler's noise, and are concatenated; ``callback`` and the progress bar run
            once per batch. A model holding per-sample data (a measurement with one observation per sample)
            needs all n samples in one batch.
        options: the sampler's own options, e.g. ``steps``, ``variance``, ``eta``, ``levels``.

    Samples depend on the seed, n and the batch size: n = 100 and two runs of n = 50 with the same seed give
    different samples, even for deterministic DDIM (eta = 0), because the initial noise of a batch is drawn as
    one (batch, *shape) block from the generator, and a stochastic sampler's noise draws follow it.

    Memory is estimated before anything is allocated (:mod:`scoregen.samplers._memory`): the result
    (n * prod(shape) * itemsize) must fit in half of the available memory (RAM on CPU, free memory on CUDA),
    and a batch holds about 6 copies of its state plus the networks' activations, measured by one forward pass
    on a single sample; a batch chosen here uses at most a quarter of the available memory.

    Returns:
        :class:`SampleResult` with ``samples`` of shape (n, *shape) and ``nfe``, the model evaluations per batch,
        which is the cost of one trajectory (every batch makes the same number); ``wall_time`` covers all batches.

    Raises:
        ValueError: bad arguments (n, seed with generator, y, batch_size, unknown options); a result too large for
            the memory, or a batch_size estimated not to fit; a model that modifies its input in place, or returns
            something other than a tensor with x's shape, dtype and device.
        FloatingPointError: a model evaluation returned NaN or inf (the message names the evaluation, its level,
            and whether the sampler's update diverged or which part of the model stack produced it), or the
            samples are NaN or inf after the sampler's last update.
    """
    name, fn = _resolve(sampler)
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - sampler_options(fn))
        if unknown:
            raise ValueError(f"sampler {name!r} has no option(s) {unknown}; its options are {sorted(sampler_options(fn))}")
    if not model.shape:
        raise ValueError("the model does not declare its sample shape; give it a `shape` (e.g. NetworkScoreModel(..., shape=(2,)))")
    n = check_int("n", n)
    batch_size = None if batch_size is None else check_int("batch_size", batch_size)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (torch.float32, torch.float64, ...), got {dtype!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    seed = _check_seed(seed, generator, device)
    labels = None if y is None else class_labels(y, n, device, who="y: ")  # a view for an int: nothing of size n
    stack = model if x0_hook is None else X0Hook(model, x0_hook)
    batch = _memory.batch_size_for(n, stack, dtype, device, labels, batch_size)

    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed
        generator = torch.Generator(device).manual_seed(seed)
    check_every, out, nfe, wall = _check_every(device), None, 0, 0.0
    for start in range(0, n, batch):
        b = min(batch, n - start)
        counted = _Counted(stack, name, type(model).__name__, check_every)
        z = torch.randn((b, *model.shape), generator=generator, device=device, dtype=dtype)
        t0 = time.perf_counter()
        with torch.no_grad():
            x = fn(counted, z, generator=generator, y=None if labels is None else labels[start:start + b],
                   callback=callback, progress=progress, **options)
            counted.finish()
        wall += time.perf_counter() - t0
        check_like(x, z, f"sampler {name!r}")
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(
                f"sampler {name!r} produced NaN or inf although every model evaluation returned finite values "
                f"({counted.nfe} of them): the sampler's own update diverged, in its last update or where the model "
                "kept answering finitely to a non-finite state. Its step is too large for what the model returns: "
                "use more steps (or a smaller step_lr for langevin)")
        nfe = max(nfe, counted.nfe)
        if b == n:
            out = x
        else:
            out = torch.empty((n, *model.shape), dtype=dtype, device=device) if out is None else out
            out[start:start + b] = x
    return SampleResult(out, nfe, wall, name, seed, dict(options), batch)
