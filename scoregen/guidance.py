"""Guidance: transforms from a score model to another score model, so every sampler gets them for free.

Bayes' rule holds at every noise level: for an observation ``y`` of the clean data (a class label, a
measurement of an image),

    grad_x log p(x_t | y) = grad_x log p(x_t) + grad_x log p(y | x_t).

So conditioning a score model on ``y`` takes one differentiable function, the noisy log-likelihood
``log p(y | x_t)`` at the caller's level ``x_t = m x0 + sigma eps``. :class:`LikelihoodGuidance` adds
(a multiple of) its gradient to the score; :class:`ClassifierGuidance` is that combinator with
``log p(y | x_t) = log_softmax(classifier(x_t))[y]`` (:func:`classifier_log_likelihood`);
:func:`gaussian_measurement` is the standard approximation for linear inverse problems
``y = A x0 + sigma_y n`` (inpainting, denoising, deblurring, super-resolution).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ._checks import check_int, check_real
from .models import Level, ModelTransform, ScoreModel, _col, class_labels, innermost

__all__ = [
    "LikelihoodGuidance",
    "ClassifierGuidance",
    "ClassifierFreeGuidance",
    "GaussianMeasurement",
    "gaussian_measurement",
    "classifier_log_likelihood",
]

#: ``classifier(x, sigma, m) -> logits`` of shape (B, num_classes) for p(y | x_t) at the caller's level.
Classifier = Callable[[Tensor, Level, Level], Tensor]

#: ``log_likelihood(x, sigma, m, y) -> (B,)``: log p(y | x_t) at the caller's level (x = m x0 + sigma eps),
#: differentiable in x; ``y`` is the query's label (or None).
LogLikelihood = Callable[[Tensor, Level, Level, Optional[Tensor]], Tensor]

_NEEDS_LABEL = "classifier guidance needs a class label: pass y=... to sample()"

#: The largest classifier / classifier-free guidance scale accepted. Published settings are 1-10 (classifier
#: guidance, Dhariwal & Nichol 2021: gamma <= 10; classifier-free, Ho & Salimans 2022: w <= 4; Imagen and
#: latent diffusion up to about 30). Far above that, the guidance term is orders of magnitude larger than the
#: score: every sampler then overshoots (DDIM at gamma = 1e6 lands at |x| ~ 150 on ring2d, whose data has
#: |x| ~ 2) or, under x0 clipping, piles the samples on the clipping bounds, with no error to show for it.
MAX_GUIDANCE_SCALE = 100.0


def _guidance_scale(scale: object, what: str, max_scale: Optional[float]) -> float:
    """A finite number >= 0 (:func:`~scoregen._checks.check_real`: not a bool, not a string), and at most
    ``max_scale`` when given (see :data:`MAX_GUIDANCE_SCALE`); ``what`` names it."""
    scale = check_real(what, scale, 0.0)
    if max_scale is not None and scale > max_scale:
        raise ValueError(f"{what} = {scale:g} is beyond any published setting: it must be at most "
                         f"{max_scale:g} (usable range [0, {max_scale:g}]; published settings are 1-10). Far above that "
                         "the guidance term dwarfs the model's score and the samples follow neither the class nor the data")
    return scale


class LikelihoodGuidance(ModelTransform):
    """Posterior score from a prior score model and a noisy log-likelihood:
    ``score(x_t | y) = score(x_t) + gamma * grad_x log p(y | x_t)``, in eps terms ``eps - gamma * sigma * grad``.

    Args:
        model: the prior ``p(x_t)``, any score model. It is queried *without* the label: ``y`` is what the
            likelihood observes (Bayes' rule), not a condition of the prior.
        log_likelihood: ``log_likelihood(x, sigma, m, y) -> Tensor`` of shape ``(B,)``, the log-likelihood
            ``log p(y | x_t)`` (exact, or an approximation; constants in x do not matter) of a batch ``x``
            of shape ``(B, *model.shape)`` at the caller's level ``x = m x0 + sigma eps`` (``sigma``, ``m``
            floats or tensors of shape ``(B,)``). ``y`` is the query's label (``sample(..., y=...)``), or
            None; a measurement fixed in advance lives inside the callable (:func:`gaussian_measurement`).
            It must be differentiable in x with ``torch.autograd``; log-likelihoods of independent
            observations add, so several can be combined with one lambda.
        scale: gamma >= 0. With an exact prior and an exact log-likelihood, gamma = 1 is the exact posterior
            score at every level, so a sampler draws from ``p(x0 | y)``; gamma > 1 sharpens it.

    The gradient is taken by autograd on every query (any network evaluations inside the log-likelihood,
    such as DPS's x0_hat, are not counted in NFE), so this transform works eagerly but not under
    ``torch.func`` transforms.
    """

    #: When set, a query without a label is refused with this message (classifier guidance).
    _label_required: Optional[str] = None
    #: The largest scale accepted: None here, since a user's log-likelihood carries its own normalisation
    #: (a measurement's 1 / sigma_y^2, say) and any finite gamma >= 0 may be meaningful for it.
    max_scale: Optional[float] = None
    role = "the guidance"
    reads_input_only = True

    def __init__(self, model: ScoreModel, log_likelihood: LogLikelihood, scale: float = 1.0):
        super().__init__(model)
        scale = _guidance_scale(scale, "guidance scale", self.max_scale)
        if not callable(log_likelihood):
            raise TypeError(f"log_likelihood must be callable as log_likelihood(x, sigma, m, y) -> (batch,), "
                            f"got {type(log_likelihood).__name__}")
        self.log_likelihood, self.scale = log_likelihood, scale

    def grad_log_likelihood(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        """``grad_x log p(y | x_t)`` at the caller's level, shaped like x (autograd, also inside ``torch.no_grad``)."""
        with torch.enable_grad():
            try:
                x_in = x.detach().requires_grad_(True)
            except RuntimeError as e:  # torch.func transforms forbid requires_grad_ on their wrapped tensors
                raise RuntimeError("guidance takes its likelihood gradient with torch.autograd, which does not run inside "
                                   "torch.func transforms (vmap, grad, jacrev): call the guided model eagerly") from e
            log_p = self.log_likelihood(x_in, sigma, m, y)
            if not isinstance(log_p, Tensor) or log_p.shape != x.shape[:1]:
                got = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
                raise ValueError(f"the log-likelihood must return one value per sample, shape (batch,) = "
                                 f"{tuple(x.shape[:1])}, got {got}")
            if not log_p.requires_grad:
                raise ValueError("the log-likelihood is not differentiable in x (its result does not require grad): "
                                 "compute it with torch operations on x, outside torch.no_grad() and without .detach()")
            (grad,) = torch.autograd.grad(log_p.sum(), x_in, allow_unused=True)
        return torch.zeros_like(x) if grad is None else grad

    def _check_label(self, y: Optional[Tensor]) -> None:
        if y is None and self._label_required is not None:
            raise ValueError(self._label_required)

    #: Whether the wrapped model gets the query's label too (a class-conditional network under classifier guidance).
    pass_label = False

    def eps_and_variance(self, x: Tensor, sigma: Level, m: Level = 1.0,
                         y: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        self._check_label(y)
        eps, v = self.model.eps_and_variance(x, sigma, m, y if self.pass_label else None)
        if self.scale == 0.0:
            return eps, v
        return eps - self.scale * _col(sigma, x) * self.grad_log_likelihood(x, sigma, m, y), v

    def score(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        self._check_label(y)
        score = self.model.score(x, sigma, m, y if self.pass_label else None)
        if self.scale == 0.0:
            return score
        return score + self.scale * self.grad_log_likelihood(x, sigma, m, y)


def classifier_log_likelihood(classifier: Classifier) -> LogLikelihood:
    """``log p(y | x_t) = log_softmax(classifier(x, sigma, m))[y]``, shape (B,): a classifier as a log-likelihood.

    ``classifier(x, sigma, m)`` returns logits of shape (B, num_classes) at the caller's level; ``y`` is an
    int or a tensor of class labels (broadcast to (B,)), required.
    """

    def log_likelihood(x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        if y is None:
            raise ValueError(_NEEDS_LABEL)
        log_p = torch.log_softmax(classifier(x, sigma, m), dim=-1)
        if log_p.ndim != 2 or log_p.shape[0] != x.shape[0]:
            raise ValueError(f"the classifier must return logits of shape (batch, classes), got {tuple(log_p.shape)}")
        y = class_labels(y, x.shape[0], x.device, log_p.shape[1], "the classifier's ")
        return log_p.gather(1, y.reshape(-1, 1))[:, 0]

    log_likelihood.__doc__ = f"log p(y | x_t) = log_softmax(classifier(x, sigma, m))[y] of {classifier!r}, shape (B,)."
    return log_likelihood


class ClassifierGuidance(LikelihoodGuidance):
    """Classifier guidance (Dhariwal & Nichol 2021): ``score(x_t | y) = score(x_t) + gamma * grad_x log p(y | x_t)``.

    In eps terms ``eps - gamma * sigma * grad_x log p(y | x_t)``. gamma = 1 gives the exact conditional
    when both the model and the classifier are exact; gamma > 1 sharpens towards the class. The label
    comes from the query (``sample(..., y=3)``). The wrapped model is queried without it, unless it is a
    class-conditional network (its network has ``num_classes``; ``conditional_model`` overrides the detection): then
    it gets the label too, as guided-diffusion guides its conditional ImageNet models (``p(x | y) p(y | x)^gamma``).
    An exact mixture is never given the label (it would condition twice). The classifier's gradient is taken by autograd and is not counted as a network evaluation.
    This is :class:`LikelihoodGuidance` with :func:`classifier_log_likelihood`. gamma must be in
    [0, :data:`MAX_GUIDANCE_SCALE` = 100]: published settings are 1-10, and far above that the guidance term
    dwarfs the score (samples overshoot the data, or pile up on an x0 hook's clipping bounds).
    """

    _label_required = _NEEDS_LABEL
    max_scale = MAX_GUIDANCE_SCALE

    def __init__(self, model: ScoreModel, classifier: Classifier, scale: float = 1.0, *,
                 conditional_model: Optional[bool] = None):
        super().__init__(model, classifier_log_likelihood(classifier), scale)
        self.classifier = classifier
        self.pass_label = _class_conditional_network(model) if conditional_model is None else bool(conditional_model)


def _class_conditional_network(model: object) -> bool:
    """Whether the innermost model of a stack is a network adapter whose network takes class labels."""
    return getattr(getattr(innermost(model), "net", None), "num_classes", None) is not None


class ClassifierFreeGuidance(ModelTransform):
    """Classifier-free guidance (Ho & Salimans 2022): ``eps~ = (1 + w) eps(x, y) - w eps(x, null)``.

    ``model`` is class-conditional; ``null_label`` is the label it was trained to treat as "no class"
    (None: call the model without a label, as exact targets take it). w = 0 is the conditional model;
    for exact models it equals classifier guidance with gamma = 1 + w. NFE counts one query per step,
    each of which evaluates the network twice (conditional and unconditional, in one batch). w must be in
    [0, :data:`MAX_GUIDANCE_SCALE` = 100] (published settings: w <= 4 in Ho & Salimans, about 30 at most elsewhere).
    """

    role = "the guidance"
    reads_input_only = True

    def __init__(self, model: ScoreModel, null_label: Optional[int], scale: float = 0.0):
        super().__init__(model)
        self.null_label = None if null_label is None else check_int("null_label", null_label, 0)
        self.scale = _guidance_scale(scale, "guidance scale w", MAX_GUIDANCE_SCALE)

    def eps_and_variance(self, x: Tensor, sigma: Level, m: Level = 1.0,
                         y: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """The guided eps, and the conditional model's learned variance (GLIDE's choice), if any."""
        if y is None:
            raise ValueError("classifier-free guidance needs a class label: pass y=... to sample()")
        y = class_labels(y, x.shape[0], x.device)
        if self.scale == 0.0:
            return self.model.eps_and_variance(x, sigma, m, y)
        if self.null_label is None:
            (cond, v), uncond = self.model.eps_and_variance(x, sigma, m, y), self.model.eps(x, sigma, m)
        else:  # one batched network call for both halves
            both, v = self.model.eps_and_variance(torch.cat([x, x]), _twice(sigma), _twice(m),
                                                  torch.cat([y, torch.full_like(y, self.null_label)]))
            cond, uncond = both.chunk(2)
            v = None if v is None else v.chunk(2)[0]
        return cond + self.scale * (cond - uncond), v


def _twice(level: Level) -> Level:
    return torch.cat([level, level]) if isinstance(level, Tensor) and level.ndim > 0 else level


Operator = Union[Callable[[Tensor], Tensor], Tensor]


class GaussianMeasurement:
    """The noisy log-likelihood of a linear-Gaussian measurement ``y = A x0 + sigma_y n``, ``n ~ N(0, I)``:

        log p(y | x_t) ~= log N(y; A x0_hat(x_t), (sigma_y^2 + r_t^2) I)

    ``x0_hat(x_t) = (x_t - sigma eps(x_t)) / m = E[x0 | x_t]`` (Tweedie) comes from the prior ``model`` itself,
    and the gradient flows through the model. ``r_t^2`` stands in for the spread of x0 around x0_hat:

    * ``data_var=None``: ``r_t^2 = 0``, DPS (Chung et al. 2023: ``p(y | x_t) ~= p(y | x0_hat(x_t))``);
    * ``data_var=s^2``: ``r_t^2 = s^2 sigma_ve^2 / (s^2 + sigma_ve^2)`` with ``sigma_ve = sigma / m``, the exact
      variance of x0 given x_t under a ``N(mu, s^2 I)`` prior (PiGDM, Song et al. 2023, with s^2 = 1).
      It keeps the guidance in scale where sigma_ve >> sigma_y, and makes the log-likelihood exact for a
      Gaussian prior with variance s^2 when A has orthonormal rows (a mask, the identity); for other A,
      ``r_t^2 A A^T`` is replaced by ``r_t^2 I``.

    Use it with :class:`LikelihoodGuidance`, whose ``scale`` multiplies the whole log-likelihood (DPS's own
    normalised step ``zeta / ||y - A x0_hat||`` is not reproduced). With a trained network, x0_hat's Jacobian
    at the highest noise levels can be poor enough to make guidance diverge; temper the likelihood there, e.g.
    ``lambda x, sigma, m, y: (sigma / m < 10) * measurement(x, sigma, m, y)`` (see examples/inpaint_digits.py).

    Args:
        model: the prior score model (the same one the guidance wraps); queried without a label.
        operator: A. A callable ``A(x0) -> (B, *measurement_shape)`` for x0 of shape ``(B, *model.shape)``, or
            a 0/1 tensor mask of shape ``model.shape`` or ``(B, *model.shape)`` (``A x0 = mask * x0``:
            inpainting; entries where the mask is 0 are unobserved). For another diagonal operator pass a
            callable, e.g. ``lambda x0: w * x0``.
        y_obs: the measurement y, shape ``measurement_shape`` (one for every sample) or ``(B, *measurement_shape)``
            (one per sample). With a mask, ``measurement_shape`` is ``model.shape`` and unobserved entries
            are ignored.
        sigma_y: the measurement noise std, >= 0 (0 needs ``data_var``).
        data_var: s^2 of the r_t^2 term above (per coordinate of x0), or None for DPS.

    Calling it, ``measurement(x, sigma, m=1.0, y=None)`` returns ``log N(y_obs; A x0_hat, (sigma_y^2 + r_t^2) I)``
    of shape (B,) at the caller's level ``x = m x0 + sigma eps`` (sigma, m floats or (B,) tensors), normalising
    constant included; the query's label ``y`` is ignored (the measurement is ``y_obs``).
    """

    def __init__(self, model: ScoreModel, operator: Operator, y_obs: Tensor, sigma_y: float, *,
                 data_var: Optional[float] = None):
        self.model = model
        if not isinstance(y_obs, Tensor):
            raise TypeError(f"y_obs (the measurement) must be a tensor, got {type(y_obs).__name__}")
        sigma_y = check_real("sigma_y (the measurement noise std)", sigma_y, 0.0)
        if data_var is not None:
            data_var = check_real("data_var (the prior variance per coordinate of x0)", data_var, 0.0, lo_open=True)
        elif sigma_y == 0:
            raise ValueError("sigma_y = 0 with data_var=None makes the DPS likelihood N(y; A x0_hat, 0) infinitely sharp: "
                             "give the measurement noise std sigma_y > 0, or data_var for the r_t^2 term")
        self.y, self.sigma_y, self.data_var = y_obs, sigma_y, data_var
        shape = tuple(getattr(model, "shape", ()) or ())
        if isinstance(operator, Tensor):
            mask = operator
            if shape and (tuple(mask.shape) != shape and tuple(mask.shape[1:]) != shape):
                raise ValueError(f"a mask operator must have the model's sample shape {shape} or (batch, *{shape}), "
                                 f"got {tuple(mask.shape)}")
            if bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError("a mask operator must hold only 0 (unobserved) and 1 (observed); for another diagonal "
                                 "operator pass a callable, e.g. operator=lambda x0: w * x0")
            if shape and (tuple(y_obs.shape) != shape and tuple(y_obs.shape[1:]) != shape):
                raise ValueError(f"with a mask operator, y_obs must have the model's sample shape {shape} or "
                                 f"(batch, *{shape}), got {tuple(y_obs.shape)}")
            observed, y_b = torch.broadcast_tensors(mask != 0, y_obs)
            if not bool(torch.isfinite(y_b[observed]).all()):
                raise ValueError("y_obs holds NaN or inf at observed entries (where the mask is 1): a measurement must be finite")
            self.mask: Optional[Tensor] = mask
            self.A: Callable[[Tensor], Tensor] = lambda x0: self.mask.to(x0) * x0  # noqa: E731
        elif callable(operator):
            if not bool(torch.isfinite(y_obs).all()):
                raise ValueError("y_obs holds NaN or inf: a measurement must be finite (hide entries with a 0/1 mask operator)")
            self.mask, self.A = None, operator
        else:
            raise TypeError(f"operator (A) must be a callable A(x0) or a 0/1 mask tensor, got {type(operator).__name__}")

    def r2(self, sigma: Level, m: Level = 1.0) -> Level:
        """r_t^2, the variance of x0 around x0_hat the likelihood assumes at level (sigma, m): 0 (DPS) or
        ``s^2 sigma_ve^2 / (s^2 + sigma_ve^2)``, ``sigma_ve = sigma / m``. A float, or shape (B,) for tensor levels."""
        if self.data_var is None:
            return 0.0
        ve2 = (sigma / m) ** 2
        return self.data_var * ve2 / (self.data_var + ve2)

    def residual(self, x0: Tensor) -> Tensor:
        """``y - A x0`` of shape ``(B, *measurement_shape)`` for x0 of shape ``(B, *model.shape)``; 0 where a mask hides y."""
        if self.mask is not None and self.mask.ndim > len(x0.shape[1:]) and self.mask.shape[0] != x0.shape[0]:
            raise ValueError(f"the per-sample mask has {self.mask.shape[0]} masks for a batch of {x0.shape[0]} samples: "
                             f"sample n = {self.mask.shape[0]}, or pass one mask of shape {tuple(x0.shape[1:])} for all")
        Ax = self.A(x0)
        if not isinstance(Ax, Tensor) or Ax.ndim < 1 or Ax.shape[0] != x0.shape[0]:
            got = tuple(Ax.shape) if isinstance(Ax, Tensor) else type(Ax).__name__
            raise ValueError(f"the operator A must map x0 of shape {tuple(x0.shape)} to a batch (batch, ...) of "
                             f"measurements, got {got}")
        y = self.y.to(Ax)
        if y.shape != Ax.shape and y.shape != Ax.shape[1:]:
            raise ValueError(f"the measurement y_obs has shape {tuple(y.shape)}, but A maps a batch x0 of shape "
                             f"{tuple(x0.shape)} to {tuple(Ax.shape)}: pass y_obs of shape {tuple(Ax.shape[1:])} "
                             f"(one measurement for all samples) or {tuple(Ax.shape)} (one per sample)")
        if self.mask is not None:  # hidden entries of y may hold anything (NaN included): they are never read
            return torch.where(self.mask.to(Ax.device) != 0, y, torch.zeros_like(y)) - Ax
        return y - Ax

    def _observed(self, x: Tensor, residual: Tensor) -> Union[float, Tensor]:
        """The number of measured values per sample: a float, or (B,) for a per-sample mask."""
        if self.mask is None:
            return float(residual[0].numel())
        counts = self.mask.to(x).expand_as(residual).reshape(residual.shape[0], -1).sum(1)
        return counts

    def __call__(self, x: Tensor, sigma: Level, m: Level = 1.0, y: Optional[Tensor] = None) -> Tensor:
        x0_hat = self.model.x0(x, sigma, m)
        if x0_hat.shape != x.shape:
            raise ValueError(f"the model's x0_hat has shape {tuple(x0_hat.shape)}, expected {tuple(x.shape)}")
        residual = self.residual(x0_hat)
        var = self.sigma_y ** 2 + self.r2(_level(sigma, x), _level(m, x))
        if bool(torch.as_tensor(var <= 0).any()):
            raise ValueError("the likelihood's variance sigma_y^2 + r_t^2 is 0 at this level (sigma = 0 and sigma_y = 0)")
        sq = residual.pow(2).reshape(residual.shape[0], -1).sum(1)
        k = self._observed(x, residual)
        log_norm = k * (torch.log(2 * math.pi * var) if isinstance(var, Tensor) else math.log(2 * math.pi * var))
        return -0.5 * sq / var - 0.5 * log_norm

    def __repr__(self) -> str:
        A = "mask" if self.mask is not None else getattr(self.A, "__name__", type(self.A).__name__)
        return (f"GaussianMeasurement(A={A}, y_obs {tuple(self.y.shape)}, sigma_y={self.sigma_y:g}, "
                f"data_var={self.data_var})")


def gaussian_measurement(model: ScoreModel, operator: Operator, y_obs: Tensor, sigma_y: float, *,
                         data_var: Optional[float] = None) -> GaussianMeasurement:
    """The log-likelihood ``log p(y | x_t) ~= log N(y; A x0_hat(x_t), (sigma_y^2 + r_t^2) I)`` of a linear-Gaussian
    measurement ``y = A x0 + sigma_y n`` (DPS, Chung et al. 2023; with ``data_var``, PiGDM's r_t^2), for
    :class:`LikelihoodGuidance`. See :class:`GaussianMeasurement` for the arguments and shapes::

        measurement = gaussian_measurement(model, mask, y_obs, sigma_y=0.05, data_var=1.0)
        posterior = LikelihoodGuidance(model, measurement)
        sample(posterior, "ddim", n=len(y_obs), seed=0)
    """
    return GaussianMeasurement(model, operator, y_obs, sigma_y, data_var=data_var)


def _level(level: Level, x: Tensor) -> Level:
    """A tensor level as (B,) in x's dtype (0-d broadcast); floats pass through."""
    if isinstance(level, Tensor):
        return level.to(x).expand(x.shape[0]) if level.ndim == 0 else level.to(x)
    return float(level)
