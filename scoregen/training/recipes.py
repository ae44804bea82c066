"""Default networks and schedules for ``scoregen train``: what to train on a data set, by its shape."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..schedules import DiscreteVE, DiscreteVP, ncsnv2_levels, ncsnv2_sigma_max
from .trainer import OBJECTIVES

__all__ = ["ncsn_schedule", "default_network", "heldout_training"]


def ncsn_schedule(x: Tensor, sigma_min: float = 0.01, max_points: int = 2000) -> DiscreteVE:
    """NCSNv2's recipe for a data set x (N, ...): sigma_max = the largest pairwise distance (technique 1,
    over at most ``max_points`` points), L by technique 2 for the data's dimension, sigma_min = 0.01."""
    sigma_max = ncsnv2_sigma_max(x, max_points)
    if not sigma_max > sigma_min:
        raise ValueError(f"the data's largest pairwise distance {sigma_max:g} is not above sigma_min={sigma_min}: "
                         "is the data constant?")
    return DiscreteVE.geometric(sigma_max, sigma_min, ncsnv2_levels(sigma_max, sigma_min, x[0].numel()))


def default_network(x: Tensor, objective: str, num_classes: int | None = None, conditional: bool = False) -> nn.Module:
    """The network ``scoregen train`` uses: MLPs for vectors (N, d); for images (N, C, H, W) the tiny DDPM
    U-Net or NCSNv2, and an MLP classifier on the flattened pixels. ``conditional`` makes a score network class-conditional (classifier-free guidance).
    ``hybrid``: the ``ddpm`` network with learned variance channels (Nichol & Dhariwal 2021).
    ``judge``: a clean-image :class:`~scoregen.networks.CNNClassifier` (images only)."""
    from ..networks import CNNClassifier, MLPClassifier, MLPScoreNet

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}, got {objective!r}")
    if objective == "judge":
        if conditional:
            raise ValueError("--conditional makes a score network class-conditional; objective 'judge' trains a classifier")
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"objective 'judge' trains a convolutional classifier on square images (N, C, H, H); the data "
                             f"have shape {tuple(x.shape)}")
        if not num_classes:
            raise ValueError("objective 'judge' needs labelled data")
        return CNNClassifier(in_channels=x.shape[1], image_size=x.shape[-1], num_classes=num_classes)
    if (objective == "classifier" or conditional) and not num_classes:
        raise ValueError(f"objective {objective!r}{' with --conditional' if conditional else ''} needs labelled data")
    classes = num_classes if conditional else None
    learned = {"learned_variance": True} if objective == "hybrid" else {}  # otherwise the ddpm network
    schedule = ncsn_schedule(x) if objective == "ncsn" else DiscreteVP.linear()
    if x.ndim == 2:
        d = x.shape[1]
        if objective == "classifier":
            return MLPClassifier(d, num_classes, schedule)
        return MLPScoreNet(d, schedule, "score" if objective == "ncsn" else "eps", num_classes=classes, **learned)
    if x.ndim == 4:
        from ..networks import NETWORKS

        if objective == "classifier":  # small images: an MLP on the flattened pixels
            return MLPClassifier(x[0].numel(), num_classes, schedule, hidden=256)
        name = {"ddpm": "UNet", "hybrid": "UNet", "ncsn": "NCSNv2"}[objective]
        if name not in NETWORKS:
            raise ValueError(f"no image network for objective {objective!r} yet ({name})")
        # scoregen's image data lies in [-1, 1]: NCSNv2 takes it as is (centered) rather than from [0, 1]
        kwargs = {"num_classes": classes, **learned} if objective in ("ddpm", "hybrid") else {"centered": True}
        return NETWORKS[name].tiny(image_size=x.shape[-1], in_channels=x.shape[1], schedule=schedule, **kwargs)
    raise ValueError(f"data of shape {tuple(x.shape)}: expected vectors (N, d) or images (N, C, H, W)")


def heldout_training(data, fraction: float | None = None, seed: int | None = None):
    """What ``scoregen train --objective judge`` trains on and how it scores the rest: ``(x_fit, y_fit, evaluate)``.

    The labelled ``data`` (a :class:`~scoregen.data.Dataset`) are split by :func:`~scoregen.data.stratified_split`
    (default: 20% of each class held out, seed :data:`~scoregen.data.HELDOUT_SEED`; for the digits this is
    :func:`~scoregen.data.digits_split`); ``evaluate(net)`` classifies the held-out part and returns
    ``{"heldout": {"accuracy", "confidence", "n", "train_n", "fraction", "split_seed"}}`` for the checkpoint's meta
    (accuracy and confidence None when nothing is held out)."""
    from ..data import HELDOUT_FRACTION, HELDOUT_SEED, stratified_split

    if data.y is None:
        raise ValueError(f"a held-out evaluation needs labelled data; {data.name} has no labels")
    fraction = HELDOUT_FRACTION if fraction is None else fraction
    seed = HELDOUT_SEED if seed is None else seed
    fit, held = stratified_split(data.y, fraction, seed)
    x_held, y_held = data.x[held], data.y[held]

    def evaluate(net: nn.Module) -> dict:
        report = {"accuracy": None, "confidence": None, "n": len(held), "train_n": len(fit), "fraction": fraction,
                  "split_seed": seed}
        if len(held):
            with torch.no_grad():
                probs = torch.cat([net(x_held[i:i + 1024]) for i in range(0, len(held), 1024)]).double().softmax(-1)
            correct = int((probs.argmax(-1) == y_held).sum())
            report.update(accuracy=correct / len(held), confidence=float(probs.max(-1).values.mean()))
        return {"heldout": report}

    return data.x[fit], data.y[fit], evaluate
