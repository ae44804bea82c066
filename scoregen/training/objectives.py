"""Training objectives.

* :func:`denoising_loss`: regress the network output on its target at a random trained level. For an eps
  network this is DDPM's ``L_simple = E ||eps - eps_theta(x_t, t)||^2``; for a score network it is NCSN's
  denoising score matching with lambda(sigma) = sigma^2, ``E sigma^2 ||s_theta(x0 + sigma z) + z / sigma||^2``,
  which is the same eps error written in score terms.
* ``weighting="vlb"``: DDPM's variational bound terms, ``L_{t-1} = beta_t^2 / (2 beta_tilde_t alpha_t (1 - abar_t))
  ||eps - eps_theta||^2`` (the KL between the Gaussian posteriors), for t = 2..T.
* :func:`hybrid_loss`: Nichol & Dhariwal's (2021) ``L_hybrid = L_simple + lambda L_vlb`` for an eps network with
  learned variance channels: L_simple trains eps, the bound term (through a stop-gradient on the mean) trains the
  variance. Units as improved-diffusion's: L_simple a mean over dimensions, L_vlb in bits per dimension.
* :func:`classifier_loss`: cross-entropy of a noise-conditional classifier on noised inputs.
* :func:`judge_loss`: cross-entropy of a clean-image classifier (a judge of samples) on clean images moved by
  random +-1 pixel shifts (:func:`shift_images`).
* :func:`drop_labels`: classifier-free guidance's label dropout to the null label.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_real
from ..likelihood.gaussian import Bins, discretized_gaussian_nll, gaussian_nll, normal_kl
from ..models import PARAMETERIZATIONS, from_eps
from ..schedules import DiscreteVE, DiscreteVP, Schedule
from ..variance import kernels


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
    m, sigma = schedule.m(labels), schedule.sigma(labels)  # the schedule's own coordinates (sub-VP: neither VP nor VE)
    def col(a: np.ndarray) -> Tensor:  # (B,) -> (B, 1, ...), broadcasting against x0
        return torch.as_tensor(a, dtype=x0.dtype, device=x0.device).reshape(-1, *([1] * (x0.ndim - 1)))

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
    if getattr(net, "learned_variance", False):
        raise ValueError("this network has learned variance channels (learned_variance=True): train it with "
                         "hybrid_loss (objective 'hybrid'), which also trains the variance")
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


# ------------------------------------------------------------------------------------ L_hybrid (improved DDPM)
@dataclass(frozen=True)
class _KernelTable:
    """The reverse kernels of a DiscreteVP's trained steps as arrays (T,), float64, in the order of
    ``schedule.times`` (noisiest first): entry i is the step from trained level i down to level i + 1, the last one
    down to the clean level (the decoder, ``beta_tilde = 0``). Fields as :class:`scoregen.variance.Kernel` (the
    posterior mean's ``a x_t`` part cancels in every term: the two posteriors share x_t)."""

    b: np.ndarray
    beta_tilde: np.ndarray
    log_beta: np.ndarray
    log_beta_tilde_clipped: np.ndarray


_TABLES: "weakref.WeakKeyDictionary[DiscreteVP, _KernelTable]" = weakref.WeakKeyDictionary()


def _kernel_table(schedule: DiscreteVP) -> _KernelTable:
    """:func:`scoregen.variance.kernels` on the trained levels plus the clean one, as arrays; kept per schedule
    (a thousand kernels take milliseconds, a training step of a small network not much more)."""
    table = _TABLES.get(schedule)
    if table is None:
        m, sigma = schedule.levels()  # noisiest first, like schedule.times
        ks = kernels(list(m) + [1.0], list(sigma) + [0.0])
        col = lambda name: np.array([getattr(k, name) for k in ks], dtype=np.float64)  # noqa: E731
        table = _KernelTable(b=col("b"), beta_tilde=col("beta_tilde"), log_beta=np.log(col("beta")),
                             log_beta_tilde_clipped=np.log(col("beta_tilde_clipped")))
        _TABLES[schedule] = table
    return table


def check_hybrid_network(net) -> None:
    """Refuse, with the reason, a network :func:`hybrid_loss` cannot train: it needs learned variance channels, a
    DiscreteVP schedule (the bound's terms are its trained steps) and the eps parameterization (improved-diffusion's
    L_simple is an eps error)."""
    if not getattr(net, "learned_variance", False):
        raise ValueError("the hybrid objective trains a learned variance: it needs a network with variance channels "
                         "(e.g. MLPScoreNet(..., learned_variance=True) or UNet.tiny(..., learned_variance=True))")
    if not isinstance(getattr(net, "schedule", None), DiscreteVP):
        raise ValueError(f"the hybrid objective is DDPM's bound on trained steps: it needs a network trained on a "
                         f"DiscreteVP schedule, got {getattr(net, 'schedule', None)!r}")
    if getattr(net, "parameterization", None) != "eps":
        raise ValueError(f"the hybrid objective's L_simple is an eps error: it needs an eps network, got "
                         f"parameterization {getattr(net, 'parameterization', None)!r}")


class HybridTerms(NamedTuple):
    """The two parts of L_hybrid per sample: ``simple`` (B,), ``mean_dims (eps - eps_theta)^2``; ``vlb`` (B,),
    ``T L_t`` in bits per dimension (L_t through the stop-gradient mean: it trains the variance only); ``t`` (B,),
    the labels drawn."""

    simple: Tensor
    vlb: Tensor
    t: np.ndarray


def _positions(schedule: DiscreteVP, n: int, t: Optional[float], generator: Optional[torch.Generator]) -> np.ndarray:
    """Positions in ``schedule.times`` (noisiest first): uniform (as :func:`sample_times` draws), or all at label t."""
    if t is None:
        return torch.randint(0, len(schedule.times), (n,), generator=generator).numpy()
    where = np.flatnonzero(schedule.times == float(t))
    if where.size == 0:
        raise ValueError(f"t={t!r} is not a trained label of {schedule!r} (labels {schedule.times.min():g} .. "
                         f"{schedule.times.max():g})")
    return np.full(n, where[0])


def _bound_term(x0: Tensor, x0_hat: Tensor, v: Tensor, table: _KernelTable, pos: np.ndarray,
                bins: Optional[Bins]) -> Tensor:
    """L_t per sample (B,), in bits per dimension, for each sample's step (``pos``): the Gaussian KL from
    ``q(x_{t-1} | x_t, x0) = N(a x_t + b x0, beta_tilde)`` to ``p = N(a x_t + b x0_hat, var)``, and at t = 1 the
    decoder's ``-log p(x0 | x_1)``, ``p = N(x0_hat, var)`` (discretised onto ``bins``, else a density).
    ``var = exp(v log beta + (1 - v) log beta_tilde_clipped)``: :func:`scoregen.variance.step_variance`'s
    ``learned`` variance, per sample. x0, x0_hat, v: (B, ...)."""
    def col(a: np.ndarray) -> Tensor:  # (B,) -> (B, 1, ...), broadcasting against x0
        return torch.as_tensor(a, dtype=x0.dtype, device=x0.device).reshape(-1, *([1] * (x0.ndim - 1)))

    var = torch.exp(v * col(table.log_beta[pos]) + (1.0 - v) * col(table.log_beta_tilde_clipped[pos]))
    decoder = pos == len(table.b) - 1
    # the posteriors share x_t, so their means differ by b (x0 - x0_hat); the decoder rows' beta_tilde (0) gets a
    # finite stand-in so that their KL, replaced below, and its gradient stay finite
    beta_tilde = col(np.where(decoder, 1.0, table.beta_tilde[pos]))
    b = col(table.b[pos])
    term = normal_kl(b * x0, beta_tilde, b * x0_hat, var).flatten(1).mean(1)
    if decoder.any():
        rows = torch.as_tensor(decoder, device=x0.device)
        nll = gaussian_nll(x0[rows], x0_hat[rows], var[rows]) if bins is None else \
            discretized_gaussian_nll(x0[rows], x0_hat[rows], var[rows], bins)
        term = term.masked_scatter(rows, nll.flatten(1).mean(1))
    return term / math.log(2.0)


def hybrid_terms(
    net: Callable[..., Tensor],
    x0: Tensor,
    *,
    bins: Optional[int] = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    y: Optional[Tensor] = None,
    t: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> HybridTerms:
    """The parts of Nichol & Dhariwal's L_hybrid for a batch ``x0`` (B, ...) at one draw per sample (see
    :func:`hybrid_loss`): a trained label (uniform, or the fixed label ``t``), ``eps ~ N(0, I)``,
    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, and one evaluation of ``net(x_t, t[, y])`` -> (B, 2C, ...):
    eps_theta, then the variance value, ``v = (value + 1) / 2``."""
    check_hybrid_network(net)
    schedule: DiscreteVP = net.schedule
    grid_bins = None if bins is None else Bins(bins, *data_range)
    if grid_bins is not None:
        grid_bins.index(x0)  # refuse data off the bins at every step, not only when a sample draws the decoder
    pos = _positions(schedule, x0.shape[0], t, generator)
    labels = schedule.times[pos]
    x_t, eps, m_, sigma_, t_in = _noised(schedule, x0, labels, generator)
    out = net(x_t, t_in) if y is None else net(x_t, t_in, y)
    want = (x0.shape[0], 2 * x0.shape[1], *x0.shape[2:])
    if tuple(out.shape) != want:
        raise ValueError(f"the network returned shape {tuple(out.shape)}, expected {want} (eps, then the variance "
                         "value)")
    eps_theta, value = out.chunk(2, dim=1)
    v = (value + 1.0) / 2.0  # improved-diffusion's learned range: value in [-1, 1] -> v in [0, 1]
    simple = ((eps - eps_theta) ** 2).flatten(1).mean(1)
    # stop-gradient on the mean (Nichol & Dhariwal sec. 3.1): L_vlb trains the variance, L_simple the mean
    x0_hat = (x_t - sigma_ * eps_theta.detach()) / m_
    vlb = len(schedule.times) * _bound_term(x0, x0_hat, v, _kernel_table(schedule), pos, grid_bins)
    return HybridTerms(simple, vlb, labels)


def hybrid_loss(
    net: Callable[..., Tensor],
    x0: Tensor,
    *,
    lam: float = 0.001,
    bins: Optional[int] = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    y: Optional[Tensor] = None,
    t: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Nichol & Dhariwal's (2021) ``L_hybrid = L_simple + lam L_vlb`` on a batch ``x0`` (B, ...): the batch mean.

    For a DiscreteVP eps network with learned variance channels (``net.learned_variance``; ``net(x_t, t[, y])``
    returns (B, 2C, ...): eps_theta, then a value in [-1, 1] mapped to ``v = (value + 1) / 2``). Per sample, t is
    drawn uniformly from the T trained labels (or fixed to ``t``) and

    * ``L_simple = mean_dims (eps - eps_theta)^2``;
    * ``L_vlb = T L_t``, an unbiased estimate of the bound's sum over steps, with ``L_t`` for t >= 2 the KL from
      ``q(x_{t-1} | x_t, x0)`` to ``p(x_{t-1} | x_t) = N(mu(x_t, x0_hat), var)`` and for t = 1 the decoder's
      ``-log p(x0 | x_1)`` (discretised onto ``bins`` values in ``data_range`` when ``bins`` is given, a Gaussian
      density otherwise). ``var = exp(v log beta_t + (1 - v) log beta_tilde_t)`` (beta_tilde_2 at t = 1), and the
      mean is computed from ``eps_theta.detach()``: L_vlb trains only the variance.

    Units (improved-diffusion's): L_simple is a mean over dimensions and L_t is in bits per dimension (nats averaged
    over dimensions, / ln 2), so ``lam = 0.001`` is improved-diffusion's ``loss = mse + (T / 1000) vb``. The prior
    term L_T has no parameters and is left out. Raises ValueError for a network without learned variance, on another
    schedule, or with another parameterization, and (with ``bins``) for data not on those values.
    """
    lam = check_real("lam (the weight of L_vlb)", lam, 0.0)
    simple, vlb, _ = hybrid_terms(net, x0, bins=bins, data_range=data_range, y=y, t=t, generator=generator)
    return (simple + lam * vlb).mean()


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
