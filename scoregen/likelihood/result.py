"""What :func:`~scoregen.likelihood.vlb` and :func:`~scoregen.likelihood.ode_nll` return with ``details=True``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["NLLResult", "concat_results", "gather_results"]

LN2 = math.log(2.0)


@dataclass
class NLLResult:
    """Per-sample negative log-likelihoods (or bounds on them) and where they come from.

    Attributes:
        nats: (B,) float64: ``-log p(x0)`` of each whole sample, in nats (for discrete data the probability of the
            sample's values, so a bound on the data's negative log-likelihood; for continuous data a density).
        dims: D, the number of dimensions of one sample.
        method: ``"vlb"`` or ``"ode"``.
        terms: the parts of ``nats``, each (B,) or (B, K), summing to it. vlb: ``prior`` (L_T), ``steps`` (B, K - 1)
            (the reverse steps' KLs, noisiest first) and ``decoder`` (L_0); ode: ``prior`` (the Gaussian at the
            noisiest level), ``divergence`` (minus the integral of the divergence) and ``dequantization``.
        t: vlb: the model's time label of the upper level of each step term (the decoder's last), noisiest first.
        nfe: network evaluations per sample (vlb: one per level; ode: the solver's evaluations, each with its
            divergence's backward passes).
        info: the settings (variance, bins, tolerances, probes, levels, seed).
    """

    nats: Tensor
    dims: int
    method: str
    terms: dict = field(default_factory=dict)
    t: Optional[np.ndarray] = None
    nfe: int = 0
    info: dict = field(default_factory=dict)

    @property
    def bits_per_dim(self) -> Tensor:
        """(B,): ``nats / (D ln 2)``."""
        return self.nats / (self.dims * LN2)

    def mean(self, unit: str = "bpd") -> float:
        """The mean over samples, in ``"bpd"`` (bits per dimension) or ``"nats"`` (per sample)."""
        return float(self._values(unit).mean())

    def sem(self, unit: str = "bpd") -> float:
        """The standard error of :meth:`mean`: the samples' standard deviation / sqrt(B) (0 for one sample). It
        includes the estimator's own noise (the bound's noise draws, Hutchinson's probes)."""
        v = self._values(unit)
        return float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else 0.0

    def term_bpd(self) -> dict:
        """Each term's mean over samples in bits per dimension; ``steps`` as a (K - 1,) array."""
        scale = 1.0 / (self.dims * LN2)
        return {k: (v.double().mean(0) * scale).cpu().numpy() if v.ndim > 1 else float(v.double().mean()) * scale
                for k, v in self.terms.items()}

    def _values(self, unit: str) -> Tensor:
        if unit not in ("bpd", "nats"):
            raise ValueError(f"unit must be 'bpd' or 'nats', got {unit!r}")
        return (self.bits_per_dim if unit == "bpd" else self.nats).double()

    def summary(self) -> str:
        """One line: the mean with its standard error in bits/dim and nats, and the sample count."""
        return (f"{self.method}: {self.mean():.4f} +- {self.sem():.4f} bits/dim ({self.mean('nats'):.3f} +- "
                f"{self.sem('nats'):.3f} nats per sample of {self.dims} dims; {self.nats.numel()} samples, "
                f"{self.nfe} NFE each)")

    def to_dict(self) -> dict:
        """JSON-able: the summary statistics, each term's mean in bits/dim and the settings (not the per-sample values)."""
        terms = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.term_bpd().items()}
        return {"method": self.method, "bits_per_dim": self.mean(), "sem_bits_per_dim": self.sem(),
                "nats": self.mean("nats"), "sem_nats": self.sem("nats"), "samples": int(self.nats.numel()),
                "dims": self.dims, "nfe": self.nfe, "terms_bits_per_dim": terms,
                "t": None if self.t is None else np.asarray(self.t).tolist(), "info": self.info}


def concat_results(parts: Sequence[NLLResult]) -> NLLResult:
    """One :class:`NLLResult` for consecutive slices of the data evaluated apart (each with ``index_offset`` at its
    start), in order: the per-sample values and terms concatenated (on the CPU), NFE the largest, the ode's
    ``nfe_per_batch`` joined; the settings are the first part's (without its ``index_offset``)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("no results to concatenate")
    first = parts[0]
    if any(p.method != first.method or p.dims != first.dims or set(p.terms) != set(first.terms) for p in parts):
        raise ValueError("the results to concatenate come from different estimators or data")
    cat = lambda values: torch.cat([v.detach().cpu() for v in values])  # noqa: E731
    info = {k: v for k, v in first.info.items() if k != "index_offset"}
    if "nfe_per_batch" in info:
        info["nfe_per_batch"] = [n for p in parts for n in p.info.get("nfe_per_batch", [])]
    return replace(first, nats=cat(p.nats for p in parts), terms={k: cat(p.terms[k] for p in parts) for k in first.terms},
                   nfe=max(p.nfe for p in parts), info=info)


def gather_results(result: Optional[NLLResult], context) -> Optional[NLLResult]:
    """Under torchrun, every rank's result (its shard of the data, in rank order; None for a rank with no data)
    concatenated on rank 0 (:func:`concat_results`), None on the other ranks; without it, ``result`` itself.

    The per-sample values travel whole (pickled, :func:`torch.distributed.all_gather_object`), and rank 0 reduces
    the concatenated tensor as one process reduces its own, in index order. So the mean, standard error and terms
    equal one process's exactly when the per-sample values do: with ``index_offset``, vlb's and ode's are the
    one-process rows bit for bit on the exact targets, and on networks when the ranks evaluate the one-process
    batches (``scoregen nll`` cuts its shards at multiples of ``--batch-size``) with the same number of threads.
    NFE is the largest rank's. ``context``: :func:`scoregen.distributed.setup`'s.
    """
    if not context.distributed:
        return result
    import torch.distributed as dist

    mine = None if result is None else replace(result, nats=result.nats.detach().cpu(),
                                               terms={k: v.detach().cpu() for k, v in result.terms.items()})
    parts: list = [None] * context.world_size
    dist.all_gather_object(parts, mine)
    return concat_results(parts) if context.is_main else None
