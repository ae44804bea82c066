"""The bound's terms against the noise level: where a model's likelihood is lost (Nichol & Dhariwal 2021, Fig. 2)."""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Union

import numpy as np

from ..io import atomic_write
from .result import NLLResult

__all__ = ["plot_terms"]


def plot_terms(results: Sequence[Union[NLLResult, dict]], path: str | os.PathLike, labels: Optional[Sequence[str]] = None,
               title: str = "") -> None:
    """Write a PNG of each bound's terms L_t (mean over samples, bits/dim, log scale) against the model's time label t:
    the reverse steps' KLs, the decoder L_0 at its step's label (a hollow marker; a density can be negative, so it
    is left out when <= 0) and the prior L_T as a dashed line. ``results``: :func:`~scoregen.likelihood.vlb` results
    with ``details=True``, or their :meth:`~NLLResult.to_dict` (``scoregen nll --out`` files); ``labels`` name them in the legend (default: their variance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    results = [r.to_dict() if isinstance(r, NLLResult) else r for r in results]
    for i, r in enumerate(results):
        if r.get("method") != "vlb" or r.get("t") is None:
            raise ValueError("plot_terms draws the terms of a variational bound: vlb(..., details=True) results only")
        terms = r["terms_bits_per_dim"]
        label = labels[i] if labels is not None else r["info"].get("variance", "vlb")
        t = np.asarray(r["t"])
        line, = ax.plot(t[:-1], np.maximum(np.asarray(terms["steps"]), 1e-12), lw=1.2,
                        label=f"{label}: {r['bits_per_dim']:.3f} bits/dim")
        if terms["decoder"] > 0:
            ax.plot([t[-1]], [terms["decoder"]], "o", mfc="none", color=line.get_color())
        if terms["prior"] > 0:
            ax.axhline(terms["prior"], ls="--", lw=0.8, color=line.get_color())
    ax.set_yscale("log")
    if all(math.isfinite(v) and v > 0 for r in results for v in np.asarray(r["t"])):
        ax.set_xscale("log")
    ax.set_xlabel("t (the model's time label of the step's upper level)")
    ax.set_ylabel("L_t (bits/dim, mean over samples)")
    ax.set_title(title or "variational bound by step (o: decoder L_0, dashed: prior L_T)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
