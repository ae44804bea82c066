"""Samplers: one signature, chosen by name in one call.

Every sampler is a function ``sampler(model, z, *, generator, y, start, callback, progress, **options) -> x0``
where ``z`` is standard normal noise of shape (B, *shape) that the sampler scales to its own first level (or uses to
noise ``start``, an SDEdit start), and whose options include its step grid (``steps``, ``spacing``, ``sigmas``,
``timesteps``: :mod:`scoregen.samplers.grids`).
:func:`sample` draws ``z`` and hands the sampler its noise source ``generator`` (per-sample streams of the seed,
:mod:`scoregen.streams`, so that sample i depends on (seed, i) alone; samplers draw through
:func:`scoregen.streams.normal_`), counts network evaluations (NFE), times the run and checks the model and the
result, so swapping samplers on a model is one argument::

    sample(model, "ddpm", n=1000, seed=0)
    sample(model, "langevin", n=1000, seed=0, levels=10, steps_per_level=100)
    sample(model, "langevin", n=1000, seed=0, **langevin_budget(50, 33))  # exactly 50 evaluations
    sample(model, "dpmpp_2m", n=1000, seed=0, steps=10, spacing="optimized")  # a grid fitted to this model

Before their loop, the samplers declare the levels they will query (:meth:`~scoregen.ScoreModel.prepare`), so that a
network adapter maps its whole grid at once instead of one level at a time inside the loop.

The samplers' loops hold the algorithms only: :func:`sample` hands them the model wrapped in
:class:`~scoregen.samplers._guard.Guarded`, which gives the model a copy of the state and checks what it returns,
and sizes its batches before it allocates anything (:mod:`scoregen.samplers._batches`).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..models import ScoreModel, X0Hook, check_like, class_labels
from ..streams import SampleStreams
from .._checks import check_int, check_real
from . import _batches, _guard
from ._common import Start
from .ddim import ddim
from .ddpm import ddpm
from .grids import SPACINGS, StepGrid, step_grid
from .langevin import LangevinGrid, langevin, langevin_budget, langevin_grid
from .multistep import deis, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, unipc
from .ode import edm, euler, heun, ipndm, ode
from .sde import euler_maruyama, pc
from .tune import TunedGrid, load_grid, optimized_grid, save_grid, tune_grid

__all__ = ["SAMPLERS", "SampleResult", "sample", "sampler_options", "ddpm", "ddim", "langevin", "langevin_grid",
           "langevin_budget", "LangevinGrid", "euler", "heun", "edm", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc",
           "deis", "ipndm", "euler_maruyama", "pc", "ode", "batch_ranges", "step_grid", "StepGrid", "SPACINGS", "tune_grid",
           "optimized_grid", "save_grid", "load_grid", "TunedGrid"]

#: Every sampler by name: the classical three, then the ODE solvers, then the SDE solvers (docs/samplers.md).
SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": ddpm, "langevin": langevin, "ddim": ddim,
    "euler": euler, "heun": heun, "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m, "unipc": unipc, "deis": deis,
    "ipndm": ipndm, "ode": ode,
    "edm": edm, "dpmpp_2m_sde": dpmpp_2m_sde, "euler_maruyama": euler_maruyama, "pc": pc,
}
_SHARED = {"generator", "y", "start", "callback", "progress"}


@dataclass
class SampleResult:
    """Samples of shape (n, *shape), the number of model evaluations per trajectory (of the batch that took the most),
    wall-clock seconds of sampling, the sampler's name, the seed used (None when a generator was passed), the
    sampler's options and the batch size the n samples were drawn in (the most of them drawn at once)."""

    samples: Tensor
    nfe: int
    wall_time: float
    sampler: str
    seed: Optional[int]
    options: dict = field(default_factory=dict)
    batch_size: Optional[int] = None


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


def _check_seed(seed: object, generator: Optional[torch.Generator], device: torch.device) -> Optional[int]:
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both: the samples would come from the generator while the "
                         "result reports the seed")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device} but sampling runs on {device}: "
                         f"make it with torch.Generator({str(device)!r})")
    return None if seed is None else check_int("seed", seed, 0, 2**63 - 1)


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
    x_start: Optional[Tensor] = None,
    start_level: Optional[float] = None,
    index_offset: int = 0,
    **options,
) -> SampleResult:
    """Draw ``n`` samples from ``model`` with ``sampler`` (a name in :data:`SAMPLERS` or a sampler function).

    Args:
        n: the number of samples, an integer >= 1 (a Python or numpy integer; not a float or a bool).
        seed / generator: the source of every random draw, one or the other; same seed, same samples. ``seed`` is
            an integer in [0, 2**63). With neither, a fresh seed is drawn and reported in the result. With a seed,
            sample i's initial noise and every step's noise come from per-sample streams (:mod:`scoregen.streams`)
            and depend on (seed, i) alone; a ``generator`` is drawn from in order, so its samples depend on the
            batches.
        y: class label(s) passed to the model: an int, or an integer tensor of shape (n,); guidance uses it.
        x0_hook: applied to x0_hat at every step (e.g. :func:`scoregen.clip_x0`), via :class:`~scoregen.X0Hook`.
        progress: show a progress bar (None: only on a terminal).
        batch_size: draw the n samples in consecutive batches of at most this many (None: as many as fit in a
            fixed 2 GiB by the estimate below, so the same on every machine), concatenated; with a seed the samples
            do not depend on it. ``callback`` and the progress bar run once per batch. A model holding per-sample
            data (a measurement with one observation per sample) needs all n samples in one batch.
        index_offset: the index of the first sample (with a seed): the result is rows [index_offset, index_offset
            + n) of the run of this seed, whatever n, so a range of indices can be split over calls, processes or
            machines (``y``, ``x_start`` and the result still hold these n samples only).
        x_start / start_level: start from a given state instead of the prior draw, shape (n, *shape) or (*shape).
            With ``start_level`` (a VE noise level sigma / m; SDEdit, img2img), ``x_start`` is clean data: it is
            noised to that level with the run's initial noise (``m x_start + sigma z``) and the sampler solves down
            from there on the part of its grid below that level, the level itself first. Without it, ``x_start`` is
            the state at the grid's first level, in the grid's coordinates (NCSN's uniform start): VE for VE models,
            VP for the others (a sub-VP state x at level (m, sigma) is ``x * m_VP / m`` there); langevin, whose
            levels are VE (m = 1), reads it in VE coordinates.
        options: the sampler's own options, e.g. ``steps``, ``spacing``, ``variance``, ``eta``, ``levels``.

    With a seed, sample i depends on (seed, i) alone: n = 100 once, 2 x 50 (``index_offset=50`` for the second) or
    any batch size give the same noise, and the same samples bit for bit on the same device type and dtype where the
    model's arithmetic does not depend on the batch (exact targets; a network needs the same batches: split at
    multiples of ``batch_size``). ``pc`` couples samples: it runs whole groups of indices (with per-sample ``y`` or
    ``x_start``, split at multiples of its group); the adaptive ``ode`` steps each sample on its own. The default batch
    size depends on the model, n, the shape and the dtype only, never on the machine's free memory.

    Memory is estimated before anything is allocated (:mod:`scoregen.samplers._batches`): a sample in flight holds
    about 6 copies of its state, what the model declares (:meth:`~scoregen.ScoreModel.eval_bytes_per_sample`) and
    the networks' activations, measured by one forward pass on a single sample. The default batch is as many
    samples as fit in ``DEFAULT_BATCH_BYTES`` (2 GiB). The result (n * prod(shape) * itemsize) must fit in half of
    the available memory (:func:`scoregen.memory.available_memory`: RAM, address-space and cgroup limits on CPU,
    free memory on CUDA), and the result plus one batch in all of it; otherwise a ValueError says what fits.

    The model never gets the sampler's state itself: unless it :attr:`~scoregen.ScoreModel.protects_input` (exact
    mixtures, network adapters, which copy for their network), every evaluation gets a copy, so a model that writes
    to its input (an in-place activation, ``x.mul_``) cannot corrupt the samples.

    Returns:
        :class:`SampleResult` with ``samples`` of shape (n, *shape) and ``nfe``, the model evaluations per batch,
        which is the cost of one trajectory (every batch makes the same number, but for the adaptive ``ode``, whose
        batches run as long as their slowest sample: the largest); ``wall_time`` covers all batches.

    Raises:
        ValueError: bad arguments (n, seed with generator, y, batch_size, unknown options); a result too large for
            the memory, or a batch (chosen or given) estimated not to fit beside it; a model that returns something
            other than a tensor with x's shape, dtype and device.
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
    index_offset = check_int("index_offset", index_offset, 0)
    batch_size = None if batch_size is None else check_int("batch_size", batch_size)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (torch.float32, torch.float64, ...), got {dtype!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    seed = _check_seed(seed, generator, device)
    labels = None if y is None else class_labels(y, n, device, who="y: ")  # a view for an int: nothing of size n
    x_start = _check_start(x_start, start_level, n, model.shape, name, params)
    stack = model if x0_hook is None else X0Hook(model, x0_hook)

    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed
    elif index_offset:
        raise ValueError("index_offset places samples in a seeded run's per-sample streams: pass seed, not generator")
    batch, group = _batch(n, stack, fn, dtype, device, labels, batch_size, seed is not None)
    if group:
        per_sample = [what for what, v in (("labels y", y), ("x_start", x_start))  # that differ between samples
                      if isinstance(v, Tensor) and v.ndim > (0 if what == "labels y" else len(model.shape))
                      and v.shape[0] > 1 and not bool((v == v[:1]).all())]
        if per_sample and index_offset % group:
            raise ValueError(f"sampler {name!r} couples samples in groups of {group} indices, so with per-sample "
                             f"{' and '.join(per_sample)} a run must start at a multiple of {group} (index_offset "
                             f"{index_offset}): split the indices at multiples of {group}")
        edges = [index_offset, *range((index_offset // batch + 1) * batch, index_offset + n, batch), index_offset + n]
    else:
        edges = [*range(index_offset, index_offset + n, batch), index_offset + n]
    out, nfe, wall, largest = None, 0, 0.0, 0
    for first, last in zip(edges[:-1], edges[1:]):
        start, b = first - index_offset, last - first
        largest = max(largest, b)
        lo, hi = (first // group * group, -(-last // group) * group) if group else (first, last)
        rows = slice(first - lo, first - lo + b)
        if seed is not None:  # this batch's samples' own streams: the first draw is their initial noise
            noise = SampleStreams(seed, lo, hi, model.shape, device=device, dtype=dtype)
            z = noise.normal()
        else:
            noise = generator
            z = torch.randn((b, *model.shape), generator=generator, device=device, dtype=dtype)
        guarded = _guard.Guarded(stack, name, type(model).__name__, z)
        t0 = time.perf_counter()
        with torch.no_grad():
            if x_start is not None:
                part = x_start[start:start + b] if x_start.shape[0] == n else x_start.expand(b, *x_start.shape[1:])
                options["start"] = Start(_pad(part, rows, hi - lo), start_level)
            x = fn(guarded, z, generator=noise, y=None if labels is None else _pad(labels[start:start + b], rows, hi - lo),
                   callback=callback, progress=progress, **options)
            guarded.finish()
        wall += time.perf_counter() - t0
        check_like(x, z, f"sampler {name!r}")
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(
                f"sampler {name!r} produced NaN or inf although every model evaluation returned finite values "
                f"({guarded.nfe} of them): the sampler's own update diverged, in its last update or where the model "
                "kept answering finitely to a non-finite state. Its step is too large for what the model returns: "
                "use more steps (or a smaller step_lr for langevin)")
        nfe = max(nfe, guarded.nfe)
        x = x[rows] if hi - lo != b else x
        if b == n:
            out = x
        else:
            out = torch.empty((n, *model.shape), dtype=dtype, device=device) if out is None else out
            out[start:start + b] = x
    options.pop("start", None)
    if x_start is not None:  # recorded: a run from a given state is not a run from the prior
        options.update(x_start=f"tensor of shape {tuple(x_start.shape)}", start_level=start_level)
    return SampleResult(out, nfe, wall, name, seed, dict(options), largest)


def _batch(n: int, stack: ScoreModel, fn: Callable, dtype: torch.dtype, device: torch.device, labels: Optional[Tensor],
           batch_size: Optional[int], seeded: bool) -> tuple[int, Optional[int]]:
    """(the batch size, the sampler's group or None) of a run of n samples: ``batch_size`` or the memory estimate's
    default (:mod:`~scoregen.samplers._batches`, with the sampler's own extra state, ``fn.solver_state_bytes``). A
    sampler that couples samples (pc's step size from its group's mean norms) runs on whole groups of ``group``
    indices, its batches rounded up to whole groups and cut at multiples of the batch size in the run's index space,
    so a sample's group is the same in any split (the extra rows at the run's ends are computed and dropped). A given
    ``batch_size`` sets those cuts even above n, so that a part of a run, with the run's batch size, is cut where the
    run is."""
    extra = fn.solver_state_bytes(tuple(stack.shape)) if hasattr(fn, "solver_state_bytes") else 0
    batch = _batches.batch_size_for(n, stack, dtype, device, labels, batch_size, extra)
    group = fn.sample_group(tuple(stack.shape)) if seeded and hasattr(fn, "sample_group") else None
    if not group or group <= 1:
        return batch, None
    return -(-(batch_size or batch) // group) * group, group  # whole groups (a few rows above the estimate at most)


def batch_ranges(
    model: ScoreModel,
    sampler: Union[str, Callable] = "ddpm",
    n: int = 1,
    *,
    y: Union[int, Tensor, None] = None,
    x0_hook: Optional[Callable[[Tensor], Tensor]] = None,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
    batch_size: Optional[int] = None,
) -> list[tuple[int, int]]:
    """The index ranges ``[a, b)`` of the batches in which :func:`sample` (with a seed and these arguments) draws its n
    samples, all of the length of the first but the last. ``sample(model, sampler, b - a, seed=..., index_offset=a,
    batch_size=B, ...)``, B the first range's length, computes exactly that batch, so running the ranges in any order,
    process or machine and concatenating them gives the one-call samples bit for bit, for networks too (whose kernels
    may round differently in batches of other sizes; with the same number of torch threads). With per-sample ``y``,
    pass each range its ``y[a:b]``."""
    name, fn = _resolve(sampler)
    if not model.shape:
        raise ValueError("the model does not declare its sample shape; give it a `shape` (e.g. NetworkScoreModel(..., shape=(2,)))")
    n = check_int("n", n)
    device = torch.device(device) if device is not None else torch.device("cpu")
    labels = None if y is None else class_labels(y, n, device, who="y: ")
    stack = model if x0_hook is None else X0Hook(model, x0_hook)
    batch_size = None if batch_size is None else check_int("batch_size", batch_size)
    batch, _ = _batch(n, stack, fn, dtype, device, labels, batch_size, True)
    return [(a, min(a + batch, n)) for a in range(0, n, batch)]


def _pad(part: Tensor, rows: slice, size: int) -> Tensor:
    """``part`` (a batch's labels or start states) placed at ``rows`` of ``size`` rows, the padding rows repeating the
    nearest real one (they only fill a coupled sampler's group, and are dropped)."""
    if part.shape[0] == size:
        return part
    return torch.cat([part[:1].expand(rows.start, *part.shape[1:]), part,
                      part[-1:].expand(size - rows.stop, *part.shape[1:])])


def _check_start(x_start, start_level, n: int, shape: tuple, name: str, params) -> Optional[Tensor]:
    """``x_start`` checked against n and the sample shape (None when not given); ``start_level`` only with it."""
    if x_start is None:
        if start_level is not None:
            raise ValueError("start_level needs x_start: the clean data to noise to that level (SDEdit)")
        return None
    if "start" not in params:
        raise ValueError(f"sampler {name!r} does not take a starting state (it has no `start` argument)")
    if not isinstance(x_start, Tensor) or not x_start.is_floating_point():
        raise ValueError(f"x_start must be a floating-point tensor of shape (n, *shape) = ({n}, {', '.join(map(str, shape))}) "
                         f"or {tuple(shape)}, got {type(x_start).__name__}")
    if tuple(x_start.shape) == tuple(shape):
        x_start = x_start.unsqueeze(0)
    if tuple(x_start.shape[1:]) != tuple(shape) or x_start.shape[0] not in (1, n):
        raise ValueError(f"x_start must have shape (n, *shape) = {(n, *shape)} or {tuple(shape)}, got {tuple(x_start.shape)}")
    if not bool(torch.isfinite(x_start).all()):
        raise ValueError("x_start has NaN or inf entries")
    if start_level is not None:
        check_real("start_level (a VE noise level sigma / m)", start_level, 0.0, lo_open=True)
    return x_start
