"""Load OpenAI's ADM checkpoints (openai/improved-diffusion, openai/guided-diffusion) as scoregen score models.

A published model is a ``.pt`` file holding a plain ``state_dict`` plus the command-line flags it was trained and
sampled with (the repositories' READMEs list them, :data:`PRESETS` has them by name). The flags fix the network
(:class:`~scoregen.networks.adm.UNetModel`) and the diffusion:

* schedule: ``get_named_beta_schedule``: ``linear`` betas ``linspace(1e-4 * 1000/T, 0.02 * 1000/T, T)``, ``cosine``
  betas ``min(1 - abar(i+1)/abar(i), 0.999)`` with ``abar(s) = cos^2((s/T + 0.008)/1.008 * pi/2)``, as a
  :class:`~scoregen.DiscreteVP` with ``first_index=0``: label t = 0 .. T-1 is the original's timestep index;
* time labels: the network gets t itself, or ``t * 1000 / T`` (float32, as the original computes it) with
  ``rescale_timesteps`` (improved-diffusion's default). With ``time="nearest"`` it receives exactly the float the
  original passes at that step; ``time="fractional"`` passes fractional labels, scaled the same way;
* output: eps (``predict_xstart``: x0); with ``learn_sigma`` also the variance values (``learned_variance``), which
  ``sample(..., variance="learned")`` uses as the original's ``LEARNED_RANGE``;
* ``class_cond``: the network takes labels ``y`` (B,) int64 (``sample(..., y=...)``).

Flags that only matter for training (``use_kl``, ``rescale_learned_sigmas``, ``use_checkpoint``, ``lr``...) are
accepted where the original scripts define them and change nothing here; ``use_fp16`` models are loaded in float32
(their checkpoints are saved in float32). Sampling flags map onto :func:`scoregen.sample`
(:func:`openai_sample_options`): ``timestep_respacing`` -> ``timesteps=openai_timesteps(T, ...)``, ``use_ddim`` ->
``"ddim"`` (eta 0), ``clip_denoised`` -> ``x0_hook=clip_x0()``, ``learn_sigma`` / ``sigma_small`` -> ``variance``.

Classifier guidance: :func:`load_openai_classifier` gives a :class:`~scoregen.NetworkClassifier` for
:class:`~scoregen.ClassifierGuidance`, whose ``scale`` is ``--classifier_scale``. The original shifts eps by
``-scale * sqrt(1 - abar) * grad log p(y | x_t)`` under DDIM (``condition_score``), which is exactly scoregen's
guidance; under DDPM it shifts the step's mean by ``variance * scale * grad`` (``condition_mean``) where scoregen
shifts it by ``beta_t / sqrt(alpha_t) * scale * grad``: the same to first order in beta, not to the last digit.

Files are read with ``torch.load(weights_only=True)`` (:func:`scoregen.io.safe_torch_load`): a pickled payload is
refused, never executed. The network is first built on the meta device and compared with the file (names, shapes;
the error names the keys and the flag that likely differs), then built for real and loaded strictly.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_int, short
from ..io import safe_torch_load
from ..io.tensors import tensor_mismatch
from ..models import NetworkClassifier, NetworkScoreModel, clip_x0
from ..networks.adm import POOLS, EncoderUNetModel, UNetModel
from ..networks.base import MAX_BLOCKS, MAX_SIZE
from ..samplers.grids import respace
from ..schedules import MAX_LEVELS, DiscreteVP

__all__ = ["openai_flags", "openai_betas", "openai_schedule", "openai_timesteps", "openai_network",
           "openai_classifier_network", "openai_sample_options", "load_openai", "load_openai_classifier",
           "OpenAINetwork", "PRESETS", "GUIDED_DEFAULTS", "IMPROVED_DEFAULTS"]

PathLike = Union[str, "os.PathLike[str]"]
Defaults = Literal["guided-diffusion", "improved-diffusion"]

#: guided-diffusion's flags and defaults: ``model_and_diffusion_defaults()``, ``classifier_defaults()`` and the
#: sampling scripts' own (``scripts/classifier_sample.py``), plus ``sigma_small`` (improved-diffusion; False) and
#: scoregen's extensions for non-ImageNet forks: ``num_classes`` / ``classifier_num_classes`` (the original's
#: NUM_CLASSES = 1000), ``classifier_channel_mult`` ("": by image size, as create_classifier) and
#: ``classifier_num_head_channels`` (64, as create_classifier).
GUIDED_DEFAULTS: dict[str, Any] = {
    "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
    "num_head_channels": -1, "attention_resolutions": "16,8", "channel_mult": "", "dropout": 0.0,
    "class_cond": False, "use_checkpoint": False, "use_scale_shift_norm": True, "resblock_updown": False,
    "use_fp16": False, "use_new_attention_order": False,
    "learn_sigma": False, "diffusion_steps": 1000, "noise_schedule": "linear", "timestep_respacing": "",
    "use_kl": False, "predict_xstart": False, "rescale_timesteps": False, "rescale_learned_sigmas": False,
    "sigma_small": False,
    "classifier_use_fp16": False, "classifier_width": 128, "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8", "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True, "classifier_pool": "attention",
    "clip_denoised": True, "num_samples": 10000, "batch_size": 16, "use_ddim": False, "model_path": "",
    "classifier_path": "", "classifier_scale": 1.0,
    "num_classes": 1000, "classifier_num_classes": 1000, "classifier_channel_mult": "", "classifier_num_head_channels": 64,
}
#: improved-diffusion's ``model_and_diffusion_defaults()`` differ from guided-diffusion's in two diffusion flags
#: (its model flags are a subset with the same defaults; it has no classifier).
IMPROVED_DEFAULTS: dict[str, Any] = {**GUIDED_DEFAULTS, "rescale_timesteps": True, "rescale_learned_sigmas": True}
_DEFAULTS = {"guided-diffusion": GUIDED_DEFAULTS, "improved-diffusion": IMPROVED_DEFAULTS}
#: Upper bounds of the integer flags (the published models: image_size <= 512, num_channels <= 256, 4000 steps).
LIMITS = {"image_size": 4096, "num_channels": MAX_SIZE, "num_res_blocks": MAX_BLOCKS, "num_heads": MAX_SIZE,
          "num_heads_upsample": MAX_SIZE, "num_head_channels": MAX_SIZE, "diffusion_steps": MAX_LEVELS,
          "classifier_width": MAX_SIZE, "classifier_depth": MAX_BLOCKS, "classifier_num_head_channels": MAX_SIZE,
          "num_classes": MAX_SIZE, "classifier_num_classes": MAX_SIZE, "num_samples": 2**40, "batch_size": 2**40}
_MAYBE_UNSET = ("num_heads_upsample", "num_head_channels")  # -1: not set
_SCHEDULES = ("linear", "cosine")
#: ``channel_mult`` by image size when the flag is "" (guided-diffusion's create_model; 32 from improved-diffusion's).
CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4),
                32: (1, 2, 2, 2)}


# ------------------------------------------------------------------------------------------------------ flags
def _bool(name: str, value: Any) -> bool:
    """The original's ``str2bool``: yes/true/t/y/1 and no/false/f/n/0, any case; or a bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "true", "t", "y", "1", "no", "false", "f", "n", "0"):
        return value.lower() in ("yes", "true", "t", "y", "1")
    raise ValueError(f"flag {name} must be True or False, got {short(value)}")


def _value(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the flag's default (a string from the command line is converted), checked."""
    if isinstance(default, bool):
        return _bool(name, value)
    if isinstance(default, int):
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"flag {name} must be an integer, got {short(value)}") from None
        lo = -1 if name in _MAYBE_UNSET else 1
        value = check_int(f"flag {name}", value, lo, LIMITS.get(name))
        if value == 0 and name in _MAYBE_UNSET:
            raise ValueError(f"flag {name} must be positive, or -1 for 'not set', got 0")
        return value
    if isinstance(default, float):
        try:
            value = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
        except ValueError:
            value = None
        if value is None or not np.isfinite(value) or value < 0 or (name == "dropout" and value > 1):
            raise ValueError(f"flag {name} must be a finite number >= 0{' and <= 1' if name == 'dropout' else ''}")
        return value
    if isinstance(value, int) and not isinstance(value, bool) and name.endswith("resolutions"):
        value = str(value)  # a dict may give a single resolution as a number
    if not isinstance(value, str):
        raise ValueError(f"flag {name} must be a string, got {short(value)}")
    return value


def _int_list(name: str, text: str, real: bool = False) -> tuple:
    """A comma-separated list of positive integers (or reals, for channel_mult), e.g. "32,16,8"."""
    try:
        items = tuple((float if real else int)(v) for v in text.split(","))
    except ValueError:
        items = ()
    if not items or not all(np.isfinite(v) and v > 0 for v in items) or len(items) > MAX_BLOCKS:
        raise ValueError(f"flag {name} must be comma-separated positive {'numbers' if real else 'integers'} "
                         f"like {'1,2,3,4' if real else '32,16,8'}, got {text!r}")
    return tuple(int(v) if float(v).is_integer() else v for v in items)


def _parse_string(flags: str) -> dict:
    """``"--image_size 64 --learn_sigma True ..."`` (also ``--key=value``) as a dict of strings."""
    try:
        words = shlex.split(flags)
    except ValueError as e:
        raise ValueError(f"cannot split the flags string: {e}") from None
    out: dict = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or len(word) < 3:
            raise ValueError(f"expected a flag like --image_size, got {word!r} (flags are '--name value' pairs)")
        if "=" in word:
            key, value = word[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(words):
                raise ValueError(f"flag {word} has no value (flags are '--name value' pairs)")
            key, value = word[2:], words[i + 1]
            i += 2
        out[key] = value
    return out


def openai_flags(flags: Union[str, Mapping[str, Any], None] = None, *,
                 defaults: Defaults = "guided-diffusion") -> dict:
    """Every flag of the original scripts, from a flags string, a dict, or a preset name (:data:`PRESETS`).

    ``flags``: ``"--image_size 64 --num_channels 128 --learn_sigma True ..."`` (the READMEs' MODEL_FLAGS,
    DIFFUSION_FLAGS, CLASSIFIER_FLAGS and SAMPLE_FLAGS can be concatenated), the same as a dict (values of the
    flag's type, or strings as on the command line), or a key of :data:`PRESETS` (complete already).
    ``defaults``: the flags not given take guided-diffusion's defaults (:data:`GUIDED_DEFAULTS`) or
    improved-diffusion's (:data:`IMPROVED_DEFAULTS`: ``rescale_timesteps`` and ``rescale_learned_sigmas`` True);
    use the repository the checkpoint comes from.
    Returns a new dict with every known flag. An unknown flag, or a value that does not fit its flag, is a
    ValueError naming it.
    """
    if defaults not in _DEFAULTS:
        raise ValueError(f"defaults must be one of {list(_DEFAULTS)}, got {short(defaults)}")
    base = _DEFAULTS[defaults]
    if flags is None or (isinstance(flags, str) and not flags.strip()):
        given: Mapping = {}
    elif isinstance(flags, str) and not flags.strip().startswith("-"):
        if flags not in PRESETS:
            raise ValueError(f"unknown preset {flags!r}; presets: {sorted(PRESETS)} (or pass a flags string '--image_size "
                             "64 ...' or a dict)")
        return dict(PRESETS[flags])
    elif isinstance(flags, str):
        given = _parse_string(flags)
    elif isinstance(flags, Mapping):
        given = flags
    else:
        raise ValueError(f"flags must be a flags string, a dict or a preset name, got {type(flags).__name__}")
    unknown = [k for k in given if k not in base]
    if unknown:
        raise ValueError(f"unknown flag(s) {unknown[:5]}; the known flags are {sorted(base)}")
    out = dict(base)
    for key, value in given.items():
        out[key] = _value(key, value, base[key])
    _check_structured(out)
    return out


def _check_structured(flags: Mapping) -> None:
    """The flags whose strings have a structure, checked before anything is built."""
    if flags["noise_schedule"] not in _SCHEDULES:
        raise ValueError(f"flag noise_schedule must be one of {list(_SCHEDULES)}, got {flags['noise_schedule']!r}")
    for key in ("attention_resolutions", "classifier_attention_resolutions"):
        _int_list(key, flags[key])
    for key in ("channel_mult", "classifier_channel_mult"):
        if flags[key]:
            _int_list(key, flags[key], real=True)
    if flags["classifier_pool"] not in POOLS + ("spatial", "spatial_v2"):
        raise ValueError(f"flag classifier_pool must be one of {list(POOLS)}, got {flags['classifier_pool']!r}")
    if flags["timestep_respacing"]:
        openai_timesteps(flags["diffusion_steps"], flags["timestep_respacing"])


# -------------------------------------------------------------------------------------------------- presets
_PRESET_SOURCES: dict[str, tuple[Defaults, str]] = {
    # openai/guided-diffusion README, "Sampling from pre-trained models" (MODEL_FLAGS)
    "64x64_diffusion (class-cond)": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True"),  # noqa: E501
    "128x128_diffusion (class-cond)": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),  # noqa: E501
    "256x256_diffusion (class-cond)": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),  # noqa: E501
    "256x256_diffusion_uncond": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),  # noqa: E501
    "512x512_diffusion (class-cond)": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True"),  # noqa: E501
    "lsun_bedroom": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),  # noqa: E501
    "lsun_cat": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),  # noqa: E501
    "lsun_horse": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),  # noqa: E501
    "lsun_horse_nodropout": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.0 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),  # noqa: E501
    # guided-diffusion's classifiers: create_classifier's defaults with these CLASSIFIER_FLAGS
    "64x64_classifier": ("guided-diffusion", "--image_size 64 --classifier_depth 4 --diffusion_steps 1000 --noise_schedule cosine --learn_sigma True"),  # noqa: E501
    "128x128_classifier": ("guided-diffusion", "--image_size 128 --classifier_attention_resolutions 32,16,8 --classifier_depth 2 --classifier_width 128 --classifier_pool attention --classifier_resblock_updown True --classifier_use_scale_shift_norm True --diffusion_steps 1000 --noise_schedule linear --learn_sigma True"),  # noqa: E501
    "256x256_classifier": ("guided-diffusion", "--image_size 256 --diffusion_steps 1000 --noise_schedule linear --learn_sigma True"),  # noqa: E501
    "512x512_classifier": ("guided-diffusion", "--image_size 512 --diffusion_steps 1000 --noise_schedule linear --learn_sigma True"),  # noqa: E501
    # openai/improved-diffusion README, "Models and Hyperparameters" (MODEL_FLAGS + DIFFUSION_FLAGS)
    "imagenet64_uncond_100M_1500K": ("improved-diffusion", "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine"),  # noqa: E501
    "cifar10_uncond_50M_500K": ("improved-diffusion", "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine"),  # noqa: E501
    "imagenet64_cond_270M_250K": ("improved-diffusion", "--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True --class_cond True --diffusion_steps 4000 --noise_schedule cosine --rescale_learned_sigmas False --rescale_timesteps False"),  # noqa: E501
    "lsun_uncond_100M_1200K_bs128": ("improved-diffusion", "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True --use_scale_shift_norm False --attention_resolutions 16 --diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False"),  # noqa: E501
    "lsun_uncond_100M_2400K_bs64": ("improved-diffusion", "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True --use_scale_shift_norm False --attention_resolutions 16 --diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False"),  # noqa: E501
    "imagenet64_uncond_vlb_100M_1500K": ("improved-diffusion", "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine --use_kl True"),  # noqa: E501
    "cifar10_uncond_vlb_50M_500K": ("improved-diffusion", "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine --use_kl True"),  # noqa: E501
}
#: Published checkpoints (named after their files, without ``.pt``) -> their complete flags. The guided-diffusion
#: READMEs sample with ``--timestep_respacing 250`` (LSUN: 1000); set it in a copy to sample like them.
PRESETS: dict[str, dict] = {}
PRESETS.update({name: openai_flags(text, defaults=src) for name, (src, text) in _PRESET_SOURCES.items()})


# ------------------------------------------------------------------------------------------------- schedule
def openai_betas(noise_schedule: str, T: int) -> np.ndarray:
    """``get_named_beta_schedule(noise_schedule, T)`` in float64: ``linear`` (Ho et al.'s 1e-4 .. 0.02 scaled by
    1000 / T) or ``cosine`` (Nichol & Dhariwal eq. 17, each beta clipped at 0.999)."""
    T = check_int("diffusion_steps", T, 1, MAX_LEVELS)
    if noise_schedule == "linear":
        scale = 1000 / T
        return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)
    if noise_schedule == "cosine":
        def abar(s: float) -> float:
            return np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)])
    raise ValueError(f"noise_schedule must be one of {list(_SCHEDULES)}, got {short(noise_schedule)}")


def openai_schedule(flags: Union[str, Mapping]) -> DiscreteVP:
    """The training schedule of ``flags`` (see :func:`openai_flags`): ``DiscreteVP(betas, first_index=0)``."""
    f = openai_flags(flags)
    return DiscreteVP(openai_betas(f["noise_schedule"], f["diffusion_steps"]), first_index=0)


def openai_timesteps(T: int, section_counts: Union[str, Sequence[int]]) -> list[int]:
    """The original ``space_timesteps(T, section_counts)`` as timestep labels, noisiest first: what
    ``scoregen.sample(model, ..., timesteps=...)`` takes to sample the respaced diffusion.

    ``"ddimN"``: ``0, k, 2k, ...`` for the smallest stride k giving exactly N steps. ``"a,b,c"`` (or a list): the
    T steps cut into equal sections (the first ``T % sections`` one step longer); in a section of ``size`` steps,
    ``count`` steps at ``round(j * (size - 1) / (count - 1))`` accumulated as the original does (Python's round,
    halves to even). ``"250"`` is one section: 250 evenly spaced steps, both ends included.
    """
    if not isinstance(section_counts, str):
        section_counts = ",".join(str(check_int("a section's step count", c, 0)) for c in section_counts)
    return respace(T, section_counts)[::-1]


# -------------------------------------------------------------------------------------------------- networks
def _channel_mult(flags: Mapping, key: str) -> tuple:
    if flags[key]:
        return _int_list(key, flags[key], real=True)
    size = flags["image_size"]
    if size not in CHANNEL_MULT:
        raise ValueError(f"flag {key} is empty and image_size {size} has no default channel_mult (the original knows "
                         f"{sorted(CHANNEL_MULT)}); pass {key}, e.g. '1,2,2,2'")
    return CHANNEL_MULT[size]


def _rates(flags: Mapping, key: str) -> tuple:
    size = flags["image_size"]
    return tuple(size // r for r in _int_list(key, flags[key]))  # the original: image_size // resolution


def openai_network(flags: Union[str, Mapping]) -> UNetModel:
    """The :class:`UNetModel` (fresh weights) the original ``create_model`` builds from ``flags``: 3 input channels,
    3 outputs (6 with ``learn_sigma``), ``num_classes`` classes with ``class_cond``."""
    f = openai_flags(flags)
    return UNetModel(
        image_size=f["image_size"], in_channels=3, model_channels=f["num_channels"],
        out_channels=6 if f["learn_sigma"] else 3, num_res_blocks=f["num_res_blocks"],
        attention_resolutions=_rates(f, "attention_resolutions"), dropout=f["dropout"],
        channel_mult=_channel_mult(f, "channel_mult"), num_classes=f["num_classes"] if f["class_cond"] else None,
        num_heads=f["num_heads"], num_head_channels=f["num_head_channels"], num_heads_upsample=f["num_heads_upsample"],
        use_scale_shift_norm=f["use_scale_shift_norm"], resblock_updown=f["resblock_updown"],
        use_new_attention_order=f["use_new_attention_order"])


def openai_classifier_network(flags: Union[str, Mapping]) -> EncoderUNetModel:
    """The :class:`EncoderUNetModel` the original ``create_classifier`` builds from the ``classifier_*`` flags."""
    f = openai_flags(flags)
    if f["classifier_pool"] not in POOLS:
        raise ValueError(f"flag classifier_pool {f['classifier_pool']!r} is not implemented; scoregen's port has "
                         f"{list(POOLS)} ('attention': every published classifier)")
    return EncoderUNetModel(
        image_size=f["image_size"], in_channels=3, model_channels=f["classifier_width"],
        out_channels=f["classifier_num_classes"], num_res_blocks=f["classifier_depth"],
        attention_resolutions=_rates(f, "classifier_attention_resolutions"),
        channel_mult=_channel_mult(f, "classifier_channel_mult"), num_head_channels=f["classifier_num_head_channels"],
        use_scale_shift_norm=f["classifier_use_scale_shift_norm"], resblock_updown=f["classifier_resblock_updown"],
        pool=f["classifier_pool"])


class OpenAINetwork(nn.Module):
    """An ADM network (``net``) called with the time labels the original diffusion gives it.

    ``forward(x, t, *rest)``: t (B,) are the schedule's labels 0 .. T-1 (floats); the network receives
    ``t.float() * (1000 / T)`` with ``rescale_timesteps`` (float32, as the original's ``_scale_timesteps``), else t.
    ``rest`` is the class labels y of a class-conditional U-Net. Attributes for scoregen: ``shape``,
    ``num_classes`` (None: unconditional; :class:`~scoregen.ClassifierGuidance` passes a conditional one the label),
    ``learned_variance``, ``flags``.
    """

    def __init__(self, net: nn.Module, flags: Mapping, rescale_timesteps: bool):
        super().__init__()
        self.net, self.flags = net, dict(flags)
        self.time_scale = 1000.0 / flags["diffusion_steps"] if rescale_timesteps else None
        self.shape = tuple(net.shape)
        self.num_classes = getattr(net, "num_classes", None)
        self.learned_variance = isinstance(net, UNetModel) and net.out_channels == 2 * net.in_channels

    def forward(self, x: Tensor, t: Tensor, *rest: Tensor) -> Tensor:
        if self.time_scale is not None:
            t = t.float() * self.time_scale
        return self.net(x, t, *rest)


# ---------------------------------------------------------------------------------------------------- loading
def _state_dict(path: str) -> dict:
    obj = safe_torch_load(path, f"the OpenAI checkpoint {path}", mmap=True)
    if not isinstance(obj, Mapping) or not obj or \
            not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        keys = sorted(map(str, obj))[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path}: expected a plain state_dict (parameter names -> tensors), as improved-diffusion and "
                         f"guided-diffusion save, got {keys}")
    return dict(obj)


def _hints(problems_keys: set, classifier: bool) -> str:
    """The flags most likely wrong, from the names of the mismatching tensors."""
    prefix = "classifier_" if classifier else ""
    hints = []
    if any(k.startswith("label_emb") for k in problems_keys):
        hints.append("class_cond (and num_classes)")
    if any(k.startswith("out.") for k in problems_keys) and not classifier:
        hints.append("learn_sigma (6 output channels) or predict_xstart")
    if any(k.startswith("time_embed") for k in problems_keys):
        hints.append(f"{'classifier_width' if classifier else 'num_channels'}")
    if any(k.startswith(("input_blocks", "output_blocks", "middle_block")) for k in problems_keys):
        hints.append(f"{'classifier_depth' if classifier else 'num_res_blocks'}, {prefix}channel_mult, "
                     f"{prefix}attention_resolutions, image_size, {prefix}resblock_updown, "
                     f"{prefix}use_scale_shift_norm" + ("" if classifier else ", num_channels"))
    if classifier and any(k.startswith("out.") for k in problems_keys):
        hints.append("classifier_pool, classifier_num_classes, image_size")
    return "; check the flags " + " / ".join(hints) if hints else ""


def _load(path: PathLike, flags: Mapping, build, what: str, device) -> nn.Module:
    path = os.fspath(path)
    with torch.device("meta"):  # the flags' network, compared with the file before any weight is allocated
        skeleton = build(flags)
    state = _state_dict(path)
    expected = {k: v.shape for k, v in skeleton.state_dict().items()}
    problems = tensor_mismatch(expected, {k: v.shape for k, v in state.items()})
    if problems:
        bad = {k for k in set(expected) ^ set(state)} | {k for k in expected if k in state and expected[k] != state[k].shape}
        raise ValueError(f"{path} does not fit the {what} the flags describe: {'; '.join(problems)}"
                         f"{_hints(bad, isinstance(skeleton, EncoderUNetModel))}")
    net = build(flags)
    net.load_state_dict(state, strict=True)  # float16 tensors are cast to the float32 parameters
    return net.to(device).eval()


def load_openai(path: PathLike, flags: Union[str, Mapping[str, Any]], *, device: Union[str, torch.device] = "cpu",
                time: Literal["nearest", "fractional"] = "nearest",
                defaults: Defaults = "guided-diffusion") -> NetworkScoreModel:
    """An improved-diffusion / guided-diffusion ``.pt`` checkpoint as a score model (eval mode, float32, on ``device``).

    Args:
        path: the ``.pt`` file (a plain state_dict; read with weights_only, pickled code is refused).
        flags: the checkpoint's flags: a string (``"--image_size 64 --learn_sigma True ..."``), a dict, or a
            :data:`PRESETS` name; see :func:`openai_flags` (``defaults`` picks the repository's defaults).
        time: ``"nearest"`` (the network gets the original's timestep, exactly) or ``"fractional"``.
    Returns: a :class:`~scoregen.NetworkScoreModel` on ``DiscreteVP(betas, first_index=0)`` (labels 0 .. T-1),
    shape (3, image_size, image_size), parameterization ``"eps"`` (``"x0"`` with predict_xstart),
    ``learned_variance`` with learn_sigma; its ``net`` is an :class:`OpenAINetwork` (``.flags``, ``.num_classes``).
    """
    f = openai_flags(flags, defaults=defaults)
    net = _load(path, f, openai_network, "UNetModel", device)
    schedule = openai_schedule(f)
    wrapper = OpenAINetwork(net, f, f["rescale_timesteps"])
    return NetworkScoreModel(wrapper, schedule, "x0" if f["predict_xstart"] else "eps", shape=wrapper.shape, time=time,
                             learned_variance=wrapper.learned_variance)


def load_openai_classifier(path: PathLike, flags: Union[str, Mapping[str, Any]], *,
                           device: Union[str, torch.device] = "cpu", time: Literal["nearest", "fractional"] = "nearest",
                           defaults: Defaults = "guided-diffusion") -> NetworkClassifier:
    """A guided-diffusion noisy classifier (``*_classifier.pt``) as a :class:`~scoregen.NetworkClassifier`.

    ``flags``: the ``classifier_*`` flags with ``image_size`` and the diffusion flags (``diffusion_steps``,
    ``noise_schedule``, ``rescale_timesteps``) of the model it guides. Use it as
    ``ClassifierGuidance(model, classifier, scale=classifier_scale)``; called as ``classifier(x, sigma, m)`` it
    returns logits (B, classifier_num_classes) at the caller's level.
    """
    f = openai_flags(flags, defaults=defaults)
    net = _load(path, f, openai_classifier_network, "EncoderUNetModel classifier", device)
    return NetworkClassifier(OpenAINetwork(net, f, f["rescale_timesteps"]), openai_schedule(f), time=time)


def openai_sample_options(flags: Union[str, Mapping[str, Any]], *, defaults: Defaults = "guided-diffusion") -> dict:
    """The keyword arguments of :func:`scoregen.sample` that sample like the original scripts with ``flags``:
    ``sampler`` (``"ddim"`` with use_ddim, eta 0 as the scripts; else ``"ddpm"`` with ``variance`` ``"learned"``
    (learn_sigma), ``"beta_tilde"`` (sigma_small) or ``"beta"``), ``timesteps`` (timestep_respacing; every step
    when empty) and ``x0_hook`` (clip_denoised: clip x0 to [-1, 1])."""
    f = openai_flags(flags, defaults=defaults)
    T = f["diffusion_steps"]
    options: dict = {"sampler": "ddim" if f["use_ddim"] else "ddpm",
                     "timesteps": openai_timesteps(T, f["timestep_respacing"] or str(T))}
    if f["use_ddim"]:
        options["eta"] = 0.0
    else:
        options["variance"] = "learned" if f["learn_sigma"] else "beta_tilde" if f["sigma_small"] else "beta"
    if f["clip_denoised"]:
        options["x0_hook"] = clip_x0()
    return options
