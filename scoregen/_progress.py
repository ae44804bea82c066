"""Progress reporting for long loops: a tqdm bar on a terminal, a plain line at a steady interval elsewhere.

tqdm hides its bar when stderr is not a terminal (a log file, a pipe, a CI job, ``nohup``), which leaves a
25-minute ``scoregen pretrained build`` silent. :func:`progress` keeps the bar on a terminal and, off one,
prints a line such as ::

    train ddpm: 1200/10000 steps (12%), 0:01:03 elapsed, ~0:07:40 left, loss=0.0312

to stderr every ``interval`` seconds (default 30; the environment variable ``SCOREGEN_PROGRESS_INTERVAL``
overrides it), and a final line when the loop ends, if it ran long enough to have reported before. A job
shorter than the interval prints nothing.

``progress`` argument, as everywhere in scoregen: None (default) the above; False: nothing; True: a tqdm bar
even off a terminal. The object returned offers the subset of tqdm's API scoregen uses: ``update(n=1)``,
``set_postfix(**values)``, ``close()`` and use as a context manager; :func:`track` wraps an iterable.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

__all__ = ["progress", "track", "DEFAULT_INTERVAL", "INTERVAL_ENV"]

#: Seconds between two plain progress lines off a terminal.
DEFAULT_INTERVAL = 30.0
#: Environment variable that overrides the interval (seconds, a number >= 0; 0 reports every update).
INTERVAL_ENV = "SCOREGEN_PROGRESS_INTERVAL"

T = TypeVar("T")


def _interval(interval: Optional[float]) -> float:
    if interval is not None:
        return max(0.0, float(interval))
    text = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = float(text)
    except ValueError:  # unset or not a number: the default (a progress report must never stop a job)
        return DEFAULT_INTERVAL
    return value if value >= 0 and value == value and value != float("inf") else DEFAULT_INTERVAL


def _on_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    """H:MM:SS, as tqdm writes durations."""
    s = int(max(0.0, seconds) + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _Silent:
    """progress=False: every call does nothing."""

    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Lines:
    """Off a terminal: one line to ``stream`` every ``interval`` seconds, and a final one.

    ``update`` costs an addition, a ``time.monotonic()`` call and a comparison until a line is due.
    """

    def __init__(self, total: Optional[int], desc: str, unit: str, interval: float, initial: int, stream) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self._units = unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")
        self.n = self._initial = initial
        self._stream = stream
        self._postfix: dict = {}
        self._lines = 0
        self._closed = False
        self._start = time.monotonic()
        self._next = self._start + interval

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self._write(self._status(now))

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        self._postfix = {**ordered_dict, **values} if ordered_dict else values  # formatted only when a line is due

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = time.monotonic()
        if self._lines or now - self._start >= self.interval:  # a job too short to report stays quiet
            self._write(self._final(now))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _count(self) -> str:
        units = self._units
        if self.total is None:
            return f"{self.n} {units}"
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total > 0 else ""
        return f"{self.n}/{self.total} {units}{percent}"

    def _status(self, now: float) -> str:
        elapsed = now - self._start
        parts = [self._count(), f"{_clock(elapsed)} elapsed"]
        done = self.n - self._initial
        if self.total is not None and done > 0 and elapsed > 0 and self.n <= self.total:
            parts.append(f"~{_clock((self.total - self.n) * elapsed / done)} left")
        if self._postfix:
            parts.append(self._values())
        return ", ".join(parts)

    def _final(self, now: float) -> str:
        elapsed = now - self._start
        done = self.n - self._initial
        rate = f", {done / elapsed:.3g} {self._units}/s" if done > 0 and elapsed > 0 else ""
        if self.total is None or self.n >= self.total:
            text = f"done, {self._count()} in {_clock(elapsed)}{rate}"
        else:  # closed early: an error, an interrupt, a loop left with break
            text = f"stopped at {self._count()} after {_clock(elapsed)}{rate}"
        return text + (f", {self._values()}" if self._postfix else "")

    def _values(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._postfix.items())

    def _write(self, text: str) -> None:
        self._lines += 1
        try:
            print(f"{self.desc}: {text}" if self.desc else text, file=self._stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stderr must not stop the job it reports on
            pass


def progress(total: Optional[int], progress: Optional[bool], desc: str = "", unit: str = "step", *,
             interval: Optional[float] = None, initial: int = 0, leave: bool = True):
    """A progress reporter over ``total`` units (None: unknown), used as ``with progress(...) as bar: bar.update()``.

    Args:
        progress: None: a tqdm bar on a terminal, else a plain line to stderr every ``interval`` seconds and a
            final one; False: silent; True: a tqdm bar even off a terminal.
        desc: what is running, the line's prefix (``"train ddpm"``).
        unit: what one update counts (``"step"``; lines write its plural).
        interval: seconds between plain lines (None: ``$SCOREGEN_PROGRESS_INTERVAL``, else 30).
        initial: units already done (a resumed run); the time left is estimated from this run's rate.
        leave: keep the tqdm bar on screen when done (plain lines always stay).
    """
    if progress is False:
        return _Silent()
    stream = sys.stderr
    if progress is None and not _on_terminal(stream):
        return _Lines(total, desc, unit, _interval(interval), initial, stream)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc or None, unit=unit, leave=leave, disable=False, file=stream)


_progress = progress


def track(iterable: Iterable[T], progress: Optional[bool] = None, desc: str = "", unit: str = "step", *,
          total: Optional[int] = None, interval: Optional[float] = None, leave: bool = True) -> Iterator[T]:
    """Iterate over ``iterable``, reporting one unit per item like :func:`progress` (total: ``len`` if it has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with _progress(total, progress, desc, unit, interval=interval, leave=leave) as bar:
        for item in iterable:
            yield item
            bar.update()
