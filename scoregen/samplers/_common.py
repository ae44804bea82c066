"""What every sampler shares: its level grid, its prior draw, progress reporting, warnings at the user's call."""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Optional

from torch import Tensor

from .._checks import check_int
from .._progress import progress as _progress
from ..models import ScoreModel
from ..schedules import MAX_LEVELS

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the scoregen folder


def levels_to_clean(model: ScoreModel, steps: Optional[int]) -> tuple[list[float], list[float]]:
    """``(m, sigma)`` of ``steps`` of the model's trained levels (all if None), noisiest first, then the
    clean level (m=1, sigma=0) the last step lands on. Python floats: coefficients are computed once per run."""
    m, sigma = model.schedule.levels(None if steps is None else check_int("steps", steps, 1, MAX_LEVELS))
    return [float(v) for v in m] + [1.0], [float(v) for v in sigma] + [0.0]


def prior(z: Tensor, m: float, sigma: float) -> Tensor:
    """x at the noisiest level for data of unit variance: N(0, (m^2 + sigma^2) I) (N(0, I) for VP).

    A new tensor: samplers update it in place (no allocation per step), so a callback's ``x`` is live."""
    return z * math.sqrt(m * m + sigma * sigma)


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
