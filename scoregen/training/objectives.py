"""Training objectives.

* :func:`denoising_loss`: regress the network output on its target at a random trained level. For an eps
  network this is DDPM's ``L_simple = E ||eps - eps_theta(x_t, t)||^2``; for a score network it is NCSN's
  denoising score matching with lambda(sigma) = sigma^2, ``E sigma^2 ||s_theta(x0 + sigma z) + z / sigma||^2``,
  which is the same eps error written in score terms.
* ``weighting="vlb"``: DDPM's variational bound terms, ``L_{t-1} = beta_t^2 / (2 beta_tilde_t alpha_t (1 - abar_t))
  ||eps - eps_theta||^2`` (the KL between the Gaussian posteriors), for t = 2..T.
* :func:`classifier_loss`: cross-entropy of a noise-conditional classifier on noised inputs.
* :func:`judge_loss`: cross-entropy of a clean-image classifier (a judge of samples) on clean images moved by
  random +-1 pixel shifts (:func:`shift_images`).
* :func:`drop_labels`: classifier-free guidance's label dropout to the null label.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import PARAMETERIZATIONS, from_eps
from ..schedules import DiscreteVE, DiscreteVP, Schedule, m_sigma_from_log_snr


def sample_times(schedule: Schedule, n: int, generator: Optional[torch.Generator] = None, *, skip_first: bool = False) -> np.ndarray:
    """n time labels: uniform over the trained labels (``skip_first``: without the least noisy one),
    uniform on [t_min, t_max] for continuous schedules."""
    if schedule.times is None:
        u = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
        return schedule.t_min + u * (schedule.t_max - schedule.t_min)
    labels = schedule.times[:-1] if skip_first else schedule.times  # noisiest first: the last is the least noisy
    idx = torch.randint(0, len(labels), (n,), generator=generator).numpy()
    return labels[idx]


def _noised(schedule: Schedule, x0: Tensor, labels: np.ndarray, generator: Optional[torch.Generator]):
    """x_t = m_t x0 + sigma_t eps at per-sample labels: (x_t, eps, m, sigma as (B, 1, ...), labels as float32 (B,))."""
    m, sigma = m_sigma_from_log_snr(schedule.log_snr(labels), schedule.variance_preserving)
    col = lambda a: torch.as_tensor(a, dtype=x0.dtype, device=x0.device).reshape(-1, *([1] * (x0.ndim - 1)))  # noqa: E731
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return col(m) * x0 + col(sigma) * eps, eps, col(m), col(sigma), torch.as_tensor(labels, dtype=torch.float32, device=x0.device)


def denoising_loss(
    net: Callable[..., Tensor],
    schedule: Schedule,
    x0: Tensor,
    *,
    parameterization: Optional[str] = None,
    y: Optional[Tensor] = None,
    weighting: Literal["simple", "vlb"] = "simple",
    t: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """One Monte Carlo estimate of the denoising objective on a batch ``x0`` of shape (B, ...).

    Draws a trained label per sample (or uses the fixed label ``t``), ``eps ~ N(0, I)``,
    ``x_t = m_t x0 + sigma_t eps``, and returns the batch mean of the per-sample squared error between
    ``net(x_t, t[, y])`` and its target in ``parameterization`` (default: ``net.parameterization``):
    eps, x0 and v regress on their own target (mean over dimensions); score is weighted by sigma^2
    (``||sigma s + eps||^2``, NCSN). ``weighting="vlb"`` (DiscreteVP, eps) gives the bound terms
    L_{t-1} = vlb_weight_t ||eps - eps_theta||^2 summed over dimensions, for t >= 2.
    """
    param = parameterization or getattr(net, "parameterization", None)
    if param not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS} (or set net.parameterization), got {param!r}")
    if weighting not in ("simple", "vlb"):
        raise ValueError(f"weighting must be 'simple' or 'vlb', got {weighting!r}")
    if weighting == "vlb" and not (isinstance(schedule, DiscreteVP) and param == "eps"):
        raise ValueError("weighting='vlb' is DDPM's bound: it needs a DiscreteVP schedule and an eps network")
    B = x0.shape[0]
    labels = np.full(B, float(t)) if t is not None else sample_times(schedule, B, generator, skip_first=weighting == "vlb")
    x_t, eps, m_, sigma_, t_in = _noised(schedule, x0, labels, generator)
    out = net(x_t, t_in) if y is None else net(x_t, t_in, y)
    if out.shape != x0.shape:
        raise ValueError(f"the network returned shape {tuple(out.shape)}, expected {tuple(x0.shape)}")
    dims = tuple(range(1, x0.ndim))
    if weighting == "vlb":
        w = torch.as_tensor(schedule.vlb_weight[(labels - schedule.first_index).astype(np.int64)], dtype=x0.dtype,
                            device=x0.device).reshape(sigma_.shape)
        return (w * (eps - out) ** 2).sum(dims).mean()
    if param == "score":
        return ((sigma_ * out + eps) ** 2).mean(dims).mean()
    target = from_eps(eps, x_t, m_.reshape(-1), sigma_.reshape(-1), param)
    return ((out - target) ** 2).mean(dims).mean()


def ddpm_loss(net, x0: Tensor, **kwargs) -> Tensor:
    """DDPM's objective on ``net.schedule`` (a DiscreteVP): L_simple, or ``weighting="vlb"``."""
    if not isinstance(net.schedule, DiscreteVP):
        raise ValueError(f"ddpm_loss needs a network trained on a DiscreteVP schedule, got {net.schedule!r}")
    return denoising_loss(net, net.schedule, x0, **kwargs)


def ncsn_loss(net, x0: Tensor, **kwargs) -> Tensor:
    """NCSN's denoising score matching over ``net.schedule`` (a DiscreteVE), lambda(sigma) = sigma^2."""
    if not isinstance(net.schedule, DiscreteVE):
        raise ValueError(f"ncsn_loss needs a network trained on a DiscreteVE schedule, got {net.schedule!r}")
    return denoising_loss(net, net.schedule, x0, **kwargs)


def classifier_loss(net: Callable[[Tensor, Tensor], Tensor], schedule: Schedule, x0: Tensor, y: Tensor,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """Cross-entropy of ``net(x_t, t) -> logits`` on inputs noised to random trained levels."""
    x_t, _, _, _, t_in = _noised(schedule, x0, sample_times(schedule, x0.shape[0], generator), generator)
    return F.cross_entropy(net(x_t, t_in), y.long())


def shift_images(x: Tensor, shift: int = 1, generator: Optional[torch.Generator] = None, fill: float = -1.0) -> Tensor:
    """Images x (B, C, H, W), each moved by its own random offset of ``-shift .. shift`` pixels along each axis
    (uniform, drawn from ``generator``, rows first); pixels moved in are ``fill`` (-1: the background of
    scoregen's images in [-1, 1]). ``shift=0`` returns x itself."""
    if x.ndim != 4:
        raise ValueError(f"shift_images takes images (B, C, H, W), got shape {tuple(x.shape)}")
    if shift == 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=fill).permute(0, 2, 3, 1)  # (B, H + 2s, W + 2s, C)
    dy = torch.randint(0, 2 * shift + 1, (B,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * shift + 1, (B,), generator=generator).to(x.device)
    rows = dy[:, None] + torch.arange(H, device=x.device)
    cols = dx[:, None] + torch.arange(W, device=x.device)
    batch = torch.arange(B, device=x.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def judge_loss(net: Callable[[Tensor], Tensor], x0: Tensor, y: Tensor, generator: Optional[torch.Generator] = None,
               shift: int = 1) -> Tensor:
    """Cross-entropy of a clean-image classifier ``net(x) -> logits`` on clean images x0 (B, C, H, W), each moved
    by a random shift of up to ``shift`` pixels (:func:`shift_images`): no noise, no time input."""
    return F.cross_entropy(net(shift_images(x0, shift, generator)), y.long())


def drop_labels(y: Tensor, p: float, null_label: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Replace each label by ``null_label`` with probability p (classifier-free guidance training)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label dropout probability must be in [0, 1], got {p}")
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop.to(y.device), torch.full_like(y, null_label), y)
