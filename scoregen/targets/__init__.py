"""Exact targets: built-in Gaussian mixtures and user-defined ones from JSON.

* ``ring2d``: 8 equal components N(mu_k, 0.1^2 I) on the circle of radius 2 (class = component).
* ``gmm64``: 64-dimensional, 10 components with unequal weights (1..10, shuffled), stds in [0.5, 1],
  means drawn once from N(0, I) with seed 64 and shipped as ``data/gmm64.json``; class = component mod 5.
"""

from __future__ import annotations

import math
import os

from .mixture import GaussianMixture

__all__ = ["GaussianMixture", "ring2d", "gmm64", "load_target", "BUILTIN_TARGETS"]


def ring2d(radius: float = 2.0, std: float = 0.1, components: int = 8) -> GaussianMixture:
    angles = [2 * math.pi * k / components for k in range(components)]
    means = [[radius * math.cos(a), radius * math.sin(a)] for a in angles]
    return GaussianMixture([1.0] * components, means, [std] * components, name="ring2d")


def gmm64() -> GaussianMixture:
    return GaussianMixture.from_json(os.path.join(os.path.dirname(__file__), "data", "gmm64.json"))


BUILTIN_TARGETS = {"ring2d": ring2d, "gmm64": gmm64}


def load_target(name_or_path: str) -> GaussianMixture:
    """A built-in target by name (``ring2d``, ``gmm64``) or a mixture JSON file by path."""
    if name_or_path in BUILTIN_TARGETS:
        return BUILTIN_TARGETS[name_or_path]()
    if name_or_path.endswith(".json") or os.path.exists(name_or_path):
        return GaussianMixture.from_json(name_or_path)
    raise ValueError(
        f"unknown target {name_or_path!r}: use one of {sorted(BUILTIN_TARGETS)} or the path of a mixture JSON file "
        '({"weights": [...], "means": [[...], ...], "stds": [...], "labels": [...]})'
    )
