"""Step grids: the decreasing sequence of noise levels a sampler visits, noisiest first, ending clean.

One concept for every sampler. A :class:`StepGrid` holds the levels in the model's own coordinates ``(m, sigma)``
(DDPM's and DDIM's update rules use them as they are), ends with the clean level ``(1, 0)``, and gives the VE noise
``s = sigma / m`` that the ODE/SDE solvers step in. It is computed once per run, as Python floats.

Spacings (:data:`SPACINGS`), for ``steps`` steps (``steps`` noisy levels, then 0):

* ``trained``: ``steps`` evenly spaced trained levels, the noisiest and the cleanest included (scoregen's default
  for ddpm / ddim; a continuous-time model: uniform in its own time).
* ``leading`` / ``trailing`` / ``linspace``: diffusers' ``timestep_spacing`` over the T trained steps, counted from
  the clean end: leading ``k * (T // steps)``, trailing ``round(T - k * T / steps) - 1``, linspace
  ``round(linspace(0, T - 1, steps))`` (diffusers' DDIMScheduler's three spacings; its default is leading. diffusers'
  multistep schedulers' own ``linspace`` drops timestep 0 from ``steps + 1`` points: pass their timesteps with
  ``timesteps=`` to reproduce them).
  Discrete-time models only.
* ``karras``: EDM's ``sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho`` in VE sigma, rho = 7,
  between the model's largest and smallest trained VE levels.
* ``logsnr``: uniform in log-SNR between the same bounds (geometric in VE sigma).
* ``time``: uniform in the schedule's own time label (fractional between a discrete model's trained labels).
* ``optimized``: a grid fitted to the model, solver and budget (:mod:`scoregen.samplers.tune`).

or explicit levels: ``sigmas=[...]`` (VE sigmas, noisiest first; the final 0 is added when missing) or
``timesteps=[...]`` (the model's own time labels, noisiest first), or ``timesteps="ddim25"`` / ``"10,15,20"``:
improved-diffusion's respacing strings (:func:`respace`) over a discrete model's trained steps.

**Snapping.** A level between a discrete-time model's trained levels is answered at the nearest trained level
(``time="nearest"``, the default of :class:`~scoregen.NetworkScoreModel`) or at the fractional label
(``time="fractional"``). Grids built from trained labels (``trained``, ``leading``, ``trailing``, ``linspace``,
integer ``timesteps``) are exact either way; ``karras``, ``logsnr``, ``time`` and explicit ``sigmas`` fall between
trained levels, so a nearest-level model answers a slightly different level than the solver assumes (an error of
order of the trained spacing, small at T = 1000: adjacent log-SNRs differ by at most 0.03 on DDPM's linear schedule,
except at the cleanest end). Exact mixtures answer every level exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from .._checks import check_int, check_real
from ..schedules import MAX_LEVELS, Schedule, m_sigma_from_log_snr, ve_levels

__all__ = ["StepGrid", "step_grid", "SPACINGS", "respace", "ve_to_model"]

SPACINGS = ("trained", "leading", "trailing", "linspace", "karras", "logsnr", "time", "optimized")
_DISCRETE_ONLY = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class StepGrid:
    """A sampler's levels, noisiest first, ending with the clean level (m=1, sigma=0), in the model family's coordinates:
    VE (m = 1) for variance-exploding models, VP (m^2 + sigma^2 = 1) for the others. A sub-VP model's grid is in VP
    coordinates too, at the same log-SNR: its network is answered in its own coordinates by the level mapping.

    ``m`` and ``sigma`` are tuples of Python floats of length ``steps + 1``; ``spacing`` says how they were made.
    """

    m: tuple[float, ...]
    sigma: tuple[float, ...]
    spacing: str = "explicit"
    variance_preserving: bool = True

    def __len__(self) -> int:
        """The number of steps (noisy levels)."""
        return len(self.sigma) - 1

    @property
    def s(self) -> list[float]:
        """The VE noise levels ``sigma / m`` (the last is 0), where the ODE/SDE solvers step."""
        return [sg / mm for mm, sg in zip(self.m, self.sigma)]

    def starting_at(self, level: float) -> "StepGrid":
        """The grid from VE level ``level`` down: ``level`` itself, then the grid's levels below it (SDEdit).

        A grid level closer to ``level`` than a quarter of its own step below (in log sigma) is dropped: the start
        replaces it. A first step much shorter than the next would make the multistep solvers' step ratios blow up
        (their divided differences divide by it); a quarter keeps the ratio of consecutive steps at least 1/4. ``level`` may not exceed the grid's noisiest level."""
        s = self.s
        level = check_real("start_level (a VE noise level sigma / m)", level, 0.0, s[0])
        keep = [i for i, v in enumerate(s) if v < level]
        if len(keep) > 1 and s[keep[1]] > 0 and \
                math.log(level / s[keep[0]]) < 0.25 * math.log(s[keep[0]] / s[keep[1]]):
            keep = keep[1:]
        m_l, sigma_l = ve_to_model(level, self.variance_preserving)
        return StepGrid((m_l, *(self.m[i] for i in keep)), (sigma_l, *(self.sigma[i] for i in keep)),
                        f"{self.spacing}, from sigma {level:.4g}", self.variance_preserving)

    def describe(self) -> str:
        """One line: "10 steps, karras, VE sigma 157.4 -> 0.01 -> 0"."""
        s = self.s
        return f"{len(self)} steps, {self.spacing}, VE sigma {s[0]:.4g} -> {s[-2]:.4g} -> 0"


def ve_to_model(s: float, variance_preserving: bool) -> tuple[float, float]:
    """``(m, sigma)`` of VE level ``s`` in VP coordinates (``m = 1/sqrt(1 + s^2)``, ``sigma = s m``) or VE (1, s)."""
    if not variance_preserving:
        return 1.0, float(s)
    h = math.hypot(1.0, s)  # sqrt(1 + s^2) without overflow for huge s
    return 1.0 / h, s / h


def _from_labels(schedule: Schedule, t, spacing: str) -> StepGrid:
    m, sigma = m_sigma_from_log_snr(np.asarray(schedule.log_snr(np.asarray(t, dtype=np.float64))), schedule.variance_preserving)
    return StepGrid(tuple(float(v) for v in np.atleast_1d(m)) + (1.0,), tuple(float(v) for v in np.atleast_1d(sigma)) + (0.0,),
                    spacing, schedule.variance_preserving)


def _from_ve(schedule: Schedule, s: Sequence[float], spacing: str) -> StepGrid:
    pairs = [ve_to_model(float(v), schedule.variance_preserving) for v in s]
    return StepGrid(tuple(p[0] for p in pairs) + (1.0,), tuple(p[1] for p in pairs) + (0.0,), spacing,
                    schedule.variance_preserving)


def _diffusers_positions(T: int, steps: int, spacing: str) -> np.ndarray:
    """Positions 0..T-1 (0 = the cleanest trained step), noisiest first, as diffusers' ``timestep_spacing``."""
    if spacing == "leading":
        pos = np.arange(steps, dtype=np.int64) * (T // steps)
    elif spacing == "trailing":
        # [:steps]: arange's float stop lets a last value of about -6e-13 through for some steps (61, 103, ...),
        # which diffusers keeps as timestep -1
        pos = np.round(np.arange(T, 0, -T / steps))[:steps].astype(np.int64) - 1
    else:  # linspace
        pos = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)
    return np.unique(pos)[::-1]


def respace(T: int, spec: str) -> list[int]:
    """Trained-step positions (0 = the cleanest of T), ascending, picked by improved-diffusion's respacing string.

    ``"ddimN"``: the stride-k positions ``0, k, 2k, ...`` for the smallest k giving exactly N of them (DDIM's
    uniform skip). ``"a,b,c"``: the T steps cut into len(spec) consecutive sections as equal as possible (the first
    ``T % sections`` one longer), and in a section of ``size`` steps ``count`` positions at the rounded partial sums of
    the stride ``(size - 1) / (count - 1)`` from its start (its first step only for a count of 1). The stride is
    accumulated in floating point, as the original does: ``round(k * stride)`` differs where the sum's rounding
    error crosses a half (T = 16, "15": position 7, not 8).
    """
    T = check_int("T (trained steps)", T, 1, MAX_LEVELS)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a respacing is a string like 'ddim25' or '10,15,20', got {spec!r}")
    text = spec.strip()
    if text.startswith("ddim"):
        want = check_int(f"the step count of {text!r}", int(text[4:]) if text[4:].isdigit() else text[4:])
        for k in range(1, T):
            if len(range(0, T, k)) == want:
                return list(range(0, T, k))
        raise ValueError(f"no stride over {T} steps gives exactly {want} steps for {text!r}; try a nearby count")
    try:
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        raise ValueError(f"a respacing is 'ddimN' or comma-separated section counts like '10,15,20', got {spec!r}") from None
    sections = len(counts)
    if sections > T or any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"respacing {spec!r}: 1 to {T} sections of non-negative step counts, at least one step in all")
    out, first = [], 0
    for j, count in enumerate(counts):
        size = T // sections + (j < T % sections)
        if count > size:
            raise ValueError(f"respacing {spec!r}: section {j} has {size} steps, fewer than the {count} asked for")
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            out.append(first + round(position))
            position += stride
        first += size
    return sorted(set(out))


def _check_decreasing(name: str, values: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(np.diff(values) >= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} must be strictly decreasing in noise ({what}, noisiest first); "
                         f"{name}[{i}] = {float(values[i]):g} is followed by {float(values[i + 1]):g}")


def step_grid(
    model,
    steps: Optional[int] = None,
    spacing: Optional[str] = None,
    *,
    sigmas: Union[Sequence[float], StepGrid, None] = None,
    timesteps: Optional[Sequence[float]] = None,
    rho: Optional[float] = None,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    default_steps: int = 50,
    default_spacing: str = "trained",
    solver: Optional[str] = None,
    solver_options: Optional[dict] = None,
) -> StepGrid:
    """The step grid for ``model`` (anything with a ``schedule``): ``steps`` steps with ``spacing``, or explicit
    ``sigmas`` (VE sigmas, or a :class:`StepGrid`) or ``timesteps`` (the model's own labels), noisiest first.

    ``steps`` defaults to ``default_steps`` (at most the trained levels of a discrete model, for trained spacings),
    ``spacing`` to ``default_spacing``. ``rho`` (karras only, default 7), ``sigma_min`` and ``sigma_max`` shape
    ``karras`` and ``logsnr`` (the bounds default to the model's trained VE range); given to another spacing they are
    refused. ``optimized`` needs ``solver``, the sampler the grid is fitted to, and ``solver_options``, its options
    (``eta``, ``order``, ...): the grid is fitted to the sampler as it will run.
    """
    schedule: Schedule = model.schedule
    shaping = [k for k, v in (("rho", rho), ("sigma_min", sigma_min), ("sigma_max", sigma_max)) if v is not None]
    chosen = "an explicit grid" if sigmas is not None or timesteps is not None else \
        repr(default_spacing if spacing is None else spacing)
    if shaping and not (chosen in ("'karras'", "'logsnr'") and (chosen == "'karras'" or "rho" not in shaping)):
        raise ValueError(f"{', '.join(shaping)} shape(s) the karras grid (rho, sigma_min, sigma_max) or the logsnr grid "
                         f"(sigma_min, sigma_max), not {chosen}: leave them out, or use spacing='karras' / 'logsnr'")
    if sigmas is not None or timesteps is not None:
        if sigmas is not None and timesteps is not None:
            raise ValueError("give sigmas or timesteps, not both: each is a whole grid")
        if spacing is not None:
            raise ValueError(f"spacing={spacing!r} and an explicit grid ({'sigmas' if sigmas is not None else 'timesteps'}) "
                             "were both given: the explicit levels are the whole grid, leave spacing out")
        grid = _explicit(schedule, sigmas, timesteps)
        if steps is not None and check_int("steps", steps) != len(grid):
            raise ValueError(f"steps={steps} but the explicit grid has {len(grid)} steps; leave steps out")
        return grid
    spacing = default_spacing if spacing is None else spacing
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {list(SPACINGS)}, or pass sigmas=[...] or timesteps=[...]")
    discrete = schedule.times is not None
    if steps is None:
        steps = min(default_steps, len(schedule.times)) if discrete and spacing in ("trained", *_DISCRETE_ONLY) else default_steps
    steps = check_int("steps", steps, 1, MAX_LEVELS)
    if spacing == "trained":
        if discrete and steps > len(schedule.times):
            raise ValueError(f"steps must be between 1 and the model's {len(schedule.times)} trained levels for spacing "
                             f"'trained', got {steps}; other spacings (karras, logsnr, time) take any number")
        return _from_labels(schedule, schedule.grid(steps), "trained")
    if spacing in _DISCRETE_ONLY:
        if not discrete:
            raise ValueError(f"spacing {spacing!r} picks trained steps, but this model is continuous-time: use "
                             "'time', 'karras' or 'logsnr'")
        T = len(schedule.times)
        if steps > T:
            raise ValueError(f"steps must be between 1 and the model's {T} trained levels for spacing {spacing!r}, got {steps}")
        return _from_labels(schedule, schedule.times[::-1][_diffusers_positions(T, steps, spacing)], spacing)
    if spacing == "time":
        if discrete:
            t = np.linspace(schedule.times[0], schedule.times[-1], steps)
        else:
            t = schedule.grid(steps)
        return _from_labels(schedule, t, "time")
    if spacing == "optimized":
        from .tune import optimized_grid  # the search runs samplers: imported only when asked for

        if solver is None:
            raise ValueError("spacing='optimized' fits the grid to one sampler: call it through a sampler or pass solver=")
        return optimized_grid(model, solver, steps, options=solver_options)
    hi, lo = ve_levels(schedule)
    sigma_max = hi if sigma_max is None else check_real("sigma_max", sigma_max, 0.0, lo_open=True)
    sigma_min = lo if sigma_min is None else check_real("sigma_min", sigma_min, 0.0, lo_open=True)
    if not sigma_max > sigma_min:
        raise ValueError(f"need sigma_max > sigma_min > 0 for spacing {spacing!r}, got {sigma_max:g} and {sigma_min:g}")
    if steps == 1:
        return _from_ve(schedule, [sigma_max], spacing)
    if spacing == "karras":
        rho = 7.0 if rho is None else check_real("rho", rho, 0.0, lo_open=True)
        ramp = np.linspace(0.0, 1.0, steps)
        s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        return _from_ve(schedule, s.tolist(), "karras" if rho == 7.0 else f"karras(rho={rho:g})")
    return _from_ve(schedule, np.geomspace(sigma_max, sigma_min, steps).tolist(), "logsnr")


def _explicit(schedule: Schedule, sigmas, timesteps) -> StepGrid:
    if isinstance(sigmas, StepGrid):
        s = np.asarray(sigmas.s, dtype=np.float64)
        if len(sigmas) < 1 or s[-1] != 0.0 or not np.all(np.isfinite(s)) or np.any(s[:-1] <= 0):
            raise ValueError(f"a StepGrid needs at least one positive finite level before its final clean level "
                             f"(sigma = 0), got VE sigmas {s.tolist()}"[:300])
        _check_decreasing("the StepGrid's VE sigmas", s, "VE sigma")
        return sigmas
    name, values = ("sigmas", sigmas) if sigmas is not None else ("timesteps", timesteps)
    if name == "timesteps" and isinstance(values, str):
        if schedule.times is None:
            raise ValueError(f"timesteps={values!r} respaces trained steps, but this model is continuous-time")
        return _from_labels(schedule, schedule.times[::-1][respace(len(schedule.times), values)][::-1], f"respaced {values}")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} must be a sequence of numbers, noisiest first, got {type(values).__name__}")
    if len(values) > MAX_LEVELS + 1:
        raise ValueError(f"{name} has {len(values)} entries; a grid has at most {MAX_LEVELS} steps")
    try:
        arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a flat sequence of numbers, noisiest first, got {values!r}"[:300]) from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat (1-D) sequence of numbers, got shape {arr.shape}")
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers, got {values!r}"[:300])
    if name == "sigmas":
        if arr[-1] == 0.0:
            arr = arr[:-1]
        if arr.size == 0 or np.any(arr <= 0):
            raise ValueError("sigmas must be positive VE noise levels (sigma / m), noisiest first, optionally ending with 0")
        _check_decreasing("sigmas", arr, "VE sigma")
        return _from_ve(schedule, arr.tolist(), "explicit sigmas")
    if schedule.times is not None:
        lo, hi = float(schedule.times.min()), float(schedule.times.max())
    else:
        lo, hi = 0.0, schedule.t_max
    outside = np.flatnonzero((arr < lo) | (arr > hi))
    if outside.size:
        raise ValueError(f"timesteps[{int(outside[0])}] = {arr[outside[0]]:g} is outside the model's time labels "
                         f"[{lo:g}, {hi:g}]")
    lam = np.asarray(schedule.log_snr(arr), dtype=np.float64).reshape(-1)
    if lam.size > 1 and lam[-1] == np.inf:  # a last clean label (continuous time t = 0): the grid's final level
        arr, lam = arr[:-1], lam[:-1]
    if not np.all(np.isfinite(lam)):
        raise ValueError(f"timesteps {arr[~np.isfinite(lam)].tolist()} have no finite noise level (only the last "
                         "label may be the clean one)")
    _check_decreasing("the log-SNR of timesteps", -lam, "the model's labels")
    return _from_labels(schedule, arr, "explicit timesteps")
