"""Shards of a sampling run split over processes: each written whole by its rank, merged in index order by rank 0.

A run of ``n`` samples into ``OUT.npy`` is cut into chunks of consecutive indices ``[a, b)`` (the sampling batch
size, the same whatever the number of processes); chunk ``[a, b)`` is written atomically to
``OUT.npy.shards/shard-<a>-<b>.npy``. The folder's ``run.json`` records what the run is (model, sampler, options,
seed, n, dtype): a rerun of the same command finds the chunks already written and computes only the missing ones,
also with another number of processes, while a different command refuses the folder instead of mixing runs. When
every chunk is there, rank 0 checks them, concatenates them in index order, writes ``OUT.npy`` atomically and removes
the folder: ``OUT.npy`` never holds a partial result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil

import numpy as np

from .files import atomic_write, read_json

#: The largest run.json read back (a command line and its options: a few KB).
MAX_RUN_BYTES = 2**20

__all__ = ["ShardSet", "code_fingerprint"]

_NAME = re.compile(r"shard-(\d+)-(\d+)\.npy")
RUN_FILE = "run.json"


@functools.cache
def code_fingerprint() -> str:
    """The version of scoregen and a hash of its Python sources: shards written by another build (a sampler whose
    output changed between versions) are not mixed with this one's. About 1 MB read, once per process."""
    from .. import __version__

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read() + b"\0")
    return f"{__version__} ({digest.hexdigest()[:16]})"


class ShardSet:
    """The shard folder of output ``out`` for the run described by ``run`` (a JSON-able dict)."""

    def __init__(self, out: str, run: dict):
        self.out = os.fspath(out)
        self.dir = self.out + ".shards"
        self.run = json.loads(json.dumps(run))  # a plain copy, as it will be read back

    def open(self) -> int:
        """Create the folder with its ``run.json`` (rank 0, before the others look), or check that an existing one
        holds this run's shards; returns how many shards are already there. A ValueError for another run's folder."""
        record = os.path.join(self.dir, RUN_FILE)
        if os.path.isdir(self.dir) and os.path.isfile(record):
            found = read_json(record, MAX_RUN_BYTES, "a shard folder's run.json")
            if found != self.run:
                changed = sorted(k for k in set(found) | set(self.run) if found.get(k) != self.run.get(k))
                raise ValueError(f"{self.dir} holds the shards of another run (it differs in {', '.join(changed)}): "
                                 "remove the folder to start afresh, or rerun the command that wrote it")
        else:
            os.makedirs(self.dir, exist_ok=True)
            with atomic_write(record) as f:
                json.dump(self.run, f, indent=1, sort_keys=True)
        return len(self.written())

    def path(self, a: int, b: int) -> str:
        return os.path.join(self.dir, f"shard-{a:012d}-{b:012d}.npy")

    def written(self) -> dict[tuple[int, int], str]:
        """The chunks already on disk, ``{(a, b): path}`` (complete files only: each was renamed into place whole)."""
        if not os.path.isdir(self.dir):
            return {}
        found = {}
        for name in os.listdir(self.dir):
            m = _NAME.fullmatch(name)
            if m:
                found[(int(m[1]), int(m[2]))] = os.path.join(self.dir, name)
        return found

    def has(self, a: int, b: int, shape: tuple[int, ...], dtype: str) -> bool:
        """Whether chunk ``[a, b)`` is on disk with ``b - a`` samples of ``shape`` and ``dtype`` (its header read only)."""
        path = self.path(a, b)
        if not os.path.isfile(path):
            return False
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False  # damaged: written again
        return arr.shape == (b - a, *shape) and arr.dtype == np.dtype(dtype)

    def write(self, a: int, b: int, samples: np.ndarray) -> None:
        with atomic_write(self.path(a, b), "wb") as f:
            np.save(f, samples, allow_pickle=False)

    def merge(self, ranges: list[tuple[int, int]], shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """Every chunk of ``ranges`` checked and concatenated in index order, written atomically to ``out``; the folder
        is then removed. A ValueError naming the missing or damaged chunks (``out`` untouched)."""
        bad = [f"[{a}, {b})" for a, b in ranges if not self.has(a, b, shape, dtype)]
        if bad:
            raise ValueError(f"{self.dir}: {len(bad)} of {len(ranges)} shards are missing or damaged ({', '.join(bad[:5])}"
                             f"{', ...' if len(bad) > 5 else ''}); {self.out} was not written: rerun the command to "
                             "compute them")
        merged = np.concatenate([np.load(self.path(a, b), allow_pickle=False) for a, b in ranges])
        with atomic_write(self.out, "wb") as f:
            np.save(f, merged, allow_pickle=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        return merged
