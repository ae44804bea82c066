"""The DDPM U-Net (Ho et al. 2020, Appendix B) for images of shape (C, H, W).

Layout, following the paper's reference implementation:

* time: sinusoidal embedding of the label (scaled to ~[0, 1000]) of width ``base_channels``, then
  Linear -> SiLU -> Linear to ``4 * base_channels``; an optional class embedding is added to it;
* a 3x3 input conv to ``base_channels``;
* down path: at each resolution ``num_res_blocks`` residual blocks (self-attention after each one at the
  resolutions in ``attention_resolutions``), then a stride-2 3x3 conv, except at the lowest resolution;
  every output along the way is kept as a skip connection;
* middle: residual block, self-attention, residual block;
* up path: at each resolution ``num_res_blocks + 1`` residual blocks, each taking its input concatenated
  (along channels) with one skip connection, with attention as on the way down, then nearest-neighbour
  2x upsampling and a 3x3 conv, except at the top;
* GroupNorm -> SiLU -> 3x3 output conv back to ``in_channels`` (twice that with ``learned_variance``: the
  prediction, then improved-diffusion's variance value).

A residual block is ``x + conv(dropout(SiLU(GN(conv(SiLU(GN(x))) + Linear(SiLU(emb))))))`` with a 1x1 conv
on the shortcut when the channel count changes. Weights are Xavier-uniform, biases zero; the last conv of
each residual block, the attention output projection and the output conv start at zero, so the network
is the identity on its residual path and outputs exactly 0 at initialisation.

One deviation from the TensorFlow reference: the stride-2 conv pads symmetrically (padding 1), where
TensorFlow's ``SAME`` pads only the bottom/right; parameter counts are identical.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_real
from ..models import PARAMETERIZATIONS
from ..schedules import DiscreteVP, Schedule
from .base import MAX_BLOCKS, MAX_SIZE, ScoreNetwork, check_learned_variance, learned_variance_arg, standard_normal
from .embedding import sinusoidal_embedding
from .mlp import _time_scale

__all__ = ["UNet"]


def _xavier(module: nn.Module, zero: bool = False) -> nn.Module:
    """The reference's init (variance scaling, fan_avg, uniform); ``zero``: all weights zero (init_scale=0)."""
    if zero:
        nn.init.zeros_(module.weight)
    else:
        nn.init.xavier_uniform_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def _conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, zero: bool = False) -> nn.Conv2d:
    return _xavier(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2), zero)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class _ResBlock(nn.Module):
    """(B, c_in, H, W), (B, emb) -> (B, c_out, H, W): two 3x3 convs with the time embedding added in between."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), _conv(c_in, c_out)
        self.emb = _xavier(nn.Linear(emb_dim, c_out))
        self.norm2, self.drop, self.conv2 = _norm(c_out, groups), nn.Dropout(dropout), _conv(c_out, c_out, zero=True)
        self.skip = _conv(c_in, c_out, kernel=1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Single-head self-attention over the H*W positions, residual: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v = (_conv(channels, channels, kernel=1) for _ in range(3))
        self.proj = _conv(channels, channels, kernel=1, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (f(h).reshape(B, 1, C, H * W).transpose(-1, -2) for f in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v, shape (B, 1, HW, C)
        return x + self.proj(a.transpose(-1, -2).reshape(B, C, H, W))


class _Stage(nn.Module):
    """A residual block, followed by self-attention where the resolution asks for it."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int, attention: bool):
        super().__init__()
        self.res = _ResBlock(c_in, c_out, emb_dim, dropout, groups)
        self.attn = _Attention(c_out, groups) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.res(x, emb)
        return h if self.attn is None else self.attn(h)


class _Down(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv(channels, channels, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Up(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(ScoreNetwork):
    """The DDPM U-Net: ``net(x, t[, y])`` with x of shape (B, in_channels, H, W) -> same shape (twice the channels with
    ``learned_variance``).

    Args:
        image_size: side of the square training images; must be divisible by ``2 ** (len(channel_mult) - 1)``
            (one halving per extra resolution). Inputs of other sizes divisible by that factor also run.
        in_channels: image channels; the output has as many.
        schedule: the schedule the network is trained on; ``t`` is a label in its convention (DDPM: 1..T).
        parameterization: what the output is: ``"eps"``, ``"score"``, ``"x0"`` or ``"v"``.
        base_channels: channels at the top resolution (also the sinusoidal embedding width; the time
            embedding is ``4 * base_channels`` wide).
        channel_mult: channel multiplier per resolution, top first; ``len(channel_mult)`` resolutions. Every
            size (channel counts included) is at most ``MAX_SIZE`` = 2**24.
        num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
        attention_resolutions: feature-map sides (e.g. 16 for 16x16) that get self-attention; each must be
            one of ``image_size, image_size / 2, ...``. The middle block always has attention.
        dropout: dropout probability inside the residual blocks.
        num_classes: classes for conditioning, or None. Labels are 0..num_classes - 1, and ``num_classes``
            is the null label (classifier-free guidance trains with labels dropped to it).
        groups: GroupNorm groups; every channel count must be divisible by it.
        learned_variance: output ``2 * in_channels`` channels (Nichol & Dhariwal 2021; objective ``hybrid``):
            the prediction, then improved-diffusion's variance value in [-1, 1] (``v = (value + 1) / 2``). The
            output conv starts at zero, so v starts at 1/2, the log-space midpoint of beta_tilde and beta.

    ``forward(x, t, y=None)``: t of shape (B,) (or a scalar), real-valued labels in the schedule's
    convention, scaled to ~[0, 1000] before the embedding; y of shape (B,) (or a scalar) of integer labels.
    On a class-conditional network y=None means the null label (the unconditional model).
    ``score_model()`` makes it a :class:`~scoregen.ScoreModel`.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        schedule: Schedule,
        parameterization: Literal["eps", "score", "x0", "v"] = "eps",
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_classes: Optional[int] = None,
        groups: int = 32,
        learned_variance: bool = False,
    ):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")
        image_size = check_int("image_size", image_size, 1, MAX_SIZE)
        in_channels = check_int("in_channels", in_channels, 1, MAX_SIZE)
        base, groups = check_int("base_channels", base_channels, 1, MAX_SIZE), check_int("groups", groups, 1, MAX_SIZE)
        num_res_blocks = check_int("num_res_blocks", num_res_blocks, 1, MAX_BLOCKS)
        if isinstance(channel_mult, (str, bytes)) or not isinstance(channel_mult, Sequence) or len(channel_mult) == 0:
            raise ValueError(f"channel_mult must be a non-empty sequence of positive integers, got {channel_mult!r}")
        if len(channel_mult) > MAX_BLOCKS:
            raise ValueError(f"channel_mult has {len(channel_mult)} resolutions, more than {MAX_BLOCKS}")
        mult = tuple(check_int("each channel_mult entry", c, 1, MAX_SIZE // base) for c in channel_mult)
        if isinstance(attention_resolutions, (str, bytes)) or not isinstance(attention_resolutions, Sequence):
            raise ValueError(f"attention_resolutions must be a sequence of feature-map sides, got {attention_resolutions!r}")
        attn_res = tuple(check_int("each attention resolution", r, 1, MAX_SIZE) for r in attention_resolutions)
        dropout = check_real("dropout", dropout, 0.0, 1.0, hi_open=True)
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, 1, MAX_SIZE)
        if base % 2:
            raise ValueError(f"base_channels must be even (it is the sinusoidal embedding width), got {base}")
        factor = 2 ** (len(mult) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size {image_size} is not divisible by 2**(len(channel_mult) - 1) = {factor}: "
                f"{len(mult)} resolutions halve the image {len(mult) - 1} times; use fewer channel_mult entries "
                "or a larger image_size"
            )
        bad = sorted({c for c in (base, *(base * m for m in mult)) if c % groups})
        if bad:
            raise ValueError(
                f"channel counts {bad} (base_channels={base} times channel_mult={mult}) are not divisible by "
                f"groups={groups} (GroupNorm); choose base_channels as a multiple of groups, or fewer groups"
            )
        resolutions = [image_size // 2**i for i in range(len(mult))]
        missing = [r for r in attn_res if r not in resolutions]
        if missing:
            raise ValueError(
                f"attention resolution(s) {missing} are never reached: with image_size={image_size} and "
                f"{len(mult)} resolutions the feature maps are {resolutions}"
            )

        self.learned_variance = check_learned_variance(learned_variance)
        self.schedule, self.parameterization = schedule, parameterization
        self.shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        self._args = dict(
            image_size=image_size, in_channels=in_channels, parameterization=parameterization, base_channels=base,
            channel_mult=list(mult), num_res_blocks=num_res_blocks, attention_resolutions=list(attn_res),
            dropout=dropout, num_classes=num_classes, groups=groups, **learned_variance_arg(self.learned_variance),
        )
        self.time_scale, self.base_channels = _time_scale(schedule), base
        emb = 4 * base
        self.time_embed = nn.Sequential(_xavier(nn.Linear(base, emb)), nn.SiLU(), _xavier(nn.Linear(emb, emb)))
        self.label_embed = (nn.Embedding(num_classes + 1, emb, _weight=standard_normal(num_classes + 1, emb))
                            if num_classes is not None else None)

        self.conv_in = _conv(in_channels, base)
        self.down = nn.ModuleList()
        skips, ch = [base], base
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                self.down.append(_Stage(ch, base * m, emb, dropout, groups, resolutions[level] in attn_res))
                ch = base * m
                skips.append(ch)
            if level != len(mult) - 1:
                self.down.append(_Down(ch))
                skips.append(ch)
        self.mid = nn.ModuleList([_Stage(ch, ch, emb, dropout, groups, True), _Stage(ch, ch, emb, dropout, groups, False)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(_Stage(ch + skips.pop(), base * m, emb, dropout, groups, resolutions[level] in attn_res))
                ch = base * m
            if level != 0:
                self.up.append(_Up(ch))
        assert not skips
        out_channels = 2 * in_channels if self.learned_variance else in_channels
        self.norm_out, self.conv_out = _norm(ch, groups), _conv(ch, out_channels, zero=True)

    # ---------------------------------------------------------------- presets
    @classmethod
    def cifar10(cls, schedule: Optional[Schedule] = None, *, parameterization: Literal["eps", "score", "x0", "v"] = "eps",
                num_classes: Optional[int] = None, dropout: float = 0.1, learned_variance: bool = False) -> "UNet":
        """The paper's CIFAR-10 network (35.7M parameters): 32x32x3, 128 channels, multipliers (1, 2, 2, 2),
        2 residual blocks per resolution, attention at 16x16, dropout 0.1. Default schedule: DDPM's linear
        betas, T = 1000."""
        return cls(32, 3, schedule if schedule is not None else DiscreteVP.linear(), parameterization,
                   base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
                   dropout=dropout, num_classes=num_classes, groups=32, learned_variance=learned_variance)

    @classmethod
    def tiny(cls, image_size: int = 8, in_channels: int = 1, schedule: Optional[Schedule] = None,
             num_classes: Optional[int] = None, *, parameterization: Literal["eps", "score", "x0", "v"] = "eps",
             dropout: float = 0.1, learned_variance: bool = False) -> "UNet":
        """A small U-Net for 8x8 digits (0.70M parameters): 32 channels, multipliers (1, 2), 1 residual
        block per resolution, attention at the lower resolution (4x4 for 8x8 images), 8 GroupNorm groups.
        Default schedule: DDPM's linear betas, T = 1000."""
        return cls(image_size, in_channels, schedule if schedule is not None else DiscreteVP.linear(), parameterization,
                   base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(image_size // 2,),
                   dropout=dropout, num_classes=num_classes, groups=8, learned_variance=learned_variance)

    # ---------------------------------------------------------------- interface
    @property
    def null_label(self) -> Optional[int]:
        """The label meaning "no class" (``num_classes``), or None for an unconditional network."""
        return self.num_classes

    def embedding(self, t: Tensor, y: Optional[Tensor] = None, batch: Optional[int] = None) -> Tensor:
        """The (B, 4 * base_channels) time (+ class) embedding that every residual block receives."""
        t = torch.as_tensor(t, device=self.conv_in.weight.device)
        if batch is not None and t.ndim == 0:
            t = t.expand(batch)
        if t.ndim != 1:
            raise ValueError(f"t must have shape (B,) or be a scalar, got shape {tuple(t.shape)}")
        emb = self.time_embed(sinusoidal_embedding(t * self.time_scale, self.base_channels).to(self.conv_in.weight.dtype))
        if self.label_embed is None:
            if y is not None:
                raise ValueError("this UNet is unconditional (num_classes=None): call it without y")
            return emb
        n = emb.shape[0]
        if y is None:
            y = torch.full((n,), self.num_classes, dtype=torch.long, device=emb.device)
        y = torch.as_tensor(y, device=emb.device)
        if y.is_floating_point() and not bool((y == y.round()).all()):
            raise ValueError("class labels y must be integers")
        y = y.long()
        if y.ndim == 0:
            y = y.expand(n)
        if y.shape != (n,):
            raise ValueError(f"y must have shape (B,) = ({n},) or be a scalar, got shape {tuple(y.shape)}")
        if bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(
                f"class labels must be in 0..{self.num_classes - 1}, or {self.num_classes} for the null label; "
                f"got {sorted(set(y.tolist()))}"
            )
        return emb + self.label_embed(y)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """x: (B, in_channels, H, W); t: (B,) time labels; y: (B,) class labels or None -> (B, in_channels, H, W),
        or (B, 2 in_channels, H, W) with learned variance."""
        factor = 2 ** (len(self._args["channel_mult"]) - 1)
        if x.ndim != 4 or x.shape[1] != self.shape[0] or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"expected x of shape (B, {self.shape[0]}, H, W) with H and W divisible by {factor} "
                f"(trained size {self.shape[1]}x{self.shape[2]}), got {tuple(x.shape)}"
            )
        emb = self.embedding(t, y, batch=x.shape[0])
        if emb.shape[0] != x.shape[0]:
            raise ValueError(f"t has {emb.shape[0]} labels for a batch of {x.shape[0]}")
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, _Stage) else block(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(block, _Stage) else block(h)
        return self.conv_out(F.silu(self.norm_out(h)))

