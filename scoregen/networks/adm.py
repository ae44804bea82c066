"""OpenAI's ADM U-Net ("ablated diffusion model", Dhariwal & Nichol 2021) and its noisy classifier, with the
parameter names of openai/guided-diffusion's ``unet.py`` (a superset of openai/improved-diffusion's), so that the
published ``.pt`` state dicts load with ``load_state_dict(strict=True)``.

A scoregen port, not a copy: the module tree is laid out so that every parameter sits at the original's path
(``input_blocks.3.0.in_layers.2.weight`` ...), and each computation follows the original's order of float32
operations (group norms in float32, the cos-then-sin timestep embedding, attention scaled on q and k separately),
so outputs agree with the original code to float32 rounding.

Conventions: ``UNetModel(x, t, y=None)`` takes images x of shape (B, in_channels, H, W) (the original trains on
[-1, 1]), float time labels t of shape (B,) embedded as given (fractional values are fine; the original passes its
integer step index 0 .. T-1, or ``t * 1000 / T`` with ``rescale_timesteps``: :mod:`scoregen.interop.openai`
applies that), and class labels y (B,) int64 for a class-conditional model. It returns (B, out_channels, H, W): the
eps prediction, followed by improved-diffusion's variance values when out_channels = 2 * in_channels.
``EncoderUNetModel(x, t)`` returns classifier logits (B, out_channels). Only 2-D images; weights in float32
(a ``use_fp16`` checkpoint is stored in float32 by the original trainer and loads as is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_real
from .base import MAX_BLOCKS, MAX_SIZE, standard_normal

__all__ = ["UNetModel", "EncoderUNetModel", "timestep_embedding", "POOLS"]

#: Classifier heads the port implements (guided-diffusion also has "spatial" and "spatial_v2", used by no
#: published classifier).
POOLS = ("attention", "adaptive")
_GROUPS = 32  # every normalisation of ADM is a 32-group GroupNorm


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """ADM's sinusoidal embedding of float time labels t (B,) -> (B, dim), in float32.

    Frequencies ``f_i = max_period^(-i / half)``, i = 0 .. half - 1 (half = dim // 2), and the features are
    ``[cos(t f), sin(t f)]``: cosines first (the DDPM TensorFlow code put sines first), a zero column when dim is odd.
    """
    half = dim // 2
    # -log(max_period) * i first, then / half: the original's order of float32 operations
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """A 32-group GroupNorm computed in float32 whatever the input's dtype (the original's fp16 models rely on it)."""

    def __init__(self, channels: int):
        if channels % _GROUPS:
            raise ValueError(f"ADM normalises with {_GROUPS}-group GroupNorm: every channel count must be a multiple of "
                             f"{_GROUPS}, got {channels} (check num_channels / channel_mult)")
        super().__init__(_GROUPS, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


def _conv(c_in: int, c_out: int, kernel: int, dims: int = 2, **kw) -> nn.Module:
    return (nn.Conv2d if dims == 2 else nn.Conv1d)(c_in, c_out, kernel, **kw)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers; those that take the time embedding (ResBlocks) get it as a second argument."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution (``conv``) when ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.channels = channels
        if use_conv:
            self.conv = _conv(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 convolution when ``use_conv``, else 2x2 average pooling (``op`` either way)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.channels = channels
        self.op = _conv(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """ADM's residual block: norm-SiLU-conv, the time embedding added (or, with ``use_scale_shift_norm``, applied
    as ``norm(h) * (1 + scale) + shift``), norm-SiLU-dropout-conv, plus a skip (identity, or a 1x1 convolution when
    the channels change). With ``up`` / ``down`` (``resblock_updown``) both branches are resampled without
    convolution (``h_upd`` after the first norm-SiLU, ``x_upd`` on the skip)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), _conv(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if use_scale_shift_norm else 1) * out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        _conv(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else _conv(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[2](self.h_upd(self.in_layers[1](self.in_layers[0](x))))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def qkv_attention(qkv: Tensor, heads: int, legacy: bool) -> Tensor:
    """Multi-head dot-product attention on packed ``qkv`` (B, 3 * C, T) -> (B, C, T).

    The channel layout differs between the two orders ADM checkpoints use: ``legacy`` (improved-diffusion, and
    guided-diffusion without ``use_new_attention_order``) packs per head [q, k, v]; the new order packs
    [q of all heads, k of all heads, v of all heads]. q and k are each scaled by ``ch^(-1/4)`` (as the original,
    which keeps float16 products in range) and the softmax is taken in float32.
    """
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    if legacy:
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (part.reshape(b * heads, ch, length) for part in qkv.chunk(3, dim=1))
    scale = 1.0 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)


def _heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Heads of an attention layer: ``channels // num_head_channels`` when that is set (not -1), else ``num_heads``."""
    if num_head_channels == -1:
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide an attention layer's {channels} channels")
        return num_heads
    if channels % num_head_channels:
        raise ValueError(f"num_head_channels={num_head_channels} does not divide an attention layer's {channels} channels")
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions: ``x + proj_out(attention(qkv(norm(x))))``."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        self.num_heads = _heads(channels, num_heads, num_head_channels)
        self.legacy = not use_new_attention_order
        self.norm = GroupNorm32(channels)
        self.qkv = _conv(channels, 3 * channels, 1, dims=1)
        self.proj_out = _conv(channels, channels, 1, dims=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.legacy))
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """The classifier's attention pooling (from CLIP): the mean feature attends to all positions (plus a learned
    positional embedding, shape (C, H*W + 1)); returns the projected mean token, (B, output_dim)."""

    def __init__(self, spatial: int, channels: int, head_channels: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(standard_normal(channels, spatial * spatial + 1) / channels ** 0.5)
        self.qkv_proj = _conv(channels, 3 * channels, 1, dims=1)
        self.c_proj = _conv(channels, output_dim, 1, dims=1)
        self.num_heads = _heads(channels, 1, head_channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        return self.c_proj(qkv_attention(self.qkv_proj(x), self.num_heads, legacy=False))[:, :, 0]


def _check_common(image_size, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions,
                  dropout, channel_mult) -> tuple:
    """Constructor arguments shared by both networks, checked before anything is allocated."""
    image_size = check_int("image_size", image_size, 1, MAX_SIZE)
    in_channels = check_int("in_channels", in_channels, 1, MAX_SIZE)
    model_channels = check_int("model_channels (num_channels)", model_channels, 1, MAX_SIZE)
    out_channels = check_int("out_channels", out_channels, 1, MAX_SIZE)
    num_res_blocks = check_int("num_res_blocks", num_res_blocks, 1, MAX_BLOCKS)
    dropout = check_real("dropout", dropout, 0.0, 1.0)
    mult = tuple(channel_mult)
    if not 1 <= len(mult) <= MAX_BLOCKS or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and
                                                   0 < m and int(m * model_channels) <= MAX_SIZE for m in mult):
        raise ValueError(f"channel_mult must be 1 to {MAX_BLOCKS} positive multipliers of model_channels, got {mult}")
    if image_size % 2 ** (len(mult) - 1):
        raise ValueError(f"image_size {image_size} is not divisible by 2^{len(mult) - 1}, the downsampling of "
                         f"{len(mult)} resolutions (channel_mult {mult})")
    rates = tuple(check_int("attention_resolutions (downsampling rates)", r, 1, MAX_SIZE) for r in attention_resolutions)
    return image_size, in_channels, model_channels, out_channels, num_res_blocks, set(rates), dropout, mult


class _Encoder(nn.Module):
    """The time embedding and the downsampling half shared by UNetModel and EncoderUNetModel (the original builds
    both the same way): fills ``time_embed``, ``input_blocks``, ``middle_block``; returns the skip channels."""

    def _build_encoder(self, in_channels, model_channels, num_res_blocks, rates, dropout, mult, num_heads,
                       num_head_channels, use_scale_shift_norm, resblock_updown, use_new_attention_order,
                       num_classes: Optional[int] = None) -> list:
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)
        block = dict(emb_channels=emb_dim, dropout=dropout, use_scale_shift_norm=use_scale_shift_norm)
        attention = dict(num_heads=num_heads, num_head_channels=num_head_channels,
                         use_new_attention_order=use_new_attention_order)
        ch = int(mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(_conv(in_channels, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                layers: list = [ResBlock(ch, out_channels=int(m * model_channels), **block)]
                ch = int(m * model_channels)
                if ds in rates:
                    layers.append(AttentionBlock(ch, **attention))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skips.append(ch)
            if level != len(mult) - 1:
                down = ResBlock(ch, down=True, **block) if resblock_updown else Downsample(ch, self.conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skips.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, **block), AttentionBlock(ch, **attention),
                                                    ResBlock(ch, **block))
        self._channels, self._ds = ch, ds
        return skips

    def _embed(self, t: Tensor) -> Tensor:
        if t.ndim != 1:
            raise ValueError(f"time labels t must have shape (batch,), got {tuple(t.shape)}")
        return self.time_embed(timestep_embedding(t, self.model_channels))


class UNetModel(_Encoder):
    """guided-diffusion's ``UNetModel`` (2-D), arguments as the original's constructor.

    Args:
        image_size: side of the square images (only for the record: the network is fully convolutional).
        in_channels, out_channels: 3 and 3 (or 6 with learn_sigma) for every published model.
        model_channels: base width (``--num_channels``); every width must be a multiple of 32 (GroupNorm32).
        num_res_blocks: residual blocks per resolution (the decoder has one more).
        attention_resolutions: downsampling rates (``image_size // resolution``) with self-attention.
        channel_mult: width multiplier per resolution (``int(mult * model_channels)``).
        conv_resample: learned convolutions in Down/Upsample (always True in the original scripts).
        num_classes: class-conditional with an embedding table of that many classes (None: unconditional).
        num_heads, num_head_channels, num_heads_upsample: attention heads; ``num_head_channels != -1`` fixes the
            width per head instead; ``num_heads_upsample`` (-1: num_heads) for the decoder's attention.
        use_scale_shift_norm, resblock_updown, use_new_attention_order: as the original flags.

    ``forward(x, t, y=None)``: x (B, in_channels, H, W), t (B,) float time labels (embedded as given), y (B,)
    int64 labels (required iff class-conditional) -> (B, out_channels, H, W).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True,
                 num_classes: Optional[int] = None, num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False):
        super().__init__()
        (image_size, in_channels, model_channels, out_channels, num_res_blocks, rates, dropout,
         mult) = _check_common(image_size, in_channels, model_channels, out_channels, num_res_blocks,
                               attention_resolutions, dropout, channel_mult)
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, 1, MAX_SIZE)
        num_heads = check_int("num_heads", num_heads, 1, MAX_SIZE)
        num_head_channels = check_int("num_head_channels", num_head_channels, -1, MAX_SIZE)
        num_heads_upsample = check_int("num_heads_upsample", num_heads_upsample, -1, MAX_SIZE)
        if 0 in (num_head_channels, num_heads_upsample):
            raise ValueError("num_head_channels and num_heads_upsample are positive, or -1 for 'not set'")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.conv_resample = model_channels, bool(conv_resample)
        self.shape = (in_channels, image_size, image_size)
        skips = self._build_encoder(in_channels, model_channels, num_res_blocks, rates, dropout, mult, num_heads,
                                    num_head_channels, use_scale_shift_norm, resblock_updown,
                                    use_new_attention_order, self.num_classes)
        emb_dim, ch, ds = 4 * model_channels, self._channels, self._ds
        block = dict(emb_channels=emb_dim, dropout=dropout, use_scale_shift_norm=use_scale_shift_norm)
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(num_res_blocks + 1):
                layers: list = [ResBlock(ch + skips.pop(), out_channels=int(m * model_channels), **block)]
                ch = int(m * model_channels)
                if ds in rates:
                    layers.append(AttentionBlock(ch, num_heads=num_heads_upsample, num_head_channels=num_head_channels,
                                                 use_new_attention_order=use_new_attention_order))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, up=True, **block) if resblock_updown else Upsample(ch, self.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _conv(int(mult[0] * model_channels), out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if (y is None) != (self.num_classes is None):
            raise ValueError(f"this network is {'class-conditional' if self.num_classes else 'unconditional'}: pass "
                             f"class labels y (batch,) {'always' if self.num_classes else 'never'}")
        emb = self._embed(t)
        if y is not None:
            if y.shape != x.shape[:1]:
                raise ValueError(f"class labels y must have shape (batch,) = {tuple(x.shape[:1])}, got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)
        skips, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


class EncoderUNetModel(_Encoder):
    """guided-diffusion's noisy classifier ``EncoderUNetModel``: the U-Net's downsampling half, then a pooling head.

    Arguments as :class:`UNetModel` (no decoder, no labels), plus ``pool``: ``"attention"`` (every published
    classifier: :class:`AttentionPool2d` with ``num_head_channels`` per head) or ``"adaptive"`` (global average,
    then a 1x1 convolution). ``forward(x, t)``: x (B, in_channels, H, W), t (B,) float time labels -> logits
    (B, out_channels).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True, num_heads: int = 1,
                 num_head_channels: int = -1, use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, pool: str = "adaptive"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"classifier pool {pool!r} is not implemented; scoregen's port has {list(POOLS)} "
                             "('attention' is what every published guided-diffusion classifier uses)")
        (image_size, in_channels, model_channels, out_channels, num_res_blocks, rates, dropout,
         mult) = _check_common(image_size, in_channels, model_channels, out_channels, num_res_blocks,
                               attention_resolutions, dropout, channel_mult)
        num_heads = check_int("num_heads", num_heads, 1, MAX_SIZE)
        num_head_channels = check_int("num_head_channels", num_head_channels, -1, MAX_SIZE)
        if num_head_channels == 0 or (pool == "attention" and num_head_channels == -1):
            raise ValueError("num_head_channels must be positive (-1, 'not set', only with pool='adaptive')")
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.conv_resample, self.pool = model_channels, bool(conv_resample), pool
        self.shape = (in_channels, image_size, image_size)
        self._build_encoder(in_channels, model_channels, num_res_blocks, rates, dropout, mult, num_heads,
                            num_head_channels, use_scale_shift_norm, resblock_updown, use_new_attention_order)
        ch = self._channels
        if pool == "attention":
            head = AttentionPool2d(image_size // self._ds, ch, num_head_channels, out_channels)
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), head)
        else:
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)), _conv(ch, out_channels, 1),
                                     nn.Flatten())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self._embed(t)
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
        return self.out(self.middle_block(h, emb))
