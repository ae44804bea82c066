"""Small MLPs for low-dimensional data: a score network and a noise-conditional classifier."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..models import PARAMETERIZATIONS, NetworkClassifier
from ..schedules import Schedule
from .base import (MAX_BLOCKS, MAX_SIZE, ConfigurableNetwork, ScoreNetwork, check_learned_variance, learned_variance_arg,
                   standard_normal)
from .embedding import sinusoidal_embedding


def _time_scale(schedule: Schedule) -> float:
    """Labels are embedded after scaling to ~[0, 1000], DDPM's range, whatever the schedule's convention."""
    if schedule.times is None:
        return 1000.0
    return 1000.0 / max(1.0, float(abs(schedule.times).max()))


def _sizes(dim, hidden, depth, emb_dim) -> tuple[int, int, int, int]:
    """The MLP's sizes, checked: integers in 1 .. MAX_SIZE (depth in 0 .. MAX_BLOCKS), an even emb_dim."""
    emb_dim = check_int("emb_dim", emb_dim, 1, MAX_SIZE)
    if emb_dim % 2:
        raise ValueError(f"emb_dim must be even (it is the sinusoidal embedding width), got {emb_dim}")
    return (check_int("dim", dim, 1, MAX_SIZE), check_int("hidden", hidden, 1, MAX_SIZE),
            check_int("depth", depth, 0, MAX_BLOCKS), emb_dim)


class _TimeMLP(nn.Module):
    """x, t -> out: residual SiLU blocks with the time embedding (and an optional label embedding) added."""

    def __init__(self, dim_in: int, dim_out: int, schedule: Schedule, hidden: int, depth: int, emb_dim: int,
                 num_labels: int = 0):
        super().__init__()
        self.time_scale, self.emb_dim = _time_scale(schedule), emb_dim
        self.time = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_labels, hidden, _weight=standard_normal(num_labels, hidden)) if num_labels else None
        self.inp = nn.Linear(dim_in, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim_out))

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        emb = self.time(sinusoidal_embedding(t * self.time_scale, self.emb_dim).to(x.dtype))
        if self.label is not None:
            if y is None:  # no label: the null label the network was trained with for classifier-free guidance
                y = torch.full((x.shape[0],), self.label.num_embeddings - 1, device=x.device)
            emb = emb + self.label(y.long())
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


class MLPScoreNet(ScoreNetwork):
    """``net(x, t[, y])`` for data of shape (B, dim), trained on ``schedule``, output in ``parameterization``.

    With ``num_classes`` it is class-conditional; label ``num_classes`` is the null label (classifier-free
    guidance trains with labels dropped to it), also used when no label is given. ``score_model()`` makes it a :class:`~scoregen.ScoreModel`.

    ``learned_variance=True`` (Nichol & Dhariwal 2021; objective ``hybrid``) doubles the output to (B, 2 dim): the
    prediction, then improved-diffusion's variance value in [-1, 1] per dimension (``v = (value + 1) / 2``,
    :meth:`~scoregen.ScoreModel.eps_and_variance`). The variance half of the last layer starts at zero, so v starts
    at 1/2, the log-space midpoint of beta_tilde and beta.
    """

    def __init__(self, dim: int, schedule: Schedule, parameterization: Literal["eps", "score", "x0", "v"] = "eps",
                 hidden: int = 128, depth: int = 3, emb_dim: int = 64, num_classes: Optional[int] = None,
                 learned_variance: bool = False):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")
        dim, hidden, depth, emb_dim = _sizes(dim, hidden, depth, emb_dim)
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, 1, MAX_SIZE)
        self.learned_variance = check_learned_variance(learned_variance)
        self.schedule, self.parameterization, self.shape = schedule, parameterization, (dim,)
        self.num_classes = num_classes
        self._args = dict(dim=dim, parameterization=parameterization, hidden=hidden, depth=depth, emb_dim=emb_dim,
                          num_classes=num_classes, **learned_variance_arg(self.learned_variance))
        out_dim = 2 * dim if self.learned_variance else dim
        self.body = _TimeMLP(dim, out_dim, schedule, hidden, depth, emb_dim, 0 if num_classes is None else num_classes + 1)
        if self.learned_variance:
            last = self.body.out[1]
            with torch.no_grad():  # variance value 0 at init: v = 1/2 everywhere
                last.weight[dim:].zero_()
                last.bias[dim:].zero_()

    @property
    def null_label(self) -> Optional[int]:
        return self.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """x: (B, dim); t: (B,) labels; y: (B,) class labels or None -> (B, dim), or (B, 2 dim) with learned variance."""
        return self.body(x, t, y)


class MLPClassifier(ConfigurableNetwork):
    """A noise-conditional classifier ``net(x_t, t) -> logits`` of shape (B, num_classes), trained on ``schedule``."""

    def __init__(self, dim: int, num_classes: int, schedule: Schedule, hidden: int = 128, depth: int = 3, emb_dim: int = 64):
        super().__init__()
        dim, hidden, depth, emb_dim = _sizes(dim, hidden, depth, emb_dim)
        num_classes = check_int("num_classes", num_classes, 2, MAX_SIZE)
        self.schedule, self.num_classes = schedule, num_classes
        self._args = dict(dim=dim, num_classes=num_classes, hidden=hidden, depth=depth, emb_dim=emb_dim)
        self.body = _TimeMLP(dim, num_classes, schedule, hidden, depth, emb_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: (B, dim) or any (B, ...) with dim entries per sample (images are flattened); returns (B, num_classes)."""
        return self.body(x.reshape(x.shape[0], -1), t)

    def classifier(self, time: Literal["nearest", "fractional"] = "fractional") -> NetworkClassifier:
        """The ``classifier(x, sigma, m) -> logits`` callable that :class:`~scoregen.ClassifierGuidance` takes."""
        return NetworkClassifier(self, self.schedule, time=time)


__all__ = ["MLPScoreNet", "MLPClassifier"]
