"""NCSNv2 (Song & Ermon 2020, "Improved Techniques for Training Score-Based Generative Models").

A RefineNet-style score network for images of shape (C, H, W) whose only noise conditioning is the
paper's technique 3: the unconditional output ``h(x)`` is divided by the level's sigma,
``s_theta(x, sigma_i) = h(x) / sigma_i``, so its parameterization is ``"score"``.

Module and parameter names and shapes follow the reference PyTorch code (ermongroup/ncsnv2,
``models/ncsnv2.py``: ``NCSNv2``, ``NCSNv2Deeper``, ``NCSNv2Deepest``), so that a published checkpoint's
state dict, with DataParallel's ``module.`` prefix stripped, loads with ``load_state_dict(strict=True)``:

* ``sigmas``: a float32 buffer holding the L training sigmas, largest first;
* ``begin_conv`` (3x3, C -> ngf), ``normalizer`` (InstanceNorm++ on ngf channels), ``end_conv`` (3x3, ngf -> C);
* ``res1, res2, ...``: each an ``nn.ModuleList`` of two residual blocks (``normalize1``, ``conv1``,
  ``normalize2``, ``conv2`` and, where the channel count changes or the block resamples, ``shortcut``);
* ``refine1, refine2, ...``: RefineNet blocks (``adapt_convs``, ``msf`` except on the first,
  ``crp``, ``output_convs``), deepest first;
* every InstanceNorm++ has parameters ``alpha``, ``gamma``, ``beta`` of shape (channels,); ELU and the
  pooling layers have no state.

The three variants differ in depth; every config of the reference uses ``ngf = 128``:

===========  ==============================================  ======================================
variant      stages (channels as multiples of ngf)           original use
===========  ==============================================  ======================================
"ncsnv2"     1, 2 (pool), 2 (dil. 2), 2 (dil. 4)             CIFAR-10 32x32, CelebA 64x64
"deeper"     1, 2 (pool), 2 (pool), 4 (dil. 2), 4 (dil. 4)   LSUN church / bedroom / tower
"deepest"    as "deeper" with one more pooled 2-stage        FFHQ 256x256
===========  ==============================================  ======================================

"pool" stages halve the resolution (3x3 conv, then 2x2 mean pooling); the "dil." stages are marked
``resample='down'`` in the reference code but use dilated convolutions and keep the resolution. So
image sides must be divisible by 2, 4 and 8 respectively. (The reference's ``adjust_padding`` for 28x28
images only reaches a dilated block, where it has no effect, so it is not an option here.)

Inputs: the reference code feeds images in [0, 1] and centres them inside the network with ``2x - 1``
(``data.logit_transform`` and ``data.rescaled`` false in every published config). ``centered=False``
(the default) does the same; ``centered=True`` takes inputs already in [-1, 1] and uses them as they are.
A published checkpoint needs ``centered=False`` and its samples live in [0, 1].

:meth:`NCSNv2.cifar10` is the reference's CIFAR-10 configuration (``configs/cifar10.yml``): 32x32x3,
ngf=128, 232 geometric sigmas from 50 to 0.01, InstanceNorm++, ELU, inputs in [0, 1].
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..models import NetworkScoreModel, _on_host
from ..schedules import DiscreteVE
from .base import MAX_SIZE, ScoreNetwork, standard_normal

__all__ = ["NCSNv2"]

VARIANTS = ("ncsnv2", "deeper", "deepest")

# Per variant: the residual stages, shallowest first, as (name, in mult, out mult, dilation or None); the first
# block of every stage but res1 is a "down" block (see _ResidualBlock). Then the refine blocks, deepest first,
# as (name, input mults, output mult): refine block k reads the k-th deepest stage's output and (from the
# second on) the previous refine block's output.
_STAGES = {
    "ncsnv2": [("res1", 1, 1, None), ("res2", 1, 2, None), ("res3", 2, 2, 2), ("res4", 2, 2, 4)],
    "deeper": [("res1", 1, 1, None), ("res2", 1, 2, None), ("res3", 2, 2, None), ("res4", 2, 4, 2), ("res5", 4, 4, 4)],
    "deepest": [("res1", 1, 1, None), ("res2", 1, 2, None), ("res3", 2, 2, None), ("res31", 2, 2, None),
                ("res4", 2, 4, 2), ("res5", 4, 4, 4)],
}
_REFINES = {
    "ncsnv2": [("refine1", (2,), 2), ("refine2", (2, 2), 2), ("refine3", (2, 2), 1), ("refine4", (1, 1), 1)],
    "deeper": [("refine1", (4,), 4), ("refine2", (4, 4), 2), ("refine3", (2, 2), 2), ("refine4", (2, 2), 1),
               ("refine5", (1, 1), 1)],
    "deepest": [("refine1", (4,), 4), ("refine2", (4, 4), 2), ("refine31", (2, 2), 2), ("refine3", (2, 2), 2),
                ("refine4", (2, 2), 1), ("refine5", (1, 1), 1)],
}


def _conv3x3(c_in: int, c_out: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution that keeps the spatial size (padding = dilation)."""
    return nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=bias)


class _InstanceNormPlus(nn.Module):
    """InstanceNorm++ (Song & Ermon 2019), unconditional: (B, C, H, W) -> (B, C, H, W).

    Instance normalisation drops each channel's spatial mean mu_c; InstanceNorm++ adds it back, standardised
    across channels: ``gamma_c * (IN(x)_c + alpha_c * (mu_c - mean_c mu) / sqrt(var_c mu + 1e-5)) + beta_c``
    (var over channels is the unbiased one, as in the reference). Needs C >= 2 and H * W >= 2.
    """

    def __init__(self, channels: int):
        super().__init__()
        # 1 + 0.02 N(0, 1) as the reference draws it, computed in place: bit for bit the reference's numbers on
        # the CPU, and free on the meta device, where an out-of-place product would import torch._dynamo.
        self.alpha = nn.Parameter(standard_normal(channels).mul_(0.02).add_(1.0))
        self.gamma = nn.Parameter(standard_normal(channels).mul_(0.02).add_(1.0))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(dim=(2, 3))  # (B, C)
        mu = (mu - mu.mean(dim=1, keepdim=True)) / torch.sqrt(mu.var(dim=1, keepdim=True) + 1e-5)
        h = F.instance_norm(x, eps=1e-5) + self.alpha[:, None, None] * mu[:, :, None, None]
        return self.gamma[:, None, None] * h + self.beta[:, None, None]


class _ConvMeanPool(nn.Module):
    """A convolution (parameters under ``conv``) then 2x2 mean pooling: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(x), 2)


class _ResidualBlock(nn.Module):
    """Pre-activation residual block: ``shortcut(x) + conv2(elu(norm2(conv1(elu(norm1(x))))))``.

    A "down" block (the first of every stage after res1) keeps c_in channels through conv1 and widens in
    conv2; it halves the resolution (conv2 and a 1x1 shortcut, each followed by 2x2 mean pooling) unless it
    has a ``dilation``, in which case every conv, the shortcut included, is a dilated 3x3 and the size is
    kept. Other blocks widen in conv1. The shortcut is a layer when the block is "down" or changes the
    channel count, else the identity. (B, c_in, H, W) -> (B, c_out, H', W').
    """

    def __init__(self, c_in: int, c_out: int, down: bool = False, dilation: Optional[int] = None):
        super().__init__()
        self.pool = down and dilation is None
        d = 1 if dilation is None else dilation
        mid = c_in if down else c_out
        # Attribute order follows the reference, so that state_dict keys come out in the same order.
        self.conv1 = _conv3x3(c_in, mid, d)
        self.normalize2 = _InstanceNormPlus(mid)
        self.conv2 = _ConvMeanPool(mid, c_out, 3) if self.pool else _conv3x3(mid, c_out, d)
        if self.pool:
            self.shortcut = _ConvMeanPool(c_in, c_out, 1)
        elif down or c_in != c_out:
            # (no variant has a channel change without "down" and without dilation: the 1x1 is never built)
            self.shortcut = _conv3x3(c_in, c_out, d) if dilation is not None else nn.Conv2d(c_in, c_out, 1)
        else:
            self.shortcut = None
        self.normalize1 = _InstanceNormPlus(c_in)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.elu(self.normalize1(x)))
        h = self.conv2(F.elu(self.normalize2(h)))
        return h + (x if self.shortcut is None else self.shortcut(x))


class _RCUBlock(nn.Module):
    """Residual conv units: ``n_blocks`` times ``x <- x + conv(elu(conv(elu(x))))`` with bias-free 3x3 convs
    named ``{block}_{stage}_conv`` (1-based), as in the reference. Shape-preserving."""

    def __init__(self, channels: int, n_blocks: int, n_stages: int = 2):
        super().__init__()
        self.n_blocks, self.n_stages = n_blocks, n_stages
        for i in range(1, n_blocks + 1):
            for j in range(1, n_stages + 1):
                self.add_module(f"{i}_{j}_conv", _conv3x3(channels, channels, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.n_blocks + 1):
            h = x
            for j in range(1, self.n_stages + 1):
                h = getattr(self, f"{i}_{j}_conv")(F.elu(h))
            x = x + h
        return x


class _CRPBlock(nn.Module):
    """Chained residual pooling: ``x = elu(x)``, then ``n_stages`` times ``path = conv(maxpool5x5(path));
    x = x + path`` (bias-free 3x3 convs in ``convs``). Shape-preserving."""

    def __init__(self, channels: int, n_stages: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(channels, channels, bias=False) for _ in range(n_stages))

    def forward(self, x: Tensor) -> Tensor:
        x = path = F.elu(x)
        for conv in self.convs:
            path = conv(F.max_pool2d(path, 5, stride=1, padding=2))
            x = x + path
        return x


class _MSFBlock(nn.Module):
    """Multi-resolution fusion: a 3x3 conv per input to ``features`` channels, bilinear resizing
    (align_corners=True) to the output size, and the sum."""

    def __init__(self, in_channels: Sequence[int], features: int):
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(c, features) for c in in_channels)

    def forward(self, xs: Sequence[Tensor], size) -> Tensor:
        out = 0
        for conv, x in zip(self.convs, xs):
            out = out + F.interpolate(conv(x), size=tuple(size), mode="bilinear", align_corners=True)
        return out


class _RefineBlock(nn.Module):
    """RefineNet block: each input through two RCUs (``adapt_convs``), fused by ``msf`` when there are
    several, then ``crp`` and ``output_convs`` (3 RCUs on the last block, else 1). Output (B, features, *size)."""

    def __init__(self, in_channels: Sequence[int], features: int, end: bool = False):
        super().__init__()
        self.adapt_convs = nn.ModuleList(_RCUBlock(c, 2) for c in in_channels)
        self.output_convs = _RCUBlock(features, 3 if end else 1)
        self.msf = _MSFBlock(in_channels, features) if len(in_channels) > 1 else None
        self.crp = _CRPBlock(features)

    def forward(self, xs: Sequence[Tensor], size) -> Tensor:
        hs = [adapt(x) for adapt, x in zip(self.adapt_convs, xs)]
        h = hs[0] if self.msf is None else self.msf(hs, size)
        return self.output_convs(self.crp(h))


class NCSNv2(ScoreNetwork):
    """The NCSNv2 score network: ``net(x, t)`` with x of shape (B, in_channels, H, W) -> the score, same shape.

    Args:
        image_size: side of the square training images. It must be divisible by 2 ("ncsnv2"), 4 ("deeper")
            or 8 ("deepest"), and leave at least 2x2 pixels at the lowest resolution (InstanceNorm++
            normalises over space). Other sizes meeting the same rule also run.
        in_channels: image channels; the output has as many.
        schedule: the :class:`~scoregen.DiscreteVE` the network is trained on; its sigmas become the
            ``sigmas`` buffer (float32, largest first) the output is divided by.
        ngf: base channel count (the reference's ``model.ngf``); stages have ngf, 2 ngf and (deeper
            variants) 4 ngf channels. At least 2: InstanceNorm++ standardises over channels.
        variant: ``"ncsnv2"`` (reference class ``NCSNv2``), ``"deeper"`` (``NCSNv2Deeper``) or
            ``"deepest"`` (``NCSNv2Deepest``); see the module docstring.
        centered: False (default, the reference convention): inputs are images in [0, 1], mapped to
            ``2x - 1`` inside; True: inputs are already in [-1, 1] and used as they are.

    ``forward(x, t)``: t of shape (B,) (or a scalar) holding the schedule's labels (0 = sigma_max unless
    the schedule's ``first_index`` says otherwise); fractional labels are rounded to the nearest trained
    level, because the network is conditioned on the level only through the final division by sigma.
    ``score_model()`` makes it a :class:`~scoregen.ScoreModel` (parameterization ``"score"``).

    Loading a reference checkpoint: ``torch.load`` gives a list ``[state_dict, optimizer, epoch, step, ema]``
    (``ema`` only when EMA was on). ``state_dict`` has DataParallel's ``module.`` prefix: strip it and call
    ``load_state_dict(..., strict=True)`` on a network built with the checkpoint's config (its ``sigmas``
    must equal the schedule's, else loading fails with a clear message). ``ema`` maps parameter names,
    without the prefix and without the ``sigmas`` buffer, to the averaged weights the paper samples with.
    """

    parameterization = "score"

    def __init__(self, image_size: int, in_channels: int, schedule: DiscreteVE, ngf: int = 128,
                 variant: Literal["ncsnv2", "deeper", "deepest"] = "ncsnv2", centered: bool = False):
        super().__init__()
        if not isinstance(schedule, DiscreteVE):
            raise ValueError(
                f"NCSNv2 is trained on NCSN's noise levels: schedule must be a DiscreteVE (e.g. "
                f"DiscreteVE.geometric(50, 0.01, 232)), got {schedule!r}"
            )
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        if not isinstance(centered, bool):
            raise ValueError(f"centered must be True (inputs in [-1, 1]) or False (inputs in [0, 1]), got {centered!r}")
        image_size = check_int("image_size", image_size, 1, MAX_SIZE)
        in_channels, ngf = check_int("in_channels", in_channels, 1, MAX_SIZE), check_int("ngf", ngf, 1, MAX_SIZE)
        if ngf < 2:
            raise ValueError(f"ngf must be at least 2 (InstanceNorm++ standardises channel means across channels), got {ngf}")
        self.factor = 2 ** sum(1 for i, (_, _, _, dil) in enumerate(_STAGES[variant]) if i > 0 and dil is None)
        if image_size % self.factor or image_size // self.factor < 2:
            raise ValueError(
                f"image_size {image_size} does not fit the {variant!r} variant: it halves the image "
                f"{self.factor.bit_length() - 1} time(s), so the size must be divisible by {self.factor} and at "
                f"least {2 * self.factor} (InstanceNorm++ needs 2x2 pixels at the lowest resolution)"
            )

        self.schedule, self.shape, self.centered, self.variant = schedule, (in_channels, image_size, image_size), centered, variant
        self._args = dict(image_size=image_size, in_channels=in_channels, ngf=ngf, variant=variant, centered=centered)
        self.register_buffer("sigmas", torch.tensor(np.asarray(schedule.sigmas), dtype=torch.float32))

        self.begin_conv = nn.Conv2d(in_channels, ngf, 3, padding=1)
        self.normalizer = _InstanceNormPlus(ngf)
        self.end_conv = nn.Conv2d(ngf, in_channels, 3, padding=1)
        self._stages = [name for name, *_ in _STAGES[variant]]
        for i, (name, m_in, m_out, dil) in enumerate(_STAGES[variant]):
            self.add_module(name, nn.ModuleList([
                _ResidualBlock(m_in * ngf, m_out * ngf, down=i > 0, dilation=dil),
                _ResidualBlock(m_out * ngf, m_out * ngf, dilation=dil),
            ]))
        self._refines = [name for name, *_ in _REFINES[variant]]
        for k, (name, m_in, m_out) in enumerate(_REFINES[variant]):
            self.add_module(name, _RefineBlock([m * ngf for m in m_in], m_out * ngf, end=k == len(_REFINES[variant]) - 1))

    # ---------------------------------------------------------------- presets
    @classmethod
    def cifar10(cls, schedule: Optional[DiscreteVE] = None) -> "NCSNv2":
        """The reference's CIFAR-10 network (``configs/cifar10.yml``): 32x32x3, ngf=128, variant "ncsnv2",
        inputs in [0, 1]. Default schedule: 232 geometric sigmas from 50 to 0.01."""
        schedule = schedule if schedule is not None else DiscreteVE.geometric(50.0, 0.01, 232)
        return cls(32, 3, schedule, ngf=128, variant="ncsnv2", centered=False)

    @classmethod
    def tiny(cls, image_size: int = 8, in_channels: int = 1, schedule: Optional[DiscreteVE] = None, *,
             ngf: int = 16, centered: bool = False) -> "NCSNv2":
        """A small NCSNv2 for 8x8 digits: variant "ncsnv2" with ngf=16. Default schedule: 10 geometric sigmas
        from 8 (about the largest distance between two 8x8 images in [0, 1]) to 0.01."""
        schedule = schedule if schedule is not None else DiscreteVE.geometric(8.0, 0.01, 10)
        return cls(image_size, in_channels, schedule, ngf=ngf, variant="ncsnv2", centered=centered)

    # ---------------------------------------------------------------- interface
    def score_model(self, time: Literal["nearest"] = "nearest") -> NetworkScoreModel:
        """This network as a score model on its own schedule, queried at the nearest trained level (its
        labels are discrete: a fractional label would be rounded inside while the caller assumed its exact
        sigma, so ``time="fractional"`` is refused)."""
        if time != "nearest":
            raise ValueError(f"NCSNv2 answers only at its trained levels: time must be 'nearest', got {time!r}")
        return NetworkScoreModel(self, self.schedule, self.parameterization, shape=self.shape, time="nearest")

    def level_index(self, t, batch: int) -> Tensor:
        """Positions (B,) into ``sigmas`` of labels t (shape (B,) or a scalar), rounded to the nearest level."""
        t = torch.as_tensor(t, device=self.sigmas.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape (B,) = ({batch},) or be a scalar, got shape {tuple(t.shape)}")
        lo, count = self.schedule.first_index, len(self.sigmas)

        def index(t: Tensor) -> tuple[Tensor]:  # on the labels' values, also under torch.func.vmap
            if t.is_floating_point():
                if not bool(torch.isfinite(t).all()):
                    raise ValueError("time labels must be finite")
                t = torch.round(t.double())
            idx = t.long() - lo
            if bool(((idx < 0) | (idx >= count)).any()):
                raise ValueError(f"time labels must be in {lo}..{lo + count - 1}, got {sorted(set(t.tolist()))}")
            return (idx,)

        return _on_host(index, t)[0]

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: (B, in_channels, H, W); t: (B,) labels -> the score ``h(x) / sigma_t``, (B, in_channels, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.shape[0] or x.shape[2] % self.factor or x.shape[3] % self.factor \
                or min(x.shape[2], x.shape[3]) < 2 * self.factor:
            raise ValueError(
                f"expected x of shape (B, {self.shape[0]}, H, W) with H and W divisible by {self.factor} and at least "
                f"{2 * self.factor} (trained size {self.shape[1]}x{self.shape[2]}), got {tuple(x.shape)}"
            )
        sigma = self.sigmas[self.level_index(t, x.shape[0])].to(x.dtype)
        h = self.begin_conv(x if self.centered else 2.0 * x - 1.0)
        features = []
        for name in self._stages:
            for block in getattr(self, name):
                h = block(h)
            features.append(h)
        ref = None
        for name, skip in zip(self._refines, reversed(features)):
            ref = getattr(self, name)([skip] if ref is None else [skip, ref], skip.shape[2:])
        out = self.end_conv(F.elu(self.normalizer(ref)))
        return out / sigma[:, None, None, None]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # A checkpoint's sigmas must be the schedule's: the samplers query this network at the schedule's
        # levels, while the network divides by the buffer. Refuse a mismatch instead of loading it silently.
        loaded = state_dict.get(prefix + "sigmas")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if isinstance(loaded, Tensor) and loaded.shape == self.sigmas.shape:
            expected = torch.tensor(np.asarray(self.schedule.sigmas), dtype=torch.float64)
            if not torch.allclose(loaded.detach().double().cpu(), expected, rtol=1e-5, atol=0.0):
                with torch.no_grad():
                    self.sigmas.copy_(expected.to(self.sigmas))
                error_msgs.append(
                    f"the checkpoint's sigmas [{float(loaded[0]):.6g} .. {float(loaded[-1]):.6g}] (L={loaded.numel()}) "
                    f"differ from the schedule's {self.schedule!r}: build the network with the checkpoint's schedule"
                )
