"""Argument checks shared by every module: integers that are integers, numbers that are finite numbers.

A bool is not a number here (``True`` steps, a ``True`` guidance scale), nor is a string, and a float is not an
integer (``n=2.5`` must be an error, not 2 samples; 2.0 too: a float count is arithmetic gone wrong upstream).
Each check returns the value as a plain Python ``int`` / ``float`` (numpy scalars included), or raises a
ValueError naming the argument, the accepted range and what was given.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import numpy as np

__all__ = ["check_int", "check_real", "short"]


def short(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters: for echoing untrusted input in an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _not_a_number(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_, str, bytes)) or not isinstance(value, numbers.Real)


def check_int(name: str, value: Any, lo: Optional[int] = 1, hi: Optional[int] = None) -> int:
    """``value`` as an int in [lo, hi] (None: unbounded); it must be a Python or numpy integer."""
    if _not_a_number(value) or not isinstance(value, numbers.Integral) or (lo is not None and value < lo) \
            or (hi is not None and value > hi):
        if lo in (0, 1) and hi is None:
            need = "a positive integer" if lo == 1 else "a non-negative integer"
        elif lo is not None and hi is not None:
            need = f"an integer in [{lo}, {hi}]"
        else:
            need = "an integer" + (f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")
        raise ValueError(f"{name} must be {need}, got {short(value)}"
                         + (f" of type {type(value).__name__}" if not isinstance(value, numbers.Integral) else ""))
    return int(value)


def check_real(name: str, value: Any, lo: Optional[float] = None, hi: Optional[float] = None, *,
               lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float in the interval from ``lo`` to ``hi`` (None: unbounded; ``*_open``: that end
    excluded); it must be a real number (int, float or numpy scalar), not a bool or a string."""
    ok = not _not_a_number(value) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
        right = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
        need = " and ".join(p for p in (left, right) if p)
        raise ValueError(f"{name} must be a finite number{' ' + need if need else ''}, got {short(value)}")
    return float(value)
