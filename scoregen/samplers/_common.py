"""What every sampler shares: its level grid, its prior draw, progress reporting."""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor
from tqdm.auto import tqdm

from ..models import ScoreModel


def levels_to_clean(model: ScoreModel, steps: Optional[int]) -> tuple[list[float], list[float]]:
    """``(m, sigma)`` of ``steps`` of the model's trained levels (all if None), noisiest first, then the
    clean level (m=1, sigma=0) the last step lands on. Python floats: coefficients are computed once per run."""
    m, sigma = model.schedule.levels(steps)
    return [float(v) for v in m] + [1.0], [float(v) for v in sigma] + [0.0]


def prior(z: Tensor, m: float, sigma: float) -> Tensor:
    """x at the noisiest level for data of unit variance: N(0, (m^2 + sigma^2) I) (N(0, I) for VP).

    A new tensor: samplers update it in place (no allocation per step), so a callback's ``x`` is live."""
    return z * math.sqrt(m * m + sigma * sigma)


def progress_bar(total: int, progress: Optional[bool], desc: str):
    """A tqdm bar over sampler steps; ``progress=None`` shows it only on a terminal."""
    return tqdm(total=total, disable=None if progress is None else not progress, desc=desc, unit="step", leave=False)
