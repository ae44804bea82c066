"""Sample-quality metrics against exact targets."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["sliced_w2", "sliced_w2_noise_floor", "mode_tv", "class_report"]


def sliced_w2(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two sample sets of shape (N, d) and (M, d).

    ``sqrt(mean over directions u of W2^2(u.a, u.b))`` over ``projections`` random unit directions drawn
    from ``seed`` (the same directions for every call with that seed). 1-D W2 compares quantiles; sets
    of different sizes are compared at the quantiles of the larger one by interpolation.
    """
    a, b = (torch.as_tensor(v).detach().to("cpu", torch.float64) for v in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_w2 needs two (N, d) sample sets of the same d, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("sliced_w2 needs at least 2 samples in each set")
    u = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    pa, pb = (a @ u).sort(dim=0).values, (b @ u).sort(dim=0).values
    if len(pa) != len(pb):
        n = max(len(pa), len(pb))
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        pa, pb = (_quantiles(p, q) for p in (pa, pb))
    return float(((pa - pb) ** 2).mean().sqrt())


def _quantiles(sorted_proj: Tensor, q: Tensor) -> Tensor:
    n = len(sorted_proj)
    pos = (q * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo).unsqueeze(1)
    return sorted_proj[lo] * (1 - frac) + sorted_proj[hi] * frac


def sliced_w2_noise_floor(target, n: int, seed: int = 0, projections: int = 256) -> float:
    """The sliced W2 between two independent exact sample sets of size n: what a perfect sampler scores."""
    g = torch.Generator().manual_seed(seed)
    return sliced_w2(target.sample(n, g), target.sample(n, g), projections)


def mode_tv(samples: Tensor, target, weights: Optional[Tensor] = None) -> float:
    """Total variation between the target's component weights and the samples' component histogram.

    Each sample goes to its most likely component under the clean target, ``argmax_k p(k | x)``;
    ``weights`` (K,) replaces the target's own, e.g. to score class-conditional samples over all components.
    """
    k = target.component_posterior(torch.as_tensor(samples).detach().to("cpu", torch.float64)).argmax(-1)
    hist = torch.bincount(k, minlength=len(target.weights)).double() / len(k)
    w = torch.as_tensor(target.weights if weights is None else weights, dtype=torch.float64)
    return 0.5 * float((hist - w).abs().sum())


def class_report(logits: Tensor, reference: Tensor, requested: Optional[Tensor] = None) -> dict:
    """How a classifier sees a set of samples, from its logits (N, K) on them.

    ``confidence``: the mean of the largest class probability; ``histogram`` (K,): the fraction of samples
    whose most likely class is k; ``tv``: total variation between that histogram and ``reference`` (K,),
    e.g. the data's class frequencies; with ``requested`` (N,) labels also ``requested_rate``: the fraction
    of samples classified as the class asked for.
    """
    logits = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    reference = torch.as_tensor(reference, dtype=torch.float64)
    if logits.ndim != 2 or reference.shape != logits.shape[1:]:
        raise ValueError(f"class_report needs logits (N, K) and reference (K,), got {tuple(logits.shape)} and {tuple(reference.shape)}")
    if not torch.isclose(reference.sum(), torch.tensor(1.0, dtype=torch.float64)) or (reference < 0).any():
        raise ValueError(f"reference must be class probabilities summing to 1, got {reference.tolist()}")
    if len(logits) == 0 or not bool(torch.isfinite(logits).all()):
        raise ValueError(f"class_report needs finite logits for at least one sample, got {len(logits)} samples"
                         + ("" if len(logits) == 0 else " with NaN or inf among them"))
    if requested is not None and torch.as_tensor(requested).shape != logits.shape[:1]:
        raise ValueError(f"requested labels must have shape (N,) = ({len(logits)},), got {tuple(torch.as_tensor(requested).shape)}")
    probs = logits.softmax(-1)
    k = probs.argmax(-1)
    hist = torch.bincount(k, minlength=logits.shape[1]).double() / len(k)
    report = {"confidence": float(probs.max(-1).values.mean()), "histogram": hist,
              "tv": 0.5 * float((hist - reference).abs().sum())}
    if requested is not None:
        report["requested_rate"] = float((k == torch.as_tensor(requested).cpu()).double().mean())
    return report
