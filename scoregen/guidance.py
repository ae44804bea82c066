"""Guidance: transforms from a score model to another score model, so every sampler gets them for free."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .models import Level, ModelTransform, ScoreModel, _col

__all__ = ["ClassifierGuidance", "ClassifierFreeGuidance"]

#: ``classifier(x, sigma, m) -> logits`` of shape (B, num_classes) for p(y | x_t) at the caller's level.
Classifier = Callable[[Tensor, Level, Level], Tensor]


class ClassifierGuidance(ModelTransform):
    """Classifier guidance (Dhariwal & Nichol 2021): ``score(x_t | y) = score(x_t) + gamma * grad_x log p(y | x_t)``.

    In eps terms ``eps - gamma * sigma * grad_x log p(y | x_t)``. gamma = 1 gives the exact conditional
    when both the model and the classifier are exact; gamma > 1 sharpens towards the class. The label
    comes from the query (``sample(..., y=3)``); the wrapped model itself is queried without it.
    The classifier's gradient is taken by autograd and is not counted as a network evaluation.
    """

    def __init__(self, model: ScoreModel, classifier: Classifier, scale: float = 1.0):
        super().__init__(model)
        if not scale >= 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.classifier, self.scale = classifier, float(scale)

    def grad_log_prob(self, x: Tensor, sigma: Level, m: Level, y: Tensor) -> Tensor:
        """``grad_x log p(y | x_t)`` at the caller's level, shape like x."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(self.classifier(x_in, sigma, m), dim=-1)
            if log_p.ndim != 2 or log_p.shape[0] != x.shape[0]:
                raise ValueError(f"the classifier must return logits of shape (batch, classes), got {tuple(log_p.shape)}")
            y = torch.as_tensor(y, device=x.device).long().reshape(-1).expand(x.shape[0])
            if bool(((y < 0) | (y >= log_p.shape[1])).any()):
                raise ValueError(f"class labels must be in 0..{log_p.shape[1] - 1} (the classifier's classes), got {sorted(set(y.tolist()))}")
            picked = log_p.gather(1, y.reshape(-1, 1))
            return torch.autograd.grad(picked.sum(), x_in)[0]

    def eps(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        if y is None:
            raise ValueError("classifier guidance needs a class label: pass y=... to sample()")
        eps = self.model.eps(x, sigma, m)
        if self.scale == 0.0:
            return eps
        return eps - self.scale * _col(sigma, x) * self.grad_log_prob(x, sigma, m, y)

    def score(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        if y is None:
            raise ValueError("classifier guidance needs a class label: pass y=... to sample()")
        return self.model.score(x, sigma, m) + self.scale * self.grad_log_prob(x, sigma, m, y)


class ClassifierFreeGuidance(ModelTransform):
    """Classifier-free guidance (Ho & Salimans 2022): ``eps~ = (1 + w) eps(x, y) - w eps(x, null)``.

    ``model`` is class-conditional; ``null_label`` is the label it was trained to treat as "no class"
    (None: call the model without a label, as exact targets take it). w = 0 is the conditional model;
    for exact models it equals classifier guidance with gamma = 1 + w. NFE counts one query per step,
    each of which evaluates the network twice (conditional and unconditional, in one batch).
    """

    def __init__(self, model: ScoreModel, null_label: Optional[int], scale: float = 0.0):
        super().__init__(model)
        if not scale >= 0:
            raise ValueError(f"guidance scale w must be >= 0, got {scale}")
        self.null_label, self.scale = null_label, float(scale)

    def eps(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        if y is None:
            raise ValueError("classifier-free guidance needs a class label: pass y=... to sample()")
        y = torch.as_tensor(y, device=x.device).long().reshape(-1).expand(x.shape[0])
        if self.scale == 0.0:
            return self.model.eps(x, sigma, m, y)
        if self.null_label is None:
            cond, uncond = self.model.eps(x, sigma, m, y), self.model.eps(x, sigma, m)
        else:  # one batched network call for both halves
            both = self.model.eps(torch.cat([x, x]), _twice(sigma), _twice(m), torch.cat([y, torch.full_like(y, self.null_label)]))
            cond, uncond = both.chunk(2)
        return cond + self.scale * (cond - uncond)


def _twice(level: Level) -> Level:
    return torch.cat([level, level]) if isinstance(level, Tensor) and level.ndim > 0 else level
