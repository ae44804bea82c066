"""Default networks and schedules for ``scoregen train``: what to train on a data set, by its shape."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..schedules import DiscreteVE, DiscreteVP, ncsnv2_levels

__all__ = ["ncsn_schedule", "default_network"]


def ncsn_schedule(x: Tensor, sigma_min: float = 0.01, max_points: int = 2000) -> DiscreteVE:
    """NCSNv2's recipe for a data set x (N, ...): sigma_max = the largest pairwise distance (technique 1,
    over at most ``max_points`` points), L by technique 2 for the data's dimension, sigma_min = 0.01."""
    flat = x.reshape(x.shape[0], -1)[:max_points].double()
    sigma_max = float(torch.cdist(flat, flat).max())
    if not sigma_max > sigma_min:
        raise ValueError(f"the data's largest pairwise distance {sigma_max:g} is not above sigma_min={sigma_min}: "
                         "is the data constant?")
    return DiscreteVE.geometric(sigma_max, sigma_min, ncsnv2_levels(sigma_max, sigma_min, flat.shape[1]))


def default_network(x: Tensor, objective: str, num_classes: int | None = None, conditional: bool = False) -> nn.Module:
    """The network ``scoregen train`` uses: MLPs for vectors (N, d); for images (N, C, H, W) the tiny DDPM
    U-Net or NCSNv2, and an MLP classifier on the flattened pixels. ``conditional`` makes a score network class-conditional (classifier-free guidance)."""
    from ..networks import MLPClassifier, MLPScoreNet

    if objective not in ("ddpm", "ncsn", "classifier"):
        raise ValueError(f"objective must be 'ddpm', 'ncsn' or 'classifier', got {objective!r}")
    if (objective == "classifier" or conditional) and not num_classes:
        raise ValueError(f"objective {objective!r}{' with --conditional' if conditional else ''} needs labelled data")
    classes = num_classes if conditional else None
    schedule = ncsn_schedule(x) if objective == "ncsn" else DiscreteVP.linear()
    if x.ndim == 2:
        d = x.shape[1]
        if objective == "classifier":
            return MLPClassifier(d, num_classes, schedule)
        return MLPScoreNet(d, schedule, "score" if objective == "ncsn" else "eps", num_classes=classes)
    if x.ndim == 4:
        from ..networks import NETWORKS

        if objective == "classifier":  # small images: an MLP on the flattened pixels
            return MLPClassifier(x[0].numel(), num_classes, schedule, hidden=256)
        name = {"ddpm": "UNet", "ncsn": "NCSNv2"}[objective]
        if name not in NETWORKS:
            raise ValueError(f"no image network for objective {objective!r} yet ({name})")
        # scoregen's image data lies in [-1, 1]: NCSNv2 takes it as is (centered) rather than from [0, 1]
        kwargs = {"num_classes": classes} if objective == "ddpm" else {"centered": True}
        return NETWORKS[name].tiny(image_size=x.shape[-1], in_channels=x.shape[1], schedule=schedule, **kwargs)
    raise ValueError(f"data of shape {tuple(x.shape)}: expected vectors (N, d) or images (N, C, H, W)")
