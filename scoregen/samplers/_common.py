"""What every sampler shares: its level grid, its prior draw, progress reporting, warnings at the user's call."""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor

from .._progress import progress as _progress
from ..models import ScoreModel, prepare_levels
from .grids import StepGrid

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the scoregen folder


#: Numbers in a group of samples that share a sampler's batch statistics (:func:`~scoregen.samplers.sde.pc`'s corrector
#: norms), at least, and the most samples in a group (score-SDE takes them over its whole batch; 64 is a common one).
GROUP_ELEMENTS, GROUP_MAX = 4096, 64


def sample_group(shape: tuple[int, ...]) -> int:
    """Samples per group of a sampler that couples samples: enough to hold GROUP_ELEMENTS numbers, at most GROUP_MAX
    (64 for vectors and the 8x8 digits, 6 for 1x28x28, 2 for 3x32x32, 1 from 3x64x64 on, where one sample's
    statistics are already stable). A function of the shape alone, as the runs of indices must be: the groups are
    fixed runs of sample indices, and :func:`scoregen.sample` hands such a sampler whole groups (its
    ``sample_group`` attribute), so a sample's trajectory is the same in any batch or split."""
    numel = max(1, math.prod(int(v) for v in shape))
    return max(1, min(GROUP_MAX, -(-GROUP_ELEMENTS // numel)))


def prior(z: Tensor, m: float, sigma: float) -> Tensor:
    """x at the noisiest level for data of unit variance: N(0, (m^2 + sigma^2) I) (N(0, I) for VP).

    A new tensor: samplers update it in place (no allocation per step), so a callback's ``x`` is live."""
    return z * math.sqrt(m * m + sigma * sigma)


@dataclass(frozen=True)
class Start:
    """Where a sampler starts instead of the prior draw (:func:`scoregen.sample`'s ``x_start``):

    * ``level`` given (SDEdit, img2img): ``x`` is clean data, noised to VE level ``level`` (``sigma / m``) with the
      sampler's own initial noise z, ``m x + sigma z``; the sampler then solves down from that level only.
    * ``level`` None: ``x`` is the state itself at the grid's first level, in the grid's coordinates (VE or VP, see
      :class:`~scoregen.samplers.grids.StepGrid`; NCSN's uniform start; a trajectory resumed from a callback's state).

    ``x`` has the batch's shape (B, *shape)."""

    x: Tensor
    level: Optional[float] = None


def begin(model: ScoreModel, z: Tensor, grid: StepGrid, start: Optional[Start], ve: bool) -> tuple[StepGrid, Tensor]:
    """The grid a run walks (cut at ``start.level`` for SDEdit) and its initial state, a new tensor the sampler updates
    in place: the prior draw (:func:`prior`), or ``start``'s. In VE coordinates (``x / m``) with ``ve``, else the
    model's. The levels the run queries are declared to the model (:func:`~scoregen.models.prepare_levels`)."""
    if start is not None and start.level is not None:
        grid = grid.starting_at(start.level)
    if start is None:
        x = prior(z, grid.m[0], grid.sigma[0])
    elif start.level is None:
        x = start.x.to(z).clone()
    else:
        x = start.x.to(z) * grid.m[0] + z * grid.sigma[0]
    if ve:
        x.div_(grid.m[0])
        prepare_levels(model, grid.s[:-1], 1.0)
    else:
        prepare_levels(model, list(grid.sigma[:-1]), list(grid.m[:-1]))
    return grid, x


def report(bar, callback: Optional[Callable[[dict], None]], i: int, x: Tensor, m: float, sigma: float, **extra) -> None:
    """After step ``i``: advance the progress bar and call the user's callback with the state x at level (m, sigma)."""
    bar.update()
    if callback is not None:
        callback({"i": i, "x": x, "m": m, "sigma": sigma, **extra})


def progress_bar(total: int, progress: Optional[bool], desc: str):
    """Progress over sampler steps (:func:`scoregen._progress.progress`): ``progress=None`` shows a bar on a
    terminal and a plain line every 30 s elsewhere; False nothing; True a bar even off a terminal."""
    return _progress(total, progress, desc, "step", leave=False)


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the user's call: the innermost frame outside the scoregen package.

    A fixed ``stacklevel`` is right for one call path only (``sample() -> langevin()`` is a frame deeper than
    ``langevin()`` called directly); counting the package's own frames is right for every path.
    """
    frame, level = sys._getframe(1), 2  # stacklevel 2: this function's caller
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
