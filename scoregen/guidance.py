"""Guidance: transforms from a score model to another score model, so every sampler gets them for free."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .models import Level, ModelTransform, ScoreModel, _col

__all__ = ["ClassifierGuidance"]

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
