"""How a benchmark scores a set of samples: against an exact mixture, or against real digits through a judge network.

A scorer knows its reference distribution and returns, for a sample set, a dict of metrics; its ``floor`` says what
a perfect sampler scores at the same n (mean and spread over fresh reference draws), so a row can be read against
the noise of its own sample size. ``headline`` names the metric rows are ranked by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..metrics import component_frechet, frechet_distance, mmd_bandwidth, mmd_to_mixture, mode_tv, sliced_w2_to_mixture

__all__ = ["Column", "MixtureScorer", "DigitsScorer"]

#: Fresh reference draws behind each floor (mean +- std): exact draws of n = 10000 cost about a second each to score;
#: digits draws (fresh 50/50 splits) a few milliseconds, so they get more.
FLOOR_DRAWS = 5
DIGITS_FLOOR_DRAWS = 20


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    fmt: str = "{:.4f}"
    se_key: Optional[str] = None  # the key of this metric's standard error, where it has one
    scale: float = 1.0            # shown as value * scale (MMD^2 in units of 1e-4)


class MixtureScorer:
    """Scores samples of an exact Gaussian mixture (``reference``; the target's conditional under guidance).

    * ``mmd2``: unbiased MMD^2 to the exact mixture with its standard error (:func:`~scoregen.metrics.mmd_to_mixture`,
      one Gaussian kernel of bandwidth ``h = sqrt(d * sum_k w_k s_k^2)``, the components' own scale). The headline:
      its floor is exactly 0, and only the sampler's samples are random.
    * ``component_fd``: within-mode shape, the weighted per-component Fréchet distance (exact posterior assignment).
    * ``sliced_w2``: against the exact quantiles of 256 fixed projections; its floor (exact samples score far above
      0, from the fluctuations of the mode counts) as mean +- std over fresh exact draws.
    * ``mode_tv``: component weights against the samples' nearest-component histogram, over ``target``'s components
      (``weights``: what they should be, e.g. the conditional's weights placed among all components).
    * ``class_accuracy`` (with ``label``): the fraction of samples whose most likely class is the one asked for.
    """

    headline = "mmd2"

    def __init__(self, target, reference=None, weights=None, label: Optional[int] = None, n: int = 10000, seed: int = 0):
        self.target, self.reference = target, reference if reference is not None else target
        self.weights, self.label, self.n, self.seed = weights, label, n, seed
        self.bandwidth = mmd_bandwidth(self.reference)
        self._quantiles: dict = {}
        self.columns = [
            Column("mmd2", "MMD^2 x1e4", "{:.2f}", "mmd2_se", 1e4),
            Column("component_fd", "comp. FD", "{:.4g}"),
            Column("sliced_w2", "sliced W2", "{:.4f}"),
            Column("mode_tv", "mode TV", "{:.4f}"),
        ] + ([Column("class_accuracy", "class acc.", "{:.3f}")] if label is not None else [])
        self.description = (
            f"exact {self.reference.name}: MMD^2 unbiased against the exact mixture (Gaussian kernel, bandwidth "
            f"{self.bandwidth:.3g} = sqrt(d * mean component variance)), +- its standard error, floor 0; comp. FD: "
            "per-component Fréchet distance of the samples assigned by the exact posterior, weighted by the component "
            "weights; sliced W2: 256 fixed projections against the exact projected quantiles; mode TV: component "
            f"weights against the nearest-component histogram. Floors: mean +- std over {FLOOR_DRAWS} exact draws of "
            "the same n.")

    def score(self, samples: Tensor, y: Optional[Tensor] = None) -> dict:
        x = samples.detach().to("cpu", torch.float64).reshape(len(samples), -1)
        mmd = mmd_to_mixture(x, self.reference, self.bandwidth)
        out = {"mmd2": mmd.value, "mmd2_se": mmd.se, "component_fd": component_frechet(x, self.reference),
               "sliced_w2": sliced_w2_to_mixture(x, self.reference, _quantiles_cache=self._quantiles),
               "mode_tv": mode_tv(x, self.target, self.weights)}
        if self.label is not None:
            out["class_accuracy"] = float((self.target.classifier(x).argmax(-1) == self.label).double().mean())
        return out

    def reference_samples(self, i: int) -> Tensor:
        """Exact draw ``i`` (0: the ``exact`` row; 1..: the floor's draws), seeded from the benchmark's seed."""
        return self.reference.sample(self.n, torch.Generator().manual_seed(self.seed + 1000 * i), dtype=torch.float64)

    def reference_labels(self, i: int) -> Optional[Tensor]:
        return None if self.label is None else torch.full((self.n,), self.label)

    def floor(self) -> dict:
        """``{metric: (mean, std)}`` over :data:`FLOOR_DRAWS` fresh exact draws; MMD^2's floor is exactly 0."""
        draws = [self.score(self.reference_samples(i)) for i in range(1, FLOOR_DRAWS + 1)]
        floors = _mean_std(draws)
        floors["mmd2"] = (0.0, floors["mmd2_se"][0])  # the spread of an exact draw's estimate is its standard error
        return floors


class DigitsScorer:
    """Scores 8x8 digits (values in [-1, 1]) through the built-in judge, ``digits-judge``: a clean-data CNN classifier
    independent of every network that samples or guides (its held-out accuracy is in its checkpoint's meta).

    * ``fd``: Fréchet distance between judge features (its penultimate layer) of the samples and of the real
      digits' half B (the headline). The halves are stratified 50/50 splits of the 1797 digits (896 and 901, each
      with the data's class mix); the samples meet the split of seed 0, and the ``real digits`` row is n digits of
      its half A. The floor is the same distance for n digits of half A against half B over
      :data:`DIGITS_FLOOR_DRAWS` fresh splits (mean +- std): a set is never compared with itself, and the spread covers which digits land in
      B as well as which n are drawn from A (with one fixed B the floor's mean moves by about 2 between splits).
      n is at most 896.
    * ``class_tv``: total variation between the judge's class histogram of the samples and the data's class
      frequencies; with labels ``y``, ``requested``: the fraction judged to be the class asked for.
    """

    headline = "fd"

    def __init__(self, judge, n: int, seed: int = 0, guided: bool = False):
        from ..data import load_data

        data = load_data("digits")
        self.judge, self.n, self.seed, self.guided = judge, n, seed, guided
        self.x, self.y = data.x, data.y
        a, b = self._halves(0)
        if n > len(a):
            raise ValueError(f"the digits benchmark compares n samples with n real digits of one half of the data, so "
                             f"n <= {len(a)}; got n={n}")
        self.class_freq = torch.bincount(data.y, minlength=10).double() / len(data.y)
        self.features = self._features(self.x)  # every real digit's, once
        self.ref_features = self.features[b]
        accuracy = judge_accuracy(judge)
        self.columns = [Column("fd", "judge FD", "{:.3f}"), Column("class_tv", "class TV", "{:.3f}")] + (
            [Column("requested", "requested", "{:.3f}")] if guided else [])
        self.description = (
            f"judge FD: Fréchet distance in the feature space of digits-judge (held-out accuracy {accuracy}) between "
            f"the samples and the {len(b)} real digits of half B of a stratified 50/50 split; floor: n real digits of "
            f"half A against half B, mean +- std over {DIGITS_FLOOR_DRAWS} fresh splits; class TV: the judge's class "
            "histogram against the data's class frequencies"
            + ("; requested: fraction judged the class asked for" if guided else "") + ".")

    def _halves(self, i: int) -> tuple[Tensor, Tensor]:
        """Split ``i`` into halves (A, B): split 0 (seed 0) is the one samples are scored against."""
        from ..data import stratified_split

        return stratified_split(self.y, heldout=0.5, seed=0 if i == 0 else self.seed + i)

    @torch.no_grad()
    def _features(self, x: Tensor) -> Tensor:
        return torch.cat([self.judge.features(c.float()) for c in x.split(1024)]).double()

    @torch.no_grad()
    def score(self, samples: Tensor, y: Optional[Tensor] = None, reference: Optional[Tensor] = None) -> dict:
        """The metrics of ``samples`` (n, 1, 8, 8); ``reference``: the real features to compare with (default half B
        of split 0)."""
        x = samples.detach().to("cpu", torch.float32).clamp(-1, 1)
        logits = torch.cat([self.judge(c) for c in x.split(1024)])
        k = logits.argmax(-1)
        hist = torch.bincount(k, minlength=logits.shape[1]).double() / len(k)
        ref = self.ref_features if reference is None else reference
        out = {"fd": frechet_distance(self._features(x), ref), "class_tv": 0.5 * float((hist - self.class_freq).abs().sum())}
        if y is not None:
            out["requested"] = float((k == y.cpu()).double().mean())
        return out

    def _draw(self, i: int) -> Tensor:
        """The indices of n digits of half A of split ``i``."""
        a = self._halves(i)[0]
        return a[torch.randperm(len(a), generator=torch.Generator().manual_seed(self.seed + 1000 * i))[: self.n]]

    def reference_samples(self, i: int) -> Tensor:
        """n real digits of half A of split ``i`` (0: the ``real digits`` row)."""
        return self.x[self._draw(i)]

    def reference_labels(self, i: int) -> Tensor:
        """The true classes of :meth:`reference_samples` (i)."""
        return self.y[self._draw(i)]

    def floor(self) -> dict:
        draws = []
        for i in range(1, DIGITS_FLOOR_DRAWS + 1):
            labels = self.reference_labels(i) if self.guided else None
            draws.append(self.score(self.reference_samples(i), labels, self.features[self._halves(i)[1]]))
        return _mean_std(draws)


def judge_accuracy(judge) -> str:
    """The judge's recorded held-out accuracy as text, e.g. ``0.983 on 360 held-out digits``."""
    meta = getattr(judge, "meta", None) or {}
    held = meta.get("heldout") if isinstance(meta, dict) else None
    if isinstance(held, dict) and "accuracy" in held:
        return f"{held['accuracy']:.3f} on {held.get('n', '?')} held-out digits"
    return "not recorded"


def _mean_std(draws: list) -> dict:
    keys = [k for k in draws[0] if all(math.isfinite(d[k]) for d in draws)]
    return {k: (float(np.mean([d[k] for d in draws])), float(np.std([d[k] for d in draws], ddof=1))) for k in keys}
