"""Score-SDE's image networks (Song et al. 2021, yang-song/score_sde_pytorch): NCSN++ / DDPM++ and its DDPM U-Net.

:class:`NCSNpp` is the reference's ``ncsnpp`` model, which serves both the NCSN++ configs (Fourier noise embedding,
FIR resampling, progressive input pyramid) and the DDPM++ ones (positional embedding, plain resampling);
:class:`ScoreSDEDDPM` is its ``ddpm`` model (Ho et al.'s U-Net with ResnetBlockDDPM). Both keep the reference's
layout so that a checkpoint loads strictly: a buffer ``sigmas`` (float64, ``num_scales`` geometric levels from
sigma_max down to sigma_min, as the reference's ``get_sigmas``) and one flat ``nn.ModuleList`` ``all_modules``
whose entries have the reference's names (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``NIN_0``, ``Conv2d_0``, ``W``,
...) in the reference's order, so that parameters also come in ``model.parameters()`` order (the order of an EMA's
``shadow_params`` list).

Calling convention (the reference's): ``net(x, labels)`` with ``x`` of shape (B, C, H, W) in [0, 1] (the network
centres it with ``2x - 1``) or, with ``centered=True``, in [-1, 1]; ``labels`` of shape (B,) is the noise std sigma
for ``embedding_type="fourier"`` (it embeds log sigma), else a time label embedded sinusoidally (a step index, or
999 t for continuous VP / sub-VP training). With ``scale_by_sigma`` the output is divided by sigma (the label itself
for Fourier, ``sigmas[labels]`` for a positional embedding): the VE score; otherwise the raw output (eps for VP /
sub-VP training). Which label a trained checkpoint expects is the loader's business
(:mod:`scoregen.interop.score_sde`). Dropout is applied in training mode only, as in the reference.

Only options with a meaning in the reference are accepted; anything else is a ValueError naming the option.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import standard_normal

__all__ = ["NCSNpp", "ScoreSDEDDPM", "upfirdn2d", "geometric_sigmas"]

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2), "swish": nn.SiLU}
RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")
EMBEDDINGS = ("fourier", "positional")


def geometric_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> np.ndarray:
    """The reference's ``get_sigmas``: ``num_scales`` levels, log-uniform from sigma_max down to sigma_min (float64)."""
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))


# ------------------------------------------------------------------------------------------ initialisation
def _ddpm_init_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """DDPM's initialiser (TF variance scaling, fan_avg, uniform) in place; ``scale=0`` means 1e-10 (a near-zero
    residual branch). Output channels on axis 0, input channels on axis 1. Nothing is drawn on the meta device."""
    if weight.is_meta:
        return weight
    receptive = math.prod(weight.shape[2:]) if weight.ndim > 2 else 1
    fan_avg = 0.5 * (weight.shape[0] + weight.shape[1]) * receptive
    bound = math.sqrt(3.0 * (scale if scale != 0 else 1e-10) / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def _conv(in_ch: int, out_ch: int, kernel: int = 3, *, stride: int = 1, padding: Optional[int] = None,
          init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2 if padding is None else padding)
    _ddpm_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def _dense(in_f: int, out_f: int) -> nn.Linear:
    dense = nn.Linear(in_f, out_f)
    _ddpm_init_(dense.weight)
    nn.init.zeros_(dense.bias)
    return dense


def _norm_act_conv(mods, act: nn.Module, h: Tensor) -> Tensor:
    """``conv(act(norm(h)))`` with the next two modules of the iterator ``mods``: a norm, then a conv."""
    norm = next(mods)
    return next(mods)(act(norm(h)))


def _group_norm(channels: int, ddpm_groups: bool) -> nn.GroupNorm:
    """The DDPM model's 32 groups, or NCSN++'s ``min(channels // 4, 32)``."""
    return nn.GroupNorm(32 if ddpm_groups else min(channels // 4, 32), channels, eps=1e-6)


def timestep_embedding(labels: Tensor, dim: int) -> Tensor:
    """Transformer-style sinusoids of a (B,) float label: (B, dim), sin half then cos half, frequencies
    ``10000^(-i / (dim/2 - 1))``; an odd ``dim`` gets a zero last column."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=labels.device) * (-math.log(10000) / (half - 1)))
    angles = labels.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


# ---------------------------------------------------------------------------------------- FIR resampling
def _fir_kernel(taps: Sequence[float], gain: float, like: Tensor) -> Tensor:
    """The separable 2-D filter ``outer(k, k) / sum`` times ``gain``, as a tensor like ``like``."""
    k = np.asarray(taps, dtype=np.float32)
    k2 = np.outer(k, k)
    return torch.as_tensor(k2 / k2.sum() * gain, dtype=like.dtype, device=like.device)


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, convolve each channel with ``kernel`` (a true convolution), keep every
    ``down``-th pixel: StyleGAN2's upfirdn2d on (N, C, H, W), for non-negative pads (all that NCSN++ uses)."""
    n, c, h, w = x.shape
    if up > 1:
        spread = x.new_zeros(n, c, h * up, w * up)
        spread[:, :, ::up, ::up] = x
        x = spread
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def fir_upsample(x: Tensor, taps: Sequence[float], factor: int = 2) -> Tensor:
    k = _fir_kernel(taps, factor**2, x)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample(x: Tensor, taps: Sequence[float], factor: int = 2) -> Tensor:
    k = _fir_kernel(taps, 1.0, x)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def _check_fir_taps(taps) -> list[float]:
    """A 1-D FIR kernel whose resampling pads are all non-negative (length 2..8 around a 3x3 conv; the published
    configs use [1, 3, 3, 1])."""
    try:
        values = [float(v) for v in taps]
    except (TypeError, ValueError):
        raise ValueError(f"fir_kernel must be a list of numbers such as [1, 3, 3, 1], got {taps!r}") from None
    if not 4 <= len(values) <= 8 or not all(math.isfinite(v) for v in values) or sum(values) == 0:
        raise ValueError(f"fir_kernel must have 4 to 8 finite taps with a non-zero sum (the published configs use "
                         f"[1, 3, 3, 1]), got {taps!r}")
    return values


class FIRDownConv2d(nn.Module):
    """A 3x3 convolution fused with FIR downsampling by 2 (the reference's ``up_or_down_sampling.Conv2d`` with
    ``down=True``): the FIR filter, then a stride-2 convolution. (Its ``up=True`` twin does not run in the
    reference's PyTorch code: see :func:`_check_upsampling`.)"""

    def __init__(self, in_ch: int, out_ch: int, *, taps: Sequence[float]):
        super().__init__()
        self.weight = nn.Parameter(_ddpm_init_(torch.empty(out_ch, in_ch, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.taps = list(taps)

    def forward(self, x: Tensor) -> Tensor:
        k = _fir_kernel(self.taps, 1.0, x)
        p = k.shape[0] - 2 + 2  # the filter's excess over the factor, plus the 3x3 conv's
        h = F.conv2d(upfirdn2d(x, k, pad=((p + 1) // 2, p // 2)), self.weight, stride=2)
        return h + self.bias.reshape(1, -1, 1, 1)


# -------------------------------------------------------------------------------------------------- layers
class NIN(nn.Module):
    """A 1x1 convolution stored as a matrix ``W`` (in, out) and bias ``b`` (the reference's network-in-network)."""

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(_ddpm_init_(torch.empty(in_dim, num_units), init_scale))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bchw,co->bohw", x, self.W) + self.b[:, None, None]


class FourierEmbedding(nn.Module):
    """Random Fourier features of log sigma: ``[sin(2 pi W z), cos(2 pi W z)]``, ``W ~ N(0, scale^2)`` fixed
    (a parameter without gradient, so absent from an EMA's shadow list)."""

    def __init__(self, embedding_size: int, scale: float):
        super().__init__()
        self.W = nn.Parameter(standard_normal(embedding_size) * scale, requires_grad=False)

    def forward(self, z: Tensor) -> Tensor:
        proj = z[:, None] * self.W[None, :] * 2 * np.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class AttnBlock(nn.Module):
    """Self-attention over pixels, residual; DDPM's (32 groups) or DDPM++'s (with ``skip_rescale``)."""

    def __init__(self, channels: int, *, ddpm_groups: bool = False, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = _group_norm(channels, ddpm_groups)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        logits = torch.einsum("bcq,bck->bqk", q.reshape(b, c, -1), k.reshape(b, c, -1)) * c ** -0.5
        h = torch.einsum("bqk,bck->bcq", logits.softmax(dim=-1), v.reshape(b, c, -1)).reshape(b, c, hgt, wid)
        out = x + self.NIN_3(h)
        return out / math.sqrt(2.0) if self.skip_rescale else out


def _residual_tail(block: nn.Module, shortcut: Tensor, h: Tensor, temb: Optional[Tensor]) -> Tensor:
    """The second half both residual blocks share: + Dense(act(temb)), GN, act, dropout, conv, then the shortcut
    added (and divided by sqrt 2 with ``skip_rescale``)."""
    if temb is not None:
        h = h + block.Dense_0(block.act(temb))[:, :, None, None]
    h = block.Conv_1(block.Dropout_0(block.act(block.GroupNorm_1(h))))
    return (shortcut + h) / math.sqrt(2.0) if block.skip_rescale else shortcut + h


class ResnetBlockDDPM(nn.Module):
    """DDPM's residual block: GN, act, conv, + Dense(act(temb)), GN, act, dropout, conv, with a NIN shortcut when
    the channels change. ``ddpm_groups``/no rescale for the DDPM model, NCSN++'s groups and ``skip_rescale`` for
    DDPM++ (the reference's ResnetBlockDDPMpp)."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int, temb_dim: int, dropout: float, *,
                 ddpm_groups: bool, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = _group_norm(in_ch, ddpm_groups)
        self.act = act
        self.Conv_0 = _conv(in_ch, out_ch)
        self.Dense_0 = _dense(temb_dim, out_ch)  # also without a noise embedding (unused then), as the reference
        self.GroupNorm_1 = _group_norm(out_ch, ddpm_groups)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            self.NIN_0 = NIN(in_ch, out_ch)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor, temb: Optional[Tensor] = None) -> Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        return _residual_tail(self, x if not hasattr(self, "NIN_0") else self.NIN_0(x), h, temb)


class ResnetBlockBigGAN(nn.Module):
    """BigGAN's residual block (the reference's ResnetBlockBigGANpp): resampling by 2 (FIR or nearest / mean
    pooling) of both branches after the first activation, a 1x1 conv shortcut when channels or size change."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int, temb_dim: int, dropout: float, *,
                 fir: bool, taps: Sequence[float], skip_rescale: bool, init_scale: float, up: bool = False,
                 down: bool = False):
        super().__init__()
        self.GroupNorm_0 = _group_norm(in_ch, False)
        self.Conv_0 = _conv(in_ch, out_ch)
        self.Dense_0 = _dense(temb_dim, out_ch)  # also without a noise embedding (unused then), as the reference
        self.GroupNorm_1 = _group_norm(out_ch, False)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = _conv(in_ch, out_ch, 1)
        self.act, self.up, self.down, self.fir, self.taps = act, up, down, fir, list(taps)
        self.skip_rescale = skip_rescale

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return fir_upsample(x, self.taps) if self.fir else F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return fir_downsample(x, self.taps) if self.fir else F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, temb: Optional[Tensor] = None) -> Tensor:
        h = self.Conv_0(self._resample(self.act(self.GroupNorm_0(x))))
        x = self._resample(x)
        return _residual_tail(self, x if not hasattr(self, "Conv_2") else self.Conv_2(x), h, temb)


class Resample(nn.Module):
    """Up- or downsampling by 2: FIR (downsampling with a fused 3x3 conv ``Conv2d_0`` when ``with_conv``) or
    nearest / mean pooling (then a 3x3 conv ``Conv_0``; downsampling pads right and bottom by one and convolves with
    stride 2, TF's 'SAME')."""

    def __init__(self, in_ch: int, out_ch: Optional[int] = None, *, up: bool, with_conv: bool, fir: bool,
                 taps: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and fir and not up:
            self.Conv2d_0 = FIRDownConv2d(in_ch, out_ch, taps=taps)
        elif with_conv:
            self.Conv_0 = _conv(in_ch, out_ch, stride=1 if up else 2, padding=1 if up else 0)
        self.up, self.with_conv, self.fir, self.taps = up, with_conv, fir, list(taps)

    def forward(self, x: Tensor) -> Tensor:
        if self.fir:
            if self.with_conv:
                return self.Conv2d_0(x)
            return fir_upsample(x, self.taps) if self.up else fir_downsample(x, self.taps)
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return self.Conv_0(x) if self.with_conv else x
        return self.Conv_0(F.pad(x, (0, 1, 0, 1))) if self.with_conv else F.avg_pool2d(x, 2)


class Combine(nn.Module):
    """The input pyramid joined to the features: a 1x1 conv ``Conv_0`` of the pyramid, then concatenation or sum."""

    def __init__(self, dim1: int, dim2: int, method: str):
        super().__init__()
        self.Conv_0 = _conv(dim1, dim2, 1)
        self.method = method

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


# ------------------------------------------------------------------------------------------------ checks
def _choice(name: str, value, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(f"model.{name} must be one of {list(allowed)}, got {value!r}")
    return value.lower()


def _positive_int(name: str, value, hi: int = 2**16) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= hi:
        raise ValueError(f"{name} must be an integer in 1..{hi}, got {value!r}")
    return int(value)


def _check_unet(image_size, num_channels, nf, ch_mult, num_res_blocks, attn_resolutions, dropout, nonlinearity,
                num_scales) -> tuple:
    image_size = _positive_int("data.image_size", image_size, 4096)
    num_channels = _positive_int("data.num_channels", num_channels, 64)
    nf = _positive_int("model.nf", nf, 4096)
    if not isinstance(ch_mult, (list, tuple)) or not ch_mult:
        raise ValueError(f"model.ch_mult must be a non-empty list of channel multipliers, got {ch_mult!r}")
    ch_mult = tuple(_positive_int("model.ch_mult entries", v, 1024) for v in ch_mult)
    if image_size % 2 ** (len(ch_mult) - 1):
        raise ValueError(f"data.image_size {image_size} must be divisible by 2^(len(model.ch_mult) - 1) = "
                         f"{2 ** (len(ch_mult) - 1)}: every resolution but the last halves it")
    num_res_blocks = _positive_int("model.num_res_blocks", num_res_blocks, 1024)
    if not isinstance(attn_resolutions, (list, tuple)):
        raise ValueError(f"model.attn_resolutions must be a list of image sides such as (16,), got {attn_resolutions!r}")
    attn_resolutions = tuple(_positive_int("model.attn_resolutions entries", v, 4096) for v in attn_resolutions)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be a number in [0, 1), got {dropout!r}")
    act = _choice("nonlinearity", nonlinearity, tuple(ACTIVATIONS))
    num_scales = _positive_int("model.num_scales", num_scales, 100_000)
    return image_size, num_channels, nf, ch_mult, num_res_blocks, attn_resolutions, float(dropout), act, num_scales


def _sigmas_buffer(sigma_min: float, sigma_max: float, num_scales: int) -> Tensor:
    if not (isinstance(sigma_min, (int, float)) and isinstance(sigma_max, (int, float)) and sigma_max > sigma_min > 0):
        raise ValueError(f"need model.sigma_max > model.sigma_min > 0, got {sigma_max!r}, {sigma_min!r}")
    return torch.tensor(geometric_sigmas(sigma_min, sigma_max, num_scales), dtype=torch.float64)


def _check_upsampling(levels: int, resblock_type: str, progressive: str, fir: bool, resamp_with_conv: bool) -> None:
    """Refuse the NCSN++ options whose upsampling layer cannot run in the reference (so no checkpoint has them):
    its ``layerspp.Upsample`` works only as a FIR filter without a convolution (without FIR it calls
    ``F.interpolate`` with 'nearest' as the scale factor; with a convolution its ``upsample_conv_2d`` slices
    with a negative step). One resolution never upsamples."""
    if levels == 1:
        return
    why = ("; the reference's layerspp.Upsample runs only as a FIR filter without a convolution, so no checkpoint "
           "can have been trained with it")
    if progressive == "residual":
        raise ValueError("model.progressive 'residual' with more than one resolution is not supported" + why)
    if progressive == "output_skip" and not fir:
        raise ValueError("model.progressive 'output_skip' needs model.fir True with more than one resolution" + why)
    if resblock_type == "ddpm" and (not fir or resamp_with_conv):
        raise ValueError("model.resblock_type 'ddpm' with more than one resolution needs model.fir True and "
                         "model.resamp_with_conv False" + why)


# ------------------------------------------------------------------------------------------------ NCSN++
class NCSNpp(nn.Module):
    """The reference's ``NCSNpp`` (NCSN++ and DDPM++); arguments are the config's ``model.*`` / ``data.*`` values.

    Args (those not named in the module docstring): ``ch_mult`` channel multipliers of ``nf`` per resolution
    (image side halves after each but the last); ``attn_resolutions`` image sides that get self-attention;
    ``resamp_with_conv`` convolutions in the resampling layers of ``resblock_type="ddpm"``; ``fir`` FIR
    resampling with the taps ``fir_kernel``; ``progressive`` the output pyramid ('none', 'output_skip',
    'residual'), ``progressive_input`` the input pyramid ('none', 'input_skip', 'residual'), joined by
    ``progressive_combine`` ('sum' or 'cat'); ``skip_rescale`` divides residual sums by sqrt 2; ``init_scale``
    scales the initial weights of residual branches' last layers; ``fourier_scale`` the std of the Fourier
    frequencies; ``conditional`` False drops the noise embedding.
    """

    def __init__(self, *, image_size: int = 32, num_channels: int = 3, nf: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.1, resamp_with_conv: bool = True, conditional: bool = True, fir: bool = True,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True, resblock_type: str = "biggan",
                 progressive: str = "none", progressive_input: str = "residual", progressive_combine: str = "sum",
                 embedding_type: str = "fourier", fourier_scale: float = 16.0, init_scale: float = 0.0,
                 scale_by_sigma: bool = True, centered: bool = False, nonlinearity: str = "swish",
                 sigma_min: float = 0.01, sigma_max: float = 50.0, num_scales: int = 1000):
        super().__init__()
        (image_size, channels, nf, ch_mult, num_res_blocks, attn_resolutions, dropout, act_name,
         num_scales) = _check_unet(image_size, num_channels, nf, ch_mult, num_res_blocks, attn_resolutions, dropout,
                                   nonlinearity, num_scales)
        if nf % 2:
            raise ValueError(f"model.nf must be even (its embeddings are sin/cos pairs), got {nf}")
        resblock_type = _choice("resblock_type", resblock_type, RESBLOCK_TYPES)
        progressive = _choice("progressive", progressive, PROGRESSIVE)
        progressive_input = _choice("progressive_input", progressive_input, PROGRESSIVE_INPUT)
        combine = _choice("progressive_combine", progressive_combine, COMBINE)
        embedding_type = _choice("embedding_type", embedding_type, EMBEDDINGS)
        taps = _check_fir_taps(fir_kernel)
        for name, flag in (("resamp_with_conv", resamp_with_conv), ("conditional", conditional), ("fir", fir),
                           ("skip_rescale", skip_rescale), ("scale_by_sigma", scale_by_sigma), ("centered", centered)):
            if not isinstance(flag, bool):
                raise ValueError(f"{'data' if name == 'centered' else 'model'}.{name} must be True or False, got {flag!r}")
        _check_upsampling(len(ch_mult), resblock_type, progressive, fir, resamp_with_conv)
        self.register_buffer("sigmas", _sigmas_buffer(sigma_min, sigma_max, num_scales))
        self.shape = (channels, image_size, image_size)
        self.nf, self.num_resolutions, self.num_res_blocks = nf, len(ch_mult), num_res_blocks
        self.attn_levels = [image_size // 2**i in attn_resolutions for i in range(len(ch_mult))]
        self.conditional, self.resblock_type, self.embedding_type = conditional, resblock_type, embedding_type
        self.progressive, self.progressive_input, self.combine = progressive, progressive_input, combine
        self.fir, self.taps, self.skip_rescale = fir, taps, skip_rescale
        self.scale_by_sigma, self.centered = scale_by_sigma, centered
        self.act = act = ACTIVATIONS[act_name]()
        temb_dim = 4 * nf  # the reference gives every block its Dense_0, used or not (conditional=False)

        def res(in_ch: int, out_ch: Optional[int] = None, **updown) -> nn.Module:
            if resblock_type == "ddpm":
                return ResnetBlockDDPM(act, in_ch, out_ch or in_ch, temb_dim, dropout, ddpm_groups=False,
                                       skip_rescale=skip_rescale, init_scale=init_scale)
            return ResnetBlockBigGAN(act, in_ch, out_ch or in_ch, temb_dim, dropout, fir=fir, taps=taps,
                                     skip_rescale=skip_rescale, init_scale=init_scale, **updown)

        def attn(ch: int) -> nn.Module:
            return AttnBlock(ch, skip_rescale=skip_rescale, init_scale=init_scale)

        mods: list[nn.Module] = []
        if embedding_type == "fourier":
            mods.append(FourierEmbedding(nf, fourier_scale))
        if conditional:
            mods += [_dense(2 * nf if embedding_type == "fourier" else nf, 4 * nf), _dense(4 * nf, 4 * nf)]
        mods.append(_conv(channels, nf))
        skips, ch, pyramid_ch = [nf], nf, channels
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                mods.append(res(ch, nf * mult))
                ch = nf * mult
                if self.attn_levels[level]:
                    mods.append(attn(ch))
                skips.append(ch)
            if level != len(ch_mult) - 1:
                mods.append(Resample(ch, up=False, with_conv=resamp_with_conv, fir=fir, taps=taps)
                            if resblock_type == "ddpm" else res(ch, down=True))
                if progressive_input == "input_skip":
                    mods.append(Combine(pyramid_ch, ch, combine))
                    ch *= 2 if combine == "cat" else 1
                elif progressive_input == "residual":
                    mods.append(Resample(pyramid_ch, ch, up=False, with_conv=True, fir=fir, taps=taps))
                    pyramid_ch = ch
                skips.append(ch)
        mods += [res(ch), attn(ch), res(ch)]
        for level in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                mods.append(res(ch + skips.pop(), nf * ch_mult[level]))
                ch = nf * ch_mult[level]
            if self.attn_levels[level]:
                mods.append(attn(ch))
            if progressive == "output_skip":
                mods += [_group_norm(ch, False), _conv(ch, channels, init_scale=init_scale)]
            elif progressive == "residual" and level == len(ch_mult) - 1:
                mods += [_group_norm(ch, False), _conv(ch, ch)]
                pyramid_ch = ch
            elif progressive == "residual":
                mods.append(Resample(pyramid_ch, ch, up=True, with_conv=True, fir=fir, taps=taps))
                pyramid_ch = ch
            if level != 0:
                mods.append(Resample(ch, up=True, with_conv=resamp_with_conv, fir=fir, taps=taps)
                            if resblock_type == "ddpm" else res(ch, up=True))
        if progressive != "output_skip":
            mods += [_group_norm(ch, False), _conv(ch, channels, init_scale=init_scale)]
        self.all_modules = nn.ModuleList(mods)

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
        return (a + b) / math.sqrt(2.0) if self.skip_rescale else a + b

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """x: (B, C, H, W); labels: (B,), sigma (Fourier) or a time label (positional). Returns (B, C, H, W)."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"NCSNpp expects inputs of shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        mods = iter(self.all_modules)
        if self.embedding_type == "fourier":
            temb = next(mods)(torch.log(labels))
        else:
            temb = timestep_embedding(labels, self.nf)
        temb = next(mods)(temb) if self.conditional else None
        temb = next(mods)(self.act(temb)) if self.conditional else None
        if not self.centered:
            x = 2 * x - 1.0
        pyramid = x if self.progressive_input != "none" else None

        skips = [next(mods)(x)]
        last = self.num_resolutions - 1
        for level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(mods)(skips[-1], temb)
                if self.attn_levels[level]:
                    h = next(mods)(h)
                skips.append(h)
            if level != last:
                h = next(mods)(skips[-1]) if self.resblock_type == "ddpm" else next(mods)(skips[-1], temb)
                if self.progressive_input == "input_skip":
                    pyramid = fir_downsample(pyramid, self.taps) if self.fir else F.avg_pool2d(pyramid, 2)
                    h = next(mods)(pyramid, h)
                elif self.progressive_input == "residual":
                    pyramid = h = self._join(next(mods)(pyramid), h)
                skips.append(h)

        h = skips[-1]
        h = next(mods)(h, temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)

        out_pyramid = None
        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, skips.pop()], dim=1), temb)
            if self.attn_levels[level]:
                h = next(mods)(h)
            if self.progressive == "output_skip":
                branch = _norm_act_conv(mods, self.act, h)
                if level == last:
                    out_pyramid = branch
                else:
                    up = fir_upsample(out_pyramid, self.taps) if self.fir else \
                        F.interpolate(out_pyramid, scale_factor=2.0, mode="nearest")
                    out_pyramid = up + branch
            elif self.progressive == "residual" and level == last:
                out_pyramid = _norm_act_conv(mods, self.act, h)
            elif self.progressive == "residual":
                out_pyramid = h = self._join(next(mods)(out_pyramid), h)
            if level != 0:
                h = next(mods)(h) if self.resblock_type == "ddpm" else next(mods)(h, temb)

        if self.progressive == "output_skip":
            h = out_pyramid
        else:
            h = _norm_act_conv(mods, self.act, h)
        if self.scale_by_sigma:
            sigma = labels if self.embedding_type == "fourier" else self.sigmas[labels.long()]
            h = h / sigma.to(h.dtype).reshape(-1, 1, 1, 1)
        return h


# -------------------------------------------------------------------------------------------------- DDPM
class ScoreSDEDDPM(nn.Module):
    """The reference's ``DDPM`` model (Ho et al.'s U-Net): positional embedding of the label, ResnetBlockDDPM with
    32 groups, attention at ``attn_resolutions``, resampling with ``resamp_with_conv``. ``scale_by_sigma`` divides
    the output by ``sigmas[labels]`` (labels are then step indices of the geometric sigmas, 0 = sigma_max).

    The reference builds this network noise-conditional only (``conditional=False`` fails there), so it is
    refused here too; channel counts (``nf * ch_mult``) must be multiples of 32 (its GroupNorm has 32 groups).
    """

    def __init__(self, *, image_size: int = 32, num_channels: int = 3, nf: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.1, resamp_with_conv: bool = True, conditional: bool = True,
                 scale_by_sigma: bool = False, centered: bool = True, nonlinearity: str = "swish",
                 sigma_min: float = 0.01, sigma_max: float = 50.0, num_scales: int = 1000):
        super().__init__()
        (image_size, channels, nf, ch_mult, num_res_blocks, attn_resolutions, dropout, act_name,
         num_scales) = _check_unet(image_size, num_channels, nf, ch_mult, num_res_blocks, attn_resolutions, dropout,
                                   nonlinearity, num_scales)
        if conditional is not True:
            raise ValueError(f"model.conditional must be True for the 'ddpm' model (the reference cannot build it "
                             f"without its noise embedding), got {conditional!r}")
        if any(nf * m % 32 for m in ch_mult):
            raise ValueError(f"model.nf * model.ch_mult must be multiples of 32 for the 'ddpm' model (GroupNorm with 32 "
                             f"groups), got nf={nf}, ch_mult={list(ch_mult)}")
        for name, flag in (("resamp_with_conv", resamp_with_conv), ("scale_by_sigma", scale_by_sigma), ("centered", centered)):
            if not isinstance(flag, bool):
                raise ValueError(f"{'data' if name == 'centered' else 'model'}.{name} must be True or False, got {flag!r}")
        self.register_buffer("sigmas", _sigmas_buffer(sigma_min, sigma_max, num_scales))
        self.shape = (channels, image_size, image_size)
        self.nf, self.num_resolutions, self.num_res_blocks = nf, len(ch_mult), num_res_blocks
        self.attn_levels = [image_size // 2**i in attn_resolutions for i in range(len(ch_mult))]
        self.scale_by_sigma, self.centered = scale_by_sigma, centered
        self.act = act = ACTIVATIONS[act_name]()

        def res(in_ch: int, out_ch: Optional[int] = None) -> nn.Module:
            return ResnetBlockDDPM(act, in_ch, out_ch or in_ch, 4 * nf, dropout, ddpm_groups=True)

        def attn(ch: int) -> nn.Module:
            return AttnBlock(ch, ddpm_groups=True)

        mods: list[nn.Module] = [_dense(nf, 4 * nf), _dense(4 * nf, 4 * nf), _conv(channels, nf)]
        skips, ch = [nf], nf
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                mods.append(res(ch, nf * mult))
                ch = nf * mult
                if self.attn_levels[level]:
                    mods.append(attn(ch))
                skips.append(ch)
            if level != len(ch_mult) - 1:
                mods.append(Resample(ch, up=False, with_conv=resamp_with_conv, fir=False))
                skips.append(ch)
        mods += [res(ch), attn(ch), res(ch)]
        for level in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                mods.append(res(ch + skips.pop(), nf * ch_mult[level]))
                ch = nf * ch_mult[level]
            if self.attn_levels[level]:
                mods.append(attn(ch))
            if level != 0:
                mods.append(Resample(ch, up=True, with_conv=resamp_with_conv, fir=False))
        mods += [_group_norm(ch, True), _conv(ch, channels, init_scale=0.0)]
        self.all_modules = nn.ModuleList(mods)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """x: (B, C, H, W); labels: (B,) time labels (step indices for ``scale_by_sigma``). Returns (B, C, H, W)."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"ScoreSDEDDPM expects inputs of shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        mods = iter(self.all_modules)
        temb = next(mods)(timestep_embedding(labels, self.nf))
        temb = next(mods)(self.act(temb))
        h = x if self.centered else 2 * x - 1.0
        skips = [next(mods)(h)]
        for level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(mods)(skips[-1], temb)
                if self.attn_levels[level]:
                    h = next(mods)(h)
                skips.append(h)
            if level != self.num_resolutions - 1:
                skips.append(next(mods)(skips[-1]))
        h = skips[-1]
        h = next(mods)(h, temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, skips.pop()], dim=1), temb)
            if self.attn_levels[level]:
                h = next(mods)(h)
            if level != 0:
                h = next(mods)(h)
        h = _norm_act_conv(mods, self.act, h)
        if self.scale_by_sigma:
            h = h / self.sigmas[labels.long()].to(h.dtype).reshape(-1, 1, 1, 1)
        return h
