"""The networks and preconditioners of EDM (Karras et al. 2022, NVlabs/edm ``training/networks.py``), with
EDM's parameter names, so that the state dict of an EDM snapshot's network loads strictly.

Two U-Nets, both called as ``net(x, noise_labels, class_labels, augment_labels=None)`` with ``x`` of shape
(B, in_channels, R, R), ``noise_labels`` of shape (B,) (whatever ``c_noise`` the preconditioner passes) and
``class_labels`` of shape (B, label_dim) (one-hot; None when label_dim is 0):

* :class:`SongUNet`: DDPM++ (positional embedding, standard encoder) and NCSN++ (Fourier embedding, residual
  encoder, [1, 3, 3, 1] resampling) of Song et al. 2021 as EDM reimplements them;
* :class:`DhariwalUNet`: ADM (Dhariwal & Nichol 2021) in EDM's naming.

Four preconditioners wrap one of them (``model_type``) as a denoiser ``D(x; sigma) = c_skip x + c_out
F(c_in x, c_noise, labels)``: ``forward(x, sigma, class_labels=None)`` takes VE states ``x = x0 + sigma n``
of shape (B, img_channels, R, R), ``sigma`` of shape (B,) (or a scalar) and one-hot labels (B, label_dim),
and returns the estimate of ``x0``. Each has ``sigma_min`` / ``sigma_max`` attributes as in EDM:

* :class:`VPPrecond` (``c_noise = (M - 1) t(sigma)``, the VP SDE's time), :class:`VEPrecond`
  (``c_noise = log(sigma / 2)``), :class:`iDDPMPrecond` (``c_noise`` = M - 1 - the index of the nearest of
  its ``u`` buffer's M + 1 sigmas; the network outputs 2 * img_channels, the first half used) and
  :class:`EDMPrecond` (``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``,
  ``c_in = 1 / sqrt(s^2 + sd^2)``, ``c_noise = log(s) / 4``, sd = ``sigma_data``).

This is an inference port: everything runs in float32 (``use_fp16`` is accepted and ignored, which is what EDM
itself does off CUDA); dropout and label dropout act in training mode as in EDM. Constructor arguments are
EDM's; sizes are checked (``scoregen.networks.base.MAX_SIZE`` / ``MAX_BLOCKS``) before anything is built, since
a snapshot's arguments come from the file. Fresh weights are random (not EDM's initialisation): these
classes exist to load trained weights.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_real, short
from .base import MAX_BLOCKS, MAX_SIZE, standard_normal

__all__ = ["SongUNet", "DhariwalUNet", "VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond", "PRECONDITIONERS",
           "UNETS"]

#: Largest M (DDPM step count) a VP / iDDPM preconditioner accepts: iDDPM's ``u`` is built one step at a time.
MAX_STEPS = 100_000
_RESAMPLE_FILTERS = ([1, 1], [1, 3, 3, 1])


def _int_list(name: str, value: Any, lo: int, hi: int) -> list:
    if not isinstance(value, (list, tuple)) or not 0 < len(value) <= 32:
        raise ValueError(f"{name} must be a list of 1 to 32 integers, got {short(value)}")
    return [check_int(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(value)]


def _choice(name: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {short(value)}")
    return value


# -------------------------------------------------------------------------------------------- layers
class Linear(nn.Module):
    """``x @ weight.T + bias``; EDM's names ``weight`` (out, in) and ``bias`` (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(standard_normal(out_features, in_features) / math.sqrt(max(in_features, 1)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        x = x @ self.weight.t()
        return x if self.bias is None else x + self.bias


class Conv2d(nn.Module):
    """A ``kernel`` x ``kernel`` convolution (none when kernel is 0) after a 2x FIR up- or downsampling with the
    separable filter ``resample_filter`` (normalised to unit gain; kept as EDM's buffer ``resample_filter``
    of shape (1, 1, k, k)). ``fused_resample`` pads and orders the two ops as EDM's fused path does, which
    gives different numbers at the borders, so it is part of the format."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[int] = (1, 1), fused_resample: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fan_in = in_channels * kernel * kernel
        self.weight = nn.Parameter(standard_normal(out_channels, in_channels, kernel, kernel) / math.sqrt(max(fan_in, 1))) \
            if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        self.register_buffer("resample_filter", (torch.outer(f, f) / f.sum() ** 2)[None, None] if up or down else None)

    def _resample(self, x: Tensor, channels: int, padding: int) -> Tensor:
        f = self.resample_filter.expand(channels, 1, -1, -1)
        if self.up:  # transposed conv with stride 2 inserts zeros between pixels: 4x the filter keeps the gain
            return F.conv_transpose2d(x, 4 * f, groups=channels, stride=2, padding=padding)
        return F.conv2d(x, f, groups=channels, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (self.resample_filter.shape[-1] - 1) // 2 if self.resample_filter is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = self._resample(x, self.in_channels, max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._resample(x, self.out_channels, 0)
        else:
            if self.up or self.down:
                x = self._resample(x, self.in_channels, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        return x if self.bias is None else x + self.bias.reshape(1, -1, 1, 1)


class GroupNorm(nn.Module):
    """Group normalisation over ``min(num_groups, C // min_channels_per_group)`` groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        if self.num_groups < 1:
            raise ValueError(f"GroupNorm over {num_channels} channels: EDM needs at least {min_channels_per_group} "
                             "channels per group; use more channels")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class UNetBlock(nn.Module):
    """EDM's residual block (the union of DDPM++, NCSN++ and ADM blocks): GN-SiLU-conv0 (with up/down
    resampling), the embedding added (``adaptive_scale=False``) or as scale and shift (True), GN-SiLU-dropout-
    conv1, the shortcut (``skip``: a resampling, 1x1 projection when channels change or ``resample_proj``),
    times ``skip_scale``; then, with ``num_heads`` > 0, self-attention (``norm2``, ``qkv``, ``proj``)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: Optional[int] = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5, resample_filter: Sequence[int] = (1, 1),
                 resample_proj: bool = False, adaptive_scale: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(shift + self.norm1(h) * (scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if not self.num_heads:
            return h
        # EDM's channel layout: per head, per head-channel c, the three entries q, k, v (index 3 c + j)
        b, c = h.shape[:2]
        q, k, v = self.qkv(self.norm2(h)).reshape(b * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
        weights = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
        attended = torch.einsum("nqk,nck->ncq", weights, v).reshape(h.shape)
        return (self.proj(attended) + h) * self.skip_scale


class PositionalEmbedding(nn.Module):
    """``[cos(x f), sin(x f)]`` with ``num_channels / 2`` frequencies ``f_i = max_positions^(-i / n)``,
    n = num_channels / 2 (- 1 with ``endpoint``, so that the last frequency is exactly 1 / max_positions)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        freqs = (1 / self.max_positions) ** (torch.arange(half, dtype=torch.float32, device=x.device)
                                             / (half - (1 if self.endpoint else 0)))
        x = torch.outer(x, freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """``[cos(2 pi x f), sin(2 pi x f)]`` with random frequencies ``f`` (EDM's buffer ``freqs``, N(0, scale^2))."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", standard_normal(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.outer(x, 2 * math.pi * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


# --------------------------------------------------------------------------------------------- U-Nets
def _check_unet(img_resolution: Any, in_channels: Any, out_channels: Any, label_dim: Any, augment_dim: Any,
                model_channels: Any, channel_mult: Any, channel_mult_emb: Any, num_blocks: Any, attn_resolutions: Any,
                dropout: Any, label_dropout: Any) -> None:
    for name, value in (("img_resolution", img_resolution), ("in_channels", in_channels),
                        ("out_channels", out_channels), ("model_channels", model_channels),
                        ("channel_mult_emb", channel_mult_emb)):
        check_int(name, value, 1, MAX_SIZE)
    check_int("label_dim", label_dim, 0, MAX_SIZE)
    check_int("augment_dim", augment_dim, 0, MAX_SIZE)
    check_int("num_blocks", num_blocks, 1, MAX_BLOCKS)
    _int_list("channel_mult", channel_mult, 1, MAX_SIZE // model_channels)
    if not isinstance(attn_resolutions, (list, tuple)) or len(attn_resolutions) > 32:
        raise ValueError(f"attn_resolutions must be a list of resolutions, got {short(attn_resolutions)}")
    for i, r in enumerate(attn_resolutions):
        check_int(f"attn_resolutions[{i}]", r, 1, MAX_SIZE)
    check_real("dropout", dropout, 0.0, 1.0)
    check_real("label_dropout", label_dropout, 0.0, 1.0)
    if img_resolution >> (len(channel_mult) - 1) < 1 or img_resolution % (1 << (len(channel_mult) - 1)):
        raise ValueError(f"img_resolution {img_resolution} cannot be halved {len(channel_mult) - 1} times "
                         f"(channel_mult has {len(channel_mult)} levels)")


def _dropped_labels(net: nn.Module, class_labels: Tensor) -> Tensor:
    """Class labels with whole rows zeroed at rate ``label_dropout`` in training (classifier-free guidance)."""
    if net.training and net.label_dropout:
        keep = torch.rand([class_labels.shape[0], 1], device=class_labels.device) >= net.label_dropout
        return class_labels * keep.to(class_labels.dtype)
    return class_labels


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ as in EDM. Encoder entries ``enc["{R}x{R}_conv" | "_down" | "_blockI" | "_aux_down" |
    "_aux_skip" | "_aux_residual"]``, decoder entries ``dec["{R}x{R}_in0" | "_in1" | "_up" | "_blockI" |
    "_aux_up" | "_aux_norm" | "_aux_conv"]``; the output is the sum of the ``aux_conv`` heads (only the
    top one with ``decoder_type="standard"``)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[int] = (1, 1)):
        _check_unet(img_resolution, in_channels, out_channels, label_dim, augment_dim, model_channels, channel_mult,
                    channel_mult_emb, num_blocks, attn_resolutions, dropout, label_dropout)
        _choice("embedding_type", embedding_type, ("positional", "fourier"))
        _choice("encoder_type", encoder_type, ("standard", "skip", "residual"))
        _choice("decoder_type", decoder_type, ("standard", "skip"))
        check_int("channel_mult_noise", channel_mult_noise, 1, MAX_SIZE // model_channels)
        if list(resample_filter) not in _RESAMPLE_FILTERS:
            raise ValueError(f"resample_filter must be one of {list(_RESAMPLE_FILTERS)}, got {short(resample_filter)}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels, noise_channels = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False)

        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional" \
            else FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)

        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cout = model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(in_channels, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True,
                                                                   resample_filter=resample_filter, fused_resample=True)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attention, **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Optional[Tensor],
                augment_labels: Optional[Tensor] = None) -> Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # DDPM++ / NCSN++ order: sin first, then cos
        if self.map_label is not None:
            emb = emb + self.map_label(_dropped_labels(self, class_labels) * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, module in self.enc.items():
            if name.endswith("_aux_down"):
                aux = module(aux)
            elif name.endswith("_aux_skip"):
                x = skips[-1] = x + module(aux)
            elif name.endswith("_aux_residual"):
                x = skips[-1] = aux = (x + module(aux)) / math.sqrt(2)
            else:
                x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
                skips.append(x)

        out = head = None
        for name, module in self.dec.items():
            if name.endswith("_aux_up"):
                out = module(out)
            elif name.endswith("_aux_norm"):
                head = module(x)
            elif name.endswith("_aux_conv"):
                head = module(F.silu(head))
                out = head if out is None else head + out
            else:
                if x.shape[1] != module.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return out


class DhariwalUNet(nn.Module):
    """ADM as in EDM: ``enc["{R}x{R}_conv" | "_down" | "_blockI"]``, ``dec["{R}x{R}_in0" | "_in1" | "_up" |
    "_blockI"]``, ``out_norm``, ``out_conv``; attention heads of 64 channels (none in a block narrower than 64)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0):
        _check_unet(img_resolution, in_channels, out_channels, label_dim, augment_dim, model_channels, channel_mult,
                    channel_mult_emb, num_blocks, attn_resolutions, dropout, label_dropout)
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.map_label = Linear(label_dim, emb_channels, bias=False) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cout = model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(in_channels, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Optional[Tensor],
                augment_labels: Optional[Tensor] = None) -> Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_dropped_labels(self, class_labels))
        emb = F.silu(emb)

        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
            skips.append(x)
        for module in self.dec.values():
            if x.shape[1] != module.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = module(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


#: The U-Nets a preconditioner's ``model_type`` may name.
UNETS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


# ------------------------------------------------------------------------------------ preconditioners
class _Precond(nn.Module):
    """What EDM's four preconditioners share: the arguments, the wrapped ``model`` and the label handling."""

    sigma_min: float
    sigma_max: float

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool, model_type: str,
                 out_channels: int, model_kwargs: dict):
        super().__init__()
        check_int("img_resolution", img_resolution, 1, MAX_SIZE)
        check_int("img_channels", img_channels, 1, MAX_SIZE)
        check_int("label_dim", label_dim, 0, MAX_SIZE)
        if not isinstance(use_fp16, bool):
            raise ValueError(f"use_fp16 must be True or False, got {short(use_fp16)}")
        if model_type not in UNETS:
            raise ValueError(f"model_type {short(model_type)} is not one of EDM's networks {sorted(UNETS)}")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16  # recorded only: this port computes in float32 (EDM does too, off CUDA)
        self.model = UNETS[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                       out_channels=out_channels, label_dim=label_dim, **model_kwargs)

    def _inputs(self, x: Tensor, sigma: Tensor | float, class_labels: Optional[Tensor]) -> tuple:
        """``x`` and ``sigma`` (shape (B, 1, 1, 1)) in float32, and the labels as the model takes them:
        None without labels, zeros (one row, broadcast) when a conditional network gets none."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if not self.label_dim:
            labels = None
        elif class_labels is None:
            labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        return x, sigma, labels


class VPPrecond(_Precond):
    """The VP SDE's preconditioning: ``D = x - sigma F(x / sqrt(sigma^2 + 1), (M - 1) t(sigma))`` with
    ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``; ``sigma_min = sigma(epsilon_t)``,
    ``sigma_max = sigma(1)``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs: Any):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.beta_d = check_real("beta_d", beta_d, 0.0, lo_open=True)
        self.beta_min = check_real("beta_min", beta_min, 0.0)
        self.M = check_int("M", M, 1, MAX_STEPS)
        self.epsilon_t = check_real("epsilon_t", epsilon_t, 0.0, 1.0, lo_open=True)
        self.sigma_min, self.sigma_max = float(self.sigma(epsilon_t)), float(self.sigma(1))

    def sigma(self, t: Tensor | float) -> Tensor:
        """The VP noise level at time t in [0, 1] (float32, as EDM computes it)."""
        t = torch.as_tensor(t, device="cpu" if not isinstance(t, Tensor) else t.device)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        """The time t at which the VP noise level is ``sigma``."""
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Optional[Tensor] = None) -> Tensor:
        x, sigma, labels = self._inputs(x, sigma, class_labels)
        c_in, c_noise = 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)
        return x - sigma * self.model(c_in * x, c_noise.flatten(), class_labels=labels)


class VEPrecond(_Precond):
    """The VE SDE's preconditioning: ``D = x + sigma F(x, log(sigma / 2))``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = "SongUNet", **model_kwargs: Any):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.sigma_min = check_real("sigma_min", sigma_min, 0.0, lo_open=True)
        self.sigma_max = check_real("sigma_max", sigma_max, self.sigma_min, lo_open=True)

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Optional[Tensor] = None) -> Tensor:
        x, sigma, labels = self._inputs(x, sigma, class_labels)
        return x + sigma * self.model(x, (0.5 * sigma).log().flatten(), class_labels=labels)


class iDDPMPrecond(_Precond):  # noqa: N801 (EDM's class name)
    """Improved DDPM's preconditioning: ``D = x - sigma F(x / sqrt(sigma^2 + 1), M - 1 - j)[:, :C]``, j the
    index of the level in the buffer ``u`` (M + 1 VE sigmas of the cosine schedule, largest first, with each
    step's alpha ratio clipped at ``C_1``) nearest to sigma; the network also outputs variance channels,
    unused here. ``sigma_min = u[M - 1]``, ``sigma_max = u[0]``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 C_1: float = 0.001, C_2: float = 0.008, M: int = 1000, model_type: str = "DhariwalUNet",
                 **model_kwargs: Any):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, 2 * img_channels, model_kwargs)
        self.C_1 = check_real("C_1", C_1, 0.0, lo_open=True)
        self.C_2 = check_real("C_2", C_2, 0.0)
        self.M = check_int("M", M, 1, MAX_STEPS)
        u = torch.zeros(M + 1, device="cpu")  # real values even while the network is built on the meta device
        for j in range(M, 0, -1):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min, self.sigma_max = float(u[M - 1]), float(u[0])

    def alpha_bar(self, j: int) -> Tensor:
        """The cosine schedule's alpha-bar at step j (float32)."""
        return (0.5 * math.pi * torch.as_tensor(j, device="cpu") / self.M / (self.C_2 + 1)).sin() ** 2

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Optional[Tensor] = None) -> Tensor:
        x, sigma, labels = self._inputs(x, sigma, class_labels)
        u = self.u.to(x.device)
        index = torch.cdist(sigma.reshape(1, -1, 1), u.reshape(1, -1, 1)).argmin(2).reshape(-1, 1, 1, 1)
        c_in, c_noise = 1 / (sigma ** 2 + 1).sqrt(), self.M - 1 - index.to(torch.float32)
        out = self.model(c_in * x, c_noise.flatten(), class_labels=labels)
        return x - sigma * out[:, :self.img_channels]


class EDMPrecond(_Precond):
    """EDM's preconditioning: ``D = c_skip x + c_out F(c_in x, log(sigma) / 4)`` with ``c_skip = sd^2 /
    (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)``,
    sd = ``sigma_data``. EDM's defaults leave the range open (``sigma_min = 0``, ``sigma_max = inf``)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs: Any):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.sigma_min = check_real("sigma_min", sigma_min, 0.0)
        if not (isinstance(sigma_max, (int, float)) and not isinstance(sigma_max, bool) and sigma_max > self.sigma_min):
            raise ValueError(f"sigma_max must be a number > sigma_min ({self.sigma_min:g}) or inf, got {short(sigma_max)}")
        self.sigma_max = float(sigma_max)
        self.sigma_data = check_real("sigma_data", sigma_data, 0.0, lo_open=True)

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Optional[Tensor] = None) -> Tensor:
        x, sigma, labels = self._inputs(x, sigma, class_labels)
        sd2 = self.sigma_data ** 2
        c_skip, c_out = sd2 / (sigma ** 2 + sd2), sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in, c_noise = 1 / (sd2 + sigma ** 2).sqrt(), sigma.log() / 4
        return c_skip * x + c_out * self.model(c_in * x, c_noise.flatten(), class_labels=labels)


#: The preconditioners an EDM snapshot's ``ema`` network may be.
PRECONDITIONERS = {"VPPrecond": VPPrecond, "VEPrecond": VEPrecond, "iDDPMPrecond": iDDPMPrecond,
                   "EDMPrecond": EDMPrecond}
