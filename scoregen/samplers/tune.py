"""Step grids fitted to one model, one deterministic solver and one step budget, without training anything.

:func:`tune_grid` searches the grid; :func:`optimized_grid` (``spacing="optimized"``) caches its result on disk per
(model, solver, steps); :func:`save_grid` / :func:`load_grid` keep a grid in a JSON file that any sampler's
``sigmas=`` accepts.

**The method.** A grid of ``steps`` steps starts at the model's largest trained VE level and ends at 0, as every
fixed spacing here does; its ``steps - 1`` levels in between, the smallest nonzero one included, are free. They are
written as ``steps`` positive increments of ``log sigma`` that fill the trained range exactly (the last one is the
slack between the smallest level and the smallest trained level): a softmax of ``steps - 1`` free logits, so every
point of the search space is a valid, strictly decreasing grid inside the trained range.

The objective is the solver's endpoint error against reference endpoints from the same initial noises (a seeded
batch), ``|x_solver(z) - x_ref(z)|^2`` per coordinate, averaged over the samples less the worst-matched 5%
(``trim``): a sample whose trajectory passes near a boundary between modes lands in the other mode under a small
error on the way, with an endpoint error orders of magnitude above the rest; in a batch of a hundred, the few such
samples would decide a plain mean, and a grid fitted to them does not carry over to other noises. The reference is a
fine solve of the probability-flow ODE (Heun, EDM's 2nd-order method, on a Karras grid of ``reference`` steps); its
own error is estimated from the solve of half as many steps and recorded.

The search evaluates the fixed spacings (trained, karras, logsnr, time), then a scan of Karras-type grids (rho from 2
to infinity, the smallest level raised up to 60% of the log range: with few steps, landing on x0_hat from a higher
level often wins), then runs Powell's derivative-free method (scipy) on the logits from the best grid so far,
restarted while a round gains 1%, then from the best fixed spacing. It calls the real sampler, unchanged, at every
evaluation, so it works for any deterministic sampler in :data:`~scoregen.samplers.SAMPLERS` that takes ``sigmas=``,
multistep ones included, without a differentiable replica of its update rule. It is bounded (``max_evals`` solver
runs, ``time_limit`` seconds) and keeps the best grid it evaluated. Finally the grid is checked on a second batch of
initial noises against every fixed spacing; if one of them does better there, that one is returned.

This is the global-error objective of LD3 (Tong et al., ICLR 2025), minimised by a derivative-free search on the real
solver instead of back-propagation through a replica, with a trimmed mean where LD3 relaxes the target per sample
(its soft teacher forcing); like GITS (Chen et al., ICML 2024) it fits the grid to teacher trajectories of the model
itself from a small batch, and like Align Your Steps (Sabour et al., 2024) it is specific to the model and solver.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int, check_real, short
from .._progress import progress as _progress
from ..models import ModelTransform, NetworkScoreModel, X0Hook, class_labels, innermost
from ..schedules import MAX_LEVELS, ve_levels
from .grids import StepGrid, step_grid, ve_to_model

__all__ = ["TunedGrid", "tune_grid", "optimized_grid", "save_grid", "load_grid", "model_fingerprint", "grid_cache_dir",
           "reference_endpoints", "endpoint_rmse", "CACHE_ENV", "METHOD_VERSION"]

from ..io.files import CACHE_ENV  # noqa: E402  scoregen's cache folder; optimised grids go to its ``grids`` subfolder
#: Bumped whenever the search changes what it finds: part of every cache key, so an old cache is not reused.
METHOD_VERSION = 1
#: Initial noises the search fits the grid on (and as many again it checks the grid on): exact targets, networks.
DEFAULT_N, DEFAULT_N_NETWORK = 128, 64
#: The fraction of worst-matched samples the objective leaves out (:func:`tune_grid`'s ``trim``).
DEFAULT_TRIM = 0.05
#: Heun steps (Karras grid, 2 * steps - 1 model calls) of the reference solve.
DEFAULT_REFERENCE_STEPS = 256
#: The fixed spacings the search starts from (the best of them on the search batch).
INIT_SPACINGS = ("trained", "karras", "logsnr", "time")
#: A grid file is a few kB; anything far larger is not one.
MAX_GRID_BYTES = 2**20
GRID_FORMAT = "scoregen-grid"


@dataclass(frozen=True)
class TunedGrid(StepGrid):
    """A :class:`~scoregen.samplers.grids.StepGrid` with what it was fitted to: ``solver`` (a sampler's name),
    ``model`` (the model's fingerprint, :func:`model_fingerprint`, or None) and ``info`` (the search's record:
    endpoint RMSE of the grid and of the fixed spacings on the search batch, evaluations, model calls, wall time).
    Pass it as ``sigmas=`` to the sampler it was fitted for."""

    solver: str = ""
    model: Optional[str] = None
    info: dict = field(default_factory=dict, compare=False, hash=False)
    #: The VE levels exactly as fitted (and as saved): ``s`` returns them, not ``sigma / m`` rounded once more.
    ve: tuple = ()

    @property
    def s(self) -> list[float]:
        return list(self.ve) if self.ve else super().s


def _tuned(sigmas: Sequence[float], variance_preserving: bool, spacing: str, solver: str, model: Optional[str],
           info: dict) -> TunedGrid:
    """A TunedGrid from VE levels ending with 0, in VP (m, sigma) coordinates or VE (1, s)."""
    ve = tuple(float(v) for v in sigmas)
    pairs = [ve_to_model(v, variance_preserving) for v in ve[:-1]]
    return TunedGrid(tuple(p[0] for p in pairs) + (1.0,), tuple(p[1] for p in pairs) + (0.0,), spacing,
                     variance_preserving, solver, model, info, ve)


# --------------------------------------------------------------------------------------------- the model
def _unwrap(model: Any, hooks: bool = True) -> Any:
    """The model without :func:`scoregen.sample`'s guard and :func:`scoregen.analytic_variance`'s wrapper (neither
    changes eps), and with ``hooks`` without its x0 hooks: the model a cached grid is fitted to (the grid discretises
    the model's own ODE; a hook that clips x0_hat is not part of the fit)."""
    from ..variance import AnalyticVariance
    from ._guard import Guarded

    while isinstance(model, (Guarded, AnalyticVariance, X0Hook) if hooks else (Guarded, AnalyticVariance)):
        model = model.model
    return model


def _digest(*parts: Union[bytes, str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def model_fingerprint(model: Any) -> str:
    """A hex digest that identifies what ``model`` answers: for a :class:`~scoregen.NetworkScoreModel` over a
    ``torch.nn.Module``, its class, every tensor of its ``state_dict`` (names, dtypes, shapes, bytes), the schedule's
    config, the output parameterization and the time mapping; for a :class:`~scoregen.targets.GaussianMixture`, its
    weights, means, stds, labels and schedule. :func:`scoregen.sample`'s guard and an :class:`~scoregen.X0Hook` are
    looked through (a grid is fitted to the model itself).

    Raises:
        ValueError: any other model (a guidance transform, a custom ScoreModel, a network that is a plain function),
            whose answers cannot be identified from its contents; tune its grid with :func:`tune_grid` and pass it
            to the sampler as ``sigmas=grid``.
    """
    from ..targets import GaussianMixture

    raw = _unwrap(model)
    if isinstance(raw, GaussianMixture):
        arrays = [np.ascontiguousarray(np.asarray(a, dtype=np.float64)).tobytes()
                  for a in (raw.weights, raw.means, raw.stds)]
        return _digest("GaussianMixture", str(raw.means.shape), *arrays,
                       np.ascontiguousarray(np.asarray(raw.labels, dtype=np.int64)).tobytes(), _schedule_config(raw.schedule))
    if isinstance(raw, NetworkScoreModel) and isinstance(raw.net, torch.nn.Module):
        parts: list[Union[bytes, str]] = [f"NetworkScoreModel:{type(raw.net).__module__}.{type(raw.net).__qualname__}",
                                          raw.parameterization, raw.time, _schedule_config(raw.schedule), str(raw.shape)]
        for name, t in sorted(raw.net.state_dict().items()):
            parts += [name, f"{t.dtype}{tuple(t.shape)}", _tensor_bytes(t)]
        return _digest(*parts)
    what = type(raw).__name__
    why = ("a network that is not a torch.nn.Module" if isinstance(raw, NetworkScoreModel) else
           "a model transform (guidance)" if isinstance(raw, ModelTransform) else "a model whose contents scoregen cannot read")
    raise ValueError(f"cannot fingerprint {what} ({why}), so its optimized grid cannot be cached: spacing='optimized' works "
                     "for NetworkScoreModel over a torch.nn.Module and for GaussianMixture targets. Fit the grid with "
                     "scoregen.samplers.tune.tune_grid(model, solver, steps) and pass it to the sampler as sigmas=grid "
                     "(save_grid / load_grid keep it in a file)")


def _schedule_config(schedule) -> str:
    try:
        return json.dumps(schedule.to_config(), sort_keys=True)
    except (AttributeError, TypeError, ValueError):
        return repr(schedule)


def _device_dtype(model: Any, device, dtype) -> tuple[torch.device, torch.dtype]:
    """The device and dtype the search runs in: a network's own (its first parameter's), float64 for an exact
    target (whose answers are exact in any precision)."""
    model = innermost(model)
    net = getattr(model, "net", None)
    param = next(iter(net.parameters()), None) if isinstance(net, torch.nn.Module) else None
    if device is None:
        device = param.device if param is not None else torch.device("cpu")
    if dtype is None:
        dtype = param.dtype if param is not None and param.dtype.is_floating_point else \
            (torch.float32 if param is not None or isinstance(model, NetworkScoreModel) else torch.float64)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return torch.device(device), dtype


# --------------------------------------------------------------------------------------------- running solvers
def _solver(solver: str):
    from . import SAMPLERS

    if not isinstance(solver, str):
        raise ValueError(f"solver must be a sampler's name, one of {sorted(SAMPLERS)}; got {short(solver)}")
    if solver not in SAMPLERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SAMPLERS)}")
    fn = SAMPLERS[solver]
    import inspect

    if "sigmas" not in inspect.signature(fn).parameters:
        raise ValueError(f"sampler {solver!r} does not step on a grid of noise levels (it takes no sigmas=), so it has no "
                         "grid to tune")
    return fn


class _Runner:
    """Runs one sampler on one batch of initial noises for any grid: counts runs and model calls."""

    def __init__(self, model, fn, name: str, z: Tensor, y: Optional[Tensor], options: dict):
        self.model, self.fn, self.name, self.z, self.y, self.options = model, fn, name, z, y, options
        self.runs = self.nfe = 0

    def __call__(self, sigmas, generator: Optional[torch.Generator] = None, fn=None, name: Optional[str] = None) -> Tensor:
        from ._guard import Guarded

        guarded = Guarded(self.model, name or self.name, type(self.model).__name__, self.z)
        with torch.no_grad():
            x = (fn or self.fn)(guarded, self.z, sigmas=sigmas, generator=generator, y=self.y, progress=False,
                                **({} if fn is not None else self.options))
            guarded.finish()
        self.runs += 1
        self.nfe += guarded.nfe
        return x

    def errors(self, sigmas, ref: Tensor) -> Tensor:
        """The endpoint errors (:func:`_errors`) on a grid; all inf when the model answered NaN or inf on the way."""
        try:
            return _errors(self(sigmas), ref)
        except FloatingPointError:
            return torch.full((len(ref),), math.inf, dtype=torch.float64)


def _errors(x: Tensor, ref: Tensor) -> Tensor:
    """Each sample's squared endpoint error, per coordinate (float64; inf where x is not finite)."""
    d = (x - ref).double().flatten(1)
    e = (d * d).mean(1)
    return torch.where(torch.isfinite(e), e, torch.full_like(e, math.inf))


def _trimmed(e: Tensor, trim: float) -> float:
    """The mean of the ``1 - trim`` smallest of the errors ``e`` (all of them at trim = 0)."""
    k = max(1, int(math.ceil(len(e) * (1.0 - trim) - 1e-9)))
    v = float(e.sort().values[:k].mean()) if k < len(e) else float(e.mean())
    return v if math.isfinite(v) else math.inf


def reference_endpoints(model, z: Tensor, steps: int = DEFAULT_REFERENCE_STEPS, *, y: Optional[Tensor] = None) -> Tensor:
    """The probability-flow ODE's endpoints from initial noises ``z`` (standard normal, shape (B, *shape)): Heun on a
    Karras grid of ``steps`` steps from the model's largest to its smallest trained VE level, then to 0
    (``2 steps - 1`` model calls). What :func:`tune_grid` fits grids against."""
    from .ode import heun

    steps = check_int("reference steps", steps, 2, MAX_LEVELS)
    grid = step_grid(model, steps, "karras")
    return _Runner(_unwrap(model, hooks=False), heun, "heun", z, y, {})(grid)


def endpoint_rmse(model, solver: str, grid: Union[StepGrid, Sequence[float]], z: Tensor, reference: Tensor, *,
                  y: Optional[Tensor] = None, **options) -> float:
    """Root mean square (per coordinate) of ``solver``'s endpoints on ``grid`` minus ``reference``, from noises ``z``."""
    x = _Runner(_unwrap(model, hooks=False), _solver(solver), solver, z, y, options)(grid)
    return math.sqrt(float(_errors(x, reference).mean()))


# --------------------------------------------------------------------------------------------- parameterisation
class _Param:
    """Grids of ``steps`` steps from ``hi`` down, ``steps - 1`` levels in [lo, hi) free, then 0, as logits.

    ``u = log hi - log lo`` is split into ``steps`` increments ``u * softmax(0, theta)``: the first ``steps - 1``
    separate consecutive levels, the last is the slack from the smallest level down to ``lo``."""

    FLOOR = 1e-4  # the smallest increment (a fraction of u) a grid is read as, when turned into logits

    def __init__(self, hi: float, lo: float, steps: int):
        self.hi, self.lo, self.steps = hi, lo, steps
        self.u = math.log(hi) - math.log(lo)

    def sigmas(self, theta: np.ndarray) -> list[float]:
        a = np.concatenate([[0.0], np.asarray(theta, dtype=np.float64)])
        w = np.exp(a - a.max())
        w /= w.sum()
        log_s = math.log(self.hi) - self.u * np.cumsum(w[:-1])
        return [self.hi, *np.exp(log_s).tolist(), 0.0]

    def theta(self, sigmas: Sequence[float]) -> np.ndarray:
        s = np.clip(np.asarray(sigmas[:-1], dtype=np.float64), self.lo, self.hi)
        s[0] = self.hi
        log_s = np.append(np.log(s), math.log(self.lo))
        d = np.maximum(-np.diff(log_s) / self.u, self.FLOOR)
        return np.log(d[1:]) - math.log(d[0])


#: The scan before the search: Karras grids with these rho (inf: uniform in log sigma) ...
FAMILY_RHO = (2.0, 4.0, 7.0, 12.0, math.inf)
#: ... whose smallest level is lo * (hi / lo) ** f for these f (0: the smallest trained level).
FAMILY_RAISE = (0.0, 0.15, 0.3, 0.45, 0.6)


def _family(hi: float, lo: float, steps: int) -> list[tuple[str, list[float]]]:
    """Karras-type grids of ``steps`` levels from ``hi`` down to a raised smallest level, then 0."""
    out = []
    ramp = np.linspace(0.0, 1.0, steps)
    for f in FAMILY_RAISE:
        bottom = lo * (hi / lo) ** f
        for rho in FAMILY_RHO:
            if math.isinf(rho):
                s = np.geomspace(hi, bottom, steps)
            else:
                s = (hi ** (1 / rho) + ramp * (bottom ** (1 / rho) - hi ** (1 / rho))) ** rho
            s[0] = hi
            out.append((f"karras(rho={rho:g}, sigma_min={bottom:.3g})", [*s.tolist(), 0.0]))
    return out


def _valid(sigmas: Sequence[float]) -> bool:
    s = np.asarray(sigmas, dtype=np.float64)
    return bool(np.all(np.isfinite(s)) and np.all(np.diff(s) < 0) and s[-2] > 0)


class _Stop(Exception):
    """The search's budget (runs or seconds) is spent."""


def _default_n(model) -> int:
    """The search batch: DEFAULT_N for an exact target; a network: DEFAULT_N_NETWORK (its calls cost the time)."""
    return DEFAULT_N_NETWORK if isinstance(getattr(innermost(model), "net", None), torch.nn.Module) else DEFAULT_N


# --------------------------------------------------------------------------------------------- the search
def tune_grid(
    model,
    solver: str,
    steps: int,
    *,
    n: Optional[int] = None,
    seed: int = 0,
    reference: int = DEFAULT_REFERENCE_STEPS,
    y: Union[int, Tensor, None] = None,
    progress: Optional[bool] = None,
    max_evals: Optional[int] = None,
    time_limit: Optional[float] = None,
    trim: float = DEFAULT_TRIM,
    init: Sequence[str] = INIT_SPACINGS,
    device: Union[str, torch.device, None] = None,
    dtype: Optional[torch.dtype] = None,
    options: Optional[dict] = None,
) -> TunedGrid:
    """The grid of ``steps`` steps on which ``solver`` best reproduces ``model``'s ODE endpoints (module docstring).

    Args:
        model: a score model (its schedule gives the range: the largest trained VE level first, the smallest the
            lowest a level may go).
        solver: a deterministic sampler's name in :data:`~scoregen.samplers.SAMPLERS` that takes ``sigmas=``
            (euler, heun, ddim, dpmpp_2m, ...); a sampler whose result depends on its random draws is refused.
        steps: the solver's number of steps (its grid has ``steps`` noisy levels, then 0). NFE depends on the
            solver: euler ``steps``, heun ``2 steps - 1``.
        n: initial noises the grid is fitted on (default 128 for an exact target, 64 for a network); as many
            again check it (the validation batch, seed ``seed + 1``).
        seed: the noises' seed; the same arguments give the same grid.
        reference: Heun steps of the reference solve (Karras grid; ``2 reference - 1`` model calls).
        y: class label(s) for a conditional model: an int, or one per initial noise.
        progress: a progress bar over the search's solver runs (None: on a terminal; plain lines elsewhere).
        max_evals: the most solver runs the search itself makes (default ``60 + 25 (steps - 1)``, at most 600).
        time_limit: seconds after which the search stops with the best grid so far (default: none).
        trim: the fraction of the worst-matched samples left out of the objective (default 0.05; 0: the plain
            endpoint MSE). Samples whose trajectory crosses between modes have endpoint errors orders of magnitude
            above the rest; in a small batch their few values decide a plain MSE, and a grid fitted to them does
            not carry over to other noises.
        init: the fixed spacings the search starts from (best first, on the fitting batch).
        device / dtype: where the search runs (default: the network's device and dtype; float64 for an exact target).
        options: the solver's own options (e.g. ``{"eta": 0.0}`` for ddim).

    Returns:
        a :class:`TunedGrid` (``spacing="optimized"``, ``solver``, ``model`` fingerprint or None, ``info``) to pass
        as ``sigmas=`` to the same solver with the same number of steps. When no grid the search found beats the best
        fixed spacing on the validation batch, that spacing's grid is returned (``info["chosen"]`` names it).
        ``info`` holds the objective's value (a root mean square error per coordinate) of every fixed spacing and of
        the grid, on the fitting and on the validation batch, the validation batch's full RMSE, an estimate of the
        reference's own error, the evaluations, model calls and wall time.
    """
    from scipy.optimize import minimize

    from .ode import heun

    t_start = time.perf_counter()
    fn = _solver(solver)
    if not hasattr(model, "schedule") or not callable(getattr(model, "eps", None)):
        raise ValueError(f"model must be a score model (with eps and a schedule), got {type(model).__name__}")
    steps = check_int("steps", steps, 1, MAX_LEVELS)
    raw = _unwrap(model, hooks=False)  # what the caller passed, as it answers (an x0 hook included)
    n = _default_n(raw) if n is None else check_int("n (the search's batch of initial noises)", n, 2)
    seed = check_int("seed", seed, 0, 2**63 - 2)
    reference = check_int("reference (Heun steps of the reference solve)", reference, 2, MAX_LEVELS)
    max_evals = min(60 + 25 * (steps - 1), 600) if max_evals is None else check_int("max_evals", max_evals, 0)
    time_limit = None if time_limit is None else check_real("time_limit (seconds)", time_limit, 0.0, lo_open=True)
    trim = check_real("trim (the fraction of samples left out)", trim, 0.0, 0.5, hi_open=True)
    if isinstance(init, str) or not init or any(s not in INIT_SPACINGS for s in init):
        raise ValueError(f"init must be a non-empty list of spacings among {list(INIT_SPACINGS)}, got {short(init)}")
    options = dict(options or {})
    bad = sorted(set(options) & {"sigmas", "steps", "spacing", "timesteps", "generator", "y", "progress", "callback", "start"})
    if bad:
        raise ValueError(f"options {bad} are set by the search itself; options are the solver's own (e.g. eta)")
    shape = tuple(getattr(raw, "shape", ()) or ())
    if not shape:
        raise ValueError("the model does not declare its sample shape; give it a `shape`")
    device, dtype = _device_dtype(raw, device, dtype)
    hi, lo = ve_levels(raw.schedule)
    if not (math.isfinite(hi) and math.isfinite(lo) and hi > lo > 0):
        raise ValueError(f"the model's trained VE levels must span a range hi > lo > 0, got {hi:g} and {lo:g}")
    candidates: dict[str, list[float]] = {}
    for spacing in init:
        try:
            s = step_grid(raw, steps, spacing).s
        except ValueError:  # trained spacing beyond a discrete model's levels
            continue
        if not any(np.allclose(s, other, rtol=1e-9, atol=0) for other in candidates.values()):
            candidates[spacing] = s  # DDPM's trained and time spacings are one grid: evaluated once
    if not candidates:
        raise ValueError(f"none of the init spacings {list(init)} gives a grid of {steps} steps for this model")
    try:
        fingerprint = None if isinstance(raw, ModelTransform) else model_fingerprint(raw)
    except ValueError:
        fingerprint = None

    def noise(count: int, s: int) -> Tensor:  # drawn on the CPU in float64: the same numbers on every device
        return torch.randn((count, *shape), generator=torch.Generator().manual_seed(s), dtype=torch.float64).to(device, dtype)

    z_fit, z_val = noise(n, seed), noise(n, seed + 1)
    y_fit = y_val = None if y is None else class_labels(y, n, device, who="y: ")
    fit = _Runner(raw, fn, solver, z_fit, y_fit, options)
    val = _Runner(raw, fn, solver, z_val, y_val, options)
    param = _Param(hi, lo, steps)
    evals = 0
    bar = _progress(None, progress, f"tune-grid {solver} {steps} steps", "run")
    try:
        first = next(iter(candidates.values()))
        a = val(first, torch.Generator(device).manual_seed(1))
        b = val(first, torch.Generator(device).manual_seed(2))
        if not torch.equal(a, b):
            raise ValueError(f"sampler {solver!r} is stochastic (two runs from the same noise differ): tune_grid fits the "
                             "grids of deterministic solvers (euler, heun, ddim with eta=0, dpmpp_2m, ...)")
        # the references; Heun is 2nd order, so its error is about 1/3 of its distance to the solve of half the steps
        ref_fit = fit(step_grid(raw, reference, "karras"), fn=heun, name="heun")
        ref_val = val(step_grid(raw, reference, "karras"), fn=heun, name="heun")
        coarse = val(step_grid(raw, max(2, reference // 2), "karras"), fn=heun, name="heun")
        ref_rmse = math.sqrt(float(_errors(coarse, ref_val).mean())) / 3.0
        bar.update(5)
        fixed = {}
        for spacing, s in candidates.items():
            fixed[spacing] = _trimmed(fit.errors(s, ref_fit), trim)
            bar.update()
        best_fixed = min(fixed, key=fixed.get)
        best = {"loss": fixed[best_fixed], "sigmas": candidates[best_fixed], "start": best_fixed}
        current = best_fixed

        def objective(theta: np.ndarray) -> float:
            return evaluate(param.sigmas(theta)) / scale

        def evaluate(s: list[float]) -> float:
            nonlocal evals
            if evals >= max_evals or (time_limit is not None and time.perf_counter() - t_start > time_limit):
                raise _Stop
            evals += 1
            if not _valid(s):  # levels that collapsed onto each other in floating point
                return 1e6 * scale
            loss = _trimmed(fit.errors(s, ref_fit), trim)
            bar.update()
            if loss < best["loss"]:
                best.update(loss=loss, sigmas=s, start=current)
                bar.set_postfix(error=f"{math.sqrt(loss):.3g}")
            return loss if math.isfinite(loss) else 1e6 * scale

        # 1. a scan of a 2-parameter family (Karras's rho, and the smallest level raised) for a start in the right basin;
        # 2. Powell from the best grid so far, restarted from its result while that gains 1%, then from the best fixed
        #    spacing if that is another grid, while the budget lasts. Every grid evaluated is a candidate.
        if steps > 1 and best["loss"] > 0:
            scale = best["loss"]
            starts = {name: (s, fixed[name]) for name, s in candidates.items()}
            try:
                for name, s in _family(hi, lo, steps):
                    if not any(np.allclose(s, other, rtol=1e-9, atol=0) for other in candidates.values()):
                        current = name
                        starts[name] = (s, evaluate(s))
                first = min(starts, key=lambda k: starts[k][1])
                for current in dict.fromkeys([first, best_fixed]):
                    theta, here = param.theta(starts[current][0]), starts[current][1]
                    while True:
                        result = minimize(objective, theta, method="Powell",
                                          options={"xtol": 1e-2, "ftol": 1e-3, "maxfev": max_evals})
                        gained, here, theta = here - result.fun * scale, min(here, result.fun * scale), result.x
                        if not gained > 0.01 * here:
                            break
            except _Stop:
                pass
        # the check on fresh noise: the search's grid against every fixed spacing
        checked = {}
        for spacing, s in candidates.items():
            checked[spacing] = val.errors(s, ref_val)
        searched = best["sigmas"] not in candidates.values()
        if searched:
            checked["optimized"] = val.errors(best["sigmas"], ref_val)
        bar.update(len(checked))
    finally:
        bar.close()
    validation = {k: _trimmed(e, trim) for k, e in checked.items()}
    chosen = min(validation, key=validation.get)
    sigmas = best["sigmas"] if chosen == "optimized" else candidates[chosen]
    info = {
        "chosen": chosen, "start": best["start"], "trim": trim,
        "fit": {**{k: math.sqrt(v) for k, v in fixed.items()}, **({"optimized": math.sqrt(best["loss"])} if searched else {})},
        "validation": {k: math.sqrt(v) for k, v in validation.items()},
        "validation_rmse": {k: math.sqrt(float(e.mean())) for k, e in checked.items()},
        "reference_steps": reference, "reference_rmse": ref_rmse, "n": n, "seed": seed,
        "evals": evals, "runs": fit.runs + val.runs, "nfe": fit.nfe + val.nfe,
        "wall_time": time.perf_counter() - t_start, "method": METHOD_VERSION, "dtype": str(dtype).replace("torch.", ""),
    }
    if options:
        info["options"] = options
    return _tuned(sigmas, raw.schedule.variance_preserving, "optimized", solver, fingerprint, info)


# --------------------------------------------------------------------------------------------- files
def save_grid(grid: StepGrid, path: Union[str, os.PathLike]) -> None:
    """Write ``grid`` to a JSON file (atomically): ``{"format": "scoregen-grid", "version": 1, "sigmas": [...],
    "steps": ..., "spacing": ..., "variance_preserving": ..., "solver": ..., "model": ..., "info": {...}}``, with
    ``sigmas`` the VE levels noisiest first, ending with 0 (what a sampler's ``sigmas=`` takes as they are)."""
    from ..io import atomic_write, check_output_file

    if not isinstance(grid, StepGrid):
        raise ValueError(f"save_grid writes a StepGrid (e.g. tune_grid's result), got {type(grid).__name__}")
    check_output_file(path, ".json")
    doc = {"format": GRID_FORMAT, "version": 1, "sigmas": [float(v) for v in grid.s], "steps": len(grid),
           "spacing": grid.spacing, "variance_preserving": bool(grid.variance_preserving),
           "solver": getattr(grid, "solver", None) or None, "model": getattr(grid, "model", None),
           "info": _jsonable(getattr(grid, "info", {}) or {})}
    text = json.dumps(doc, indent=1, allow_nan=False)
    with atomic_write(path) as f:
        f.write(text + "\n")


def _jsonable(value: Any) -> Any:
    """``value`` with what JSON cannot hold made plain: inf and NaN as null, other objects as their str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def load_grid(path: Union[str, os.PathLike], model=None) -> TunedGrid:
    """A grid written by :func:`save_grid`, to pass as a sampler's ``sigmas=``. With ``model``, the grid is built in
    that model's coordinates, and a UserWarning says so when the file was fitted to another model."""
    from ..io import read_json
    from ._common import warn_at_caller

    path = os.fspath(path)
    try:
        doc = read_json(path, MAX_GRID_BYTES, "a step-grid file")
    except FileNotFoundError:
        raise FileNotFoundError(f"grid file {path!r} does not exist") from None
    if not isinstance(doc, dict) or doc.get("format") != GRID_FORMAT:
        raise ValueError(f"{path}: not a scoregen grid file (expected a JSON object with \"format\": \"{GRID_FORMAT}\", "
                         "as save_grid writes)")
    if doc.get("version") != 1:
        raise ValueError(f"{path}: grid file version {short(doc.get('version'))} is not supported (this scoregen reads 1)")
    sig = doc.get("sigmas")
    if not isinstance(sig, list) or len(sig) < 2 or len(sig) > MAX_LEVELS + 1 or \
            any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in sig):
        raise ValueError(f"{path}: 'sigmas' must be a list of 2 to {MAX_LEVELS + 1} finite numbers, got {short(sig)}")
    s = np.asarray(sig, dtype=np.float64)
    if s[-1] != 0 or np.any(s[:-1] <= 0) or np.any(np.diff(s) >= 0):
        raise ValueError(f"{path}: 'sigmas' must be positive and strictly decreasing, noisiest first, ending with 0; got "
                         f"{short(sig)}")
    steps = doc.get("steps", len(sig) - 1)
    if steps != len(sig) - 1:
        raise ValueError(f"{path}: 'steps' is {short(steps)} but 'sigmas' holds {len(sig) - 1} steps")
    solver, fp, info = doc.get("solver"), doc.get("model"), doc.get("info") or {}
    if not isinstance(solver, (str, type(None))) or not isinstance(fp, (str, type(None))) or not isinstance(info, dict):
        raise ValueError(f"{path}: 'solver' and 'model' must be strings (or null), 'info' an object")
    spacing = doc.get("spacing", "explicit sigmas")
    spacing = spacing if isinstance(spacing, str) else "explicit sigmas"
    vp = doc.get("variance_preserving", True)
    if model is not None:
        vp = bool(_unwrap(model).schedule.variance_preserving)
        if fp is not None:
            try:
                mine = model_fingerprint(model)
            except ValueError:
                mine = fp
            if mine != fp:
                warn_at_caller(f"{path}: this grid was fitted to another model (fingerprint {fp[:12]}, this model's "
                               f"{mine[:12]}); it is valid, but not tuned for this model", UserWarning)
    elif not isinstance(vp, bool):
        raise ValueError(f"{path}: 'variance_preserving' must be true or false")
    return _tuned(s.tolist(), vp, spacing, solver or "", fp, info)


# --------------------------------------------------------------------------------------------- the cache
def grid_cache_dir() -> str:
    """Where :func:`optimized_grid` keeps its grids: ``$SCOREGEN_CACHE/grids``, else ``$XDG_CACHE_HOME/scoregen/grids``,
    else ``~/.cache/scoregen/grids``."""
    from ..io import cache_dir
    return cache_dir("grids")


def _cache_path(directory: str, fingerprint: str, solver: str, steps: int, options: dict) -> str:
    key = _digest(fingerprint, solver, str(steps), json.dumps(options, sort_keys=True, default=repr),
                  f"method={METHOD_VERSION}", f"n={DEFAULT_N},{DEFAULT_N_NETWORK}", f"trim={DEFAULT_TRIM}",
                  f"reference={DEFAULT_REFERENCE_STEPS}")
    return os.path.join(directory, f"{solver}-{steps}-{key[:32]}.json")


def optimized_grid(model, solver: str, steps: int, *, options: Optional[dict] = None,
                   cache_dir: Union[str, os.PathLike, None] = None, progress: Optional[bool] = None) -> TunedGrid:
    """:func:`tune_grid`'s grid for (model, solver with its ``options``, steps) with the search's defaults, searched
    once and then read from a JSON file in ``cache_dir`` (default :func:`grid_cache_dir`), keyed by the model's
    fingerprint (:func:`model_fingerprint`), the solver, its options, the steps and the search's version. The grid is
    fitted to the model without its x0 hook (clipping), as ``scoregen tune-grid`` does. A cache hit evaluates nothing
    and prints nothing. The file is written atomically; a damaged one is searched again and replaced; a cache
    folder that cannot be written costs a warning (the grid is still returned).

    Raises:
        ValueError: a model that cannot be fingerprinted (guidance, custom models): use :func:`tune_grid` and pass
            the grid as ``sigmas=``; an unknown or stochastic solver; bad steps.
    """
    from ._common import warn_at_caller

    _solver(solver)
    steps = check_int("steps", steps, 1, MAX_LEVELS)
    fingerprint = model_fingerprint(model)
    raw = _unwrap(model)
    directory = os.fspath(cache_dir) if cache_dir is not None else grid_cache_dir()
    options = dict(options or {})
    path = _cache_path(directory, fingerprint, solver, steps, options)
    if os.path.isfile(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a mismatch is a damaged entry here, not a warning
                grid = load_grid(path, raw)
            if grid.solver == solver and len(grid) == steps and grid.model == fingerprint:
                return grid
        except (ValueError, OSError, UserWarning):
            pass
    grid = tune_grid(raw, solver, steps, progress=progress, options=options or None)
    try:
        save_grid(grid, path)
    except (ValueError, OSError) as e:
        warn_at_caller(f"could not cache the optimized grid in {directory!r} ({e}); set ${CACHE_ENV} to a writable "
                       "folder to keep it", UserWarning)
    return grid
