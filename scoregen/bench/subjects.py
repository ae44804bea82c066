"""What a benchmark samples: a model scoregen loads, with the scorer that judges its samples and its guidance.

``resolve_subject(spec)`` takes what ``scoregen bench --model`` takes: a built-in exact target (``ring2d``,
``gmm64``) or a mixture ``.json``; a built-in model's name (``digits-ddpm``) or a checkpoint folder written by
``scoregen train``; a diffusers pipeline folder. A network is scored against the data it was trained on, read off
its checkpoint (``meta.data``): an exact target's name gives the exact mixture, ``digits`` the digits judge; other
models need ``reference=`` (the same data specs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..guidance import ClassifierFreeGuidance, ClassifierGuidance
from ..interop.diffusers import is_diffusers_folder
from ..models import ScoreModel, clip_x0
from ..targets import BUILTIN_TARGETS, GaussianMixture, load_target
from .scorers import DigitsScorer, MixtureScorer

__all__ = ["Subject", "resolve_subject", "DEFAULT_N"]

#: Samples per run: exact targets are cheap (n = 10000 makes MMD^2's standard error about 1% of DDIM's 10-step error
#: on the built-in targets); digits compares n samples with n real digits of one half of the data (at most 896).
DEFAULT_N = {"exact": 10000, "digits": 500}


@dataclass
class Subject:
    """A model to benchmark: ``model`` (unguided), how to score its samples (``make_scorer(n, seed, label, guided)``), the x0 hook
    and data range its samplers use, and ``guided(scale, label, n)`` -> (model, y) for guidance sweeps (None: none):
    one class for an exact target (``label``, default 0), every class in turn for digits (``y = i mod 10``)."""

    name: str
    kind: str  # "exact" or "digits"
    model: ScoreModel
    make_scorer: Callable[..., object]
    x0_hook: Optional[Callable] = None
    data_range: Optional[tuple] = None
    guided: Optional[Callable[[float, Optional[int], int], tuple]] = None
    guidance: str = ""  # how guidance is done, for tables
    info: dict = field(default_factory=dict)

    @property
    def image(self) -> bool:
        return len(self.model.shape) == 3


def resolve_subject(spec: str, reference: Optional[str] = None) -> Subject:
    """The :class:`Subject` for ``spec`` (see the module docstring); ValueError naming what is wrong otherwise."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a benchmark model is a name or a path, got {spec!r}")
    if spec in BUILTIN_TARGETS or (spec.endswith(".json") and os.path.isfile(spec)):
        return _exact(load_target(spec))
    from ..pretrained import pretrained_names

    if spec in pretrained_names() or os.path.isfile(os.path.join(spec, "config.json")) and not is_diffusers_folder(spec):
        return _checkpoint(spec, reference)
    if os.path.isdir(spec) and is_diffusers_folder(spec):
        from ..interop.diffusers import load_diffusers

        return _network(spec, load_diffusers(spec), None, reference, None, {"format": "diffusers"})
    raise ValueError(f"unknown benchmark model {spec!r}: give a built-in target ({', '.join(sorted(BUILTIN_TARGETS))}), "
                     f"a mixture .json file, a built-in model ({', '.join(pretrained_names())}), a checkpoint folder "
                     "written by `scoregen train`, or a diffusers pipeline folder")


def _exact(target: GaussianMixture) -> Subject:
    def make_scorer(n: int, seed: int, label: Optional[int] = None, guided: bool = False) -> MixtureScorer:
        if label is None:
            return MixtureScorer(target, n=n, seed=seed)
        # mode TV over all components: a sample in another class's mode counts against the sampler
        weights = torch.as_tensor(target.weights * (target.labels == label))
        return MixtureScorer(target, target.conditional(label), weights / weights.sum(), label, n, seed)

    def guided(scale: float, label: Optional[int], n: int) -> tuple:
        return ClassifierGuidance(target, target.classifier, scale), 0 if label is None else label

    return Subject(f"{target.name} (exact, d={target.dim}, K={len(target.weights)})", "exact", target, make_scorer,
                   guided=guided, guidance="exact classifier guidance", info={"target": target.name})


def _checkpoint(spec: str, reference: Optional[str]) -> Subject:
    from ..io import load_checkpoint

    net, config = load_checkpoint(spec)
    if getattr(net, "parameterization", None) is None:
        raise ValueError(f"{spec} holds a classifier, not a score model: benchmark a score model (scoregen pretrained list)")
    data = config["meta"].get("data") if isinstance(config.get("meta"), dict) else None
    data = data if isinstance(data, dict) else {}
    value_range = data.get("value_range")
    info = {"checkpoint": spec, "network": config["network"]["class"], "data": data.get("spec")}
    return _network(spec, net.score_model(), net, reference or data.get("spec"), value_range, info)


def _network(spec: str, model: ScoreModel, net, reference: Optional[str], value_range, info: dict) -> Subject:
    if reference in BUILTIN_TARGETS or (isinstance(reference, str) and reference.endswith(".json")):
        target = load_target(reference)
        exact = _exact(target)
        return Subject(f"{spec} (trained on {target.name})", "exact", model, exact.make_scorer, info=info)
    if reference != "digits":
        raise ValueError(f"{spec}: the benchmark scores samples against the data the model was trained on, and this "
                         f"model's data ({reference!r}) has no reference here; pass reference= (--reference) as "
                         f"digits, {', '.join(sorted(BUILTIN_TARGETS))} or a mixture .json")
    from ..io import load_checkpoint

    judge, judge_config = load_checkpoint("digits-judge")
    judge.meta = judge_config["meta"]
    lo, hi = value_range if value_range else (-1.0, 1.0)

    def make_scorer(n: int, seed: int, label: Optional[int] = None, guided: bool = False) -> DigitsScorer:
        if label is not None:
            raise ValueError("the digits benchmark guides every class in turn (a guidance sweep), not one label")
        return DigitsScorer(judge, n, seed, guided=guided)

    guided, how = _digits_guidance(model, net) if net is not None else (None, "")
    return Subject(f"{spec} (digits)", "digits", model, make_scorer, x0_hook=clip_x0(lo, hi), data_range=(lo, hi),
                   guided=guided, guidance=how, info={**info, "judge": "digits-judge"})


def _digits_guidance(model: ScoreModel, net) -> tuple:
    """``(guided(scale, label, n) -> (model, y), description)`` for a digits network: classifier-free guidance (scale w)
    on a conditional network, classifier guidance by the built-in noisy classifier on an unconditional one; every
    class in turn, ``y = i mod 10``."""
    from ..io import load_checkpoint

    if getattr(net, "num_classes", None):
        wrap, how = (lambda scale: ClassifierFreeGuidance(model, net.null_label, scale)), "classifier-free guidance"
    else:
        classifier = load_checkpoint("digits-classifier")[0].classifier()
        wrap, how = (lambda scale: ClassifierGuidance(model, classifier, scale)), "classifier guidance (digits-classifier)"

    def guided(scale: float, label: Optional[int], n: int) -> tuple:
        return wrap(scale), torch.arange(n) % 10

    return guided, how
