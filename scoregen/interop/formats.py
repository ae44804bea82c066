"""Which repository wrote a checkpoint, and one call that loads any of them (what `scoregen sample --checkpoint` uses).

A pretrained file says little about itself: an improved/guided-diffusion ``.pt`` is a bare state dict, a score_sde
``checkpoint_N.pth`` a dict of ``model`` / ``ema`` / ``optimizer`` / ``step``, an NCSNv2 one a list, an EDM snapshot a
pickle. :func:`detect_format` tells them apart from the container's layout and key names, reading tensors with
``torch.load(weights_only=True)`` (executing nothing) and never unpickling an EDM snapshot; :func:`load_pretrained`
calls the matching loader with the architecture config the file does not hold (original flags, a score_sde config,
an NCSNv2 YAML) and returns the score model with what a sampler run needs to know about its data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from ..io import safe_torch_load
from ..models import ScoreModel
from .edm_convert import CONFIG_FORMAT as EDM_FOLDER_FORMAT

__all__ = ["FORMATS", "Pretrained", "detect_format", "load_pretrained"]

PathLike = Union[str, "os.PathLike[str]"]

#: The formats :func:`load_pretrained` reads, and what each one is.
FORMATS = {
    "scoregen": "a checkpoint folder written by `scoregen train` (config.json + safetensors), or a built-in model's name",
    "diffusers": "a diffusers pipeline folder (model_index.json) or UNet folder with its scheduler_config.json",
    "openai": "an improved-diffusion / guided-diffusion .pt state dict (needs the model flags: a flags string, a dict or "
              "a preset name)",
    "score_sde": "a score_sde_pytorch checkpoint_N.pth {model, ema, optimizer, step} (needs its config: a preset name "
                 "or a dict)",
    "ncsnv2": "an ermongroup/ncsnv2 checkpoint_N.pth (needs the run's config.yml; found beside the file by default)",
    "edm": "an NVlabs/edm network-snapshot .pkl (read without running its code), or a folder converted by "
           "`python -m scoregen.interop.edm_convert`",
}
#: Suffixes of torch.save files whose layout :func:`detect_format` inspects.
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


@dataclass
class Pretrained:
    """A loaded pretrained model and what a sampling run needs to know about it.

    ``value_range``: the data range (lo, hi) the model was trained on (images: clip x0_hat to it, and map it to pixels);
    ``num_classes``: the class labels the network takes (None: unconditional); ``null_label``: the label meaning "no
    class" for classifier-free guidance (None: the model has none); ``x_start``: ``x_start(n, generator)`` draws the
    original code's initial state when it is not the Gaussian prior (NCSNv2's uniform images), else None.
    """

    model: ScoreModel
    format: str
    name: str
    value_range: Optional[tuple[float, float]] = None
    num_classes: Optional[int] = None
    null_label: Optional[int] = None
    x0_hook: Any = None
    x_start: Optional[Callable[[int, torch.Generator], Tensor]] = None
    info: dict = field(default_factory=dict)


def _strip(keys) -> set:
    return {k[len("module."):] if k.startswith("module.") else k for k in keys}


def _torch_layout(path: str) -> str:
    """The format of a torch.save file, from its container and key names (read with weights_only: nothing runs)."""
    obj = safe_torch_load(path, path, mmap=True)
    if isinstance(obj, (list, tuple)) and len(obj) in (4, 5) and isinstance(obj[0], Mapping):
        return "ncsnv2"  # [state_dict, optimizer, epoch, step(, ema shadow)]
    if isinstance(obj, Mapping):
        if {"model", "ema", "step"} <= set(obj) and isinstance(obj["ema"], Mapping) and "shadow_params" in obj["ema"]:
            return "score_sde"
        keys = _strip(k for k in obj if isinstance(k, str))
        if "input_blocks.0.0.weight" in keys and "time_embed.0.weight" in keys:
            return "openai"  # the ADM U-Net, or guided-diffusion's noisy classifier (no output_blocks)
        if "begin_conv.weight" in keys and "normalizer.alpha" in keys:
            return "ncsnv2"
        if "all_modules.0.W" in keys or "all_modules.0.weight" in keys:
            raise ValueError(f"{path}: a score_sde network state dict without its checkpoint container; load it with "
                             "scoregen.interop.load_score_sde (which takes the container {model, ema, optimizer, step})")
    kind = type(obj).__name__
    raise ValueError(f"{path}: a torch file ({kind}) whose layout matches no known format; pass --format "
                     f"(one of {', '.join(FORMATS)})")


def detect_format(path: PathLike) -> str:
    """The format of a pretrained file or folder (a key of :data:`FORMATS`); a ValueError when none fits.

    Folders: ``model_index.json`` / ``scheduler_config.json`` is diffusers, ``config.json`` with a ``network`` entry a
    scoregen checkpoint, with ``"format": "scoregen-edm-1"`` an EDM conversion. Files: ``.pkl`` is an EDM snapshot (not opened
    here); torch files are told apart by their container and key names. A name that is no path is a built-in model.
    """
    from ..pretrained import pretrained_names
    from .diffusers import is_diffusers_folder

    p = os.fspath(path)
    if not os.path.exists(p):
        if p in pretrained_names():
            return "scoregen"
        raise FileNotFoundError(f"no file or folder {p!r}, and it is not a built-in model ({', '.join(pretrained_names())})")
    if os.path.isdir(p):
        if is_diffusers_folder(p):
            return "diffusers"
        config_file = os.path.join(p, "config.json")
        if os.path.isfile(config_file):
            from ..io import MAX_CONFIG_BYTES, read_capped

            try:
                config = json.loads(read_capped(config_file, MAX_CONFIG_BYTES, "a model config.json"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{config_file}: not valid JSON ({e})") from None
            if isinstance(config, dict) and config.get("format") == EDM_FOLDER_FORMAT:
                return "edm"
            if isinstance(config, dict) and "network" in config:
                return "scoregen"
        raise ValueError(f"{p}: a folder that is neither a scoregen checkpoint (config.json with a network), a diffusers "
                         "folder (model_index.json or scheduler_config.json) nor an EDM conversion; pass --format")
    if p.lower().endswith(".pkl"):
        return "edm"
    if p.lower().endswith(".safetensors"):
        raise ValueError(f"{p}: a bare safetensors file does not say what network it holds; give its folder (a scoregen "
                         "checkpoint, a diffusers UNet or an EDM conversion, each with its config.json)")
    if p.lower().endswith(_TORCH_SUFFIXES):
        return _torch_layout(p)
    raise ValueError(f"{p}: unknown file type; expected a folder, a .pkl (EDM) or a torch file "
                     f"({', '.join(_TORCH_SUFFIXES)}); pass --format to say which")


def _ncsnv2_config(path: str, config: Any) -> Any:
    if config is not None:
        return config
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), "config.yml")
    if os.path.isfile(beside):
        return beside
    raise ValueError(f"{path}: an NCSNv2 checkpoint needs its run's YAML config (the config.yml main.py writes next to "
                     "the checkpoints, or configs/<dataset>.yml): none beside the file, so pass it (--model-config)")


def _need(config: Any, what: str, path: str, presets: Mapping) -> Any:
    if config is None:
        raise ValueError(f"{path}: {what} does not hold its architecture; pass its config (--model-config): "
                         f"a preset name ({', '.join(sorted(presets))}) or the settings")
    return config


def _openai_config(config: Any) -> Any:
    """openai flags that say which repository's defaults apply: improved-diffusion feeds the network ``t * 1000 / T``
    (``rescale_timesteps`` True by default), guided-diffusion ``t`` (False), and nothing else in a flags string tells
    them apart, so a string or dict without the flag is refused rather than guessed (presets carry it)."""
    from .openai import _parse_string

    if isinstance(config, str) and not config.strip().startswith("-"):
        return config  # a preset name (load_openai names the presets when it is none)
    given = _parse_string(config) if isinstance(config, str) else config
    if isinstance(given, Mapping) and "rescale_timesteps" not in given:
        raise ValueError("the flags do not say whether the network takes rescaled timesteps: add --rescale_timesteps True "
                         "for an improved-diffusion checkpoint (its default) or --rescale_timesteps False for a "
                         "guided-diffusion one (its default); the two repositories' READMEs leave it to their defaults")
    return config


def load_pretrained(path: PathLike, format: Optional[str] = None, config: Any = None, *,
                    device: Union[str, torch.device] = "cpu") -> Pretrained:
    """Load a pretrained model of any format in :data:`FORMATS` (``format=None``: :func:`detect_format`).

    ``config`` is what the file does not hold: openai's flags (a flags string, a dict or a preset name), score_sde's
    config (a preset name or a dict), NCSNv2's YAML (a path or a dict; default: ``config.yml`` beside the checkpoint).
    scoregen checkpoints, diffusers folders and EDM snapshots carry their own and take none.
    """
    p = os.fspath(path)
    format = detect_format(p) if format is None else format
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if config is not None and format in ("scoregen", "diffusers", "edm"):
        raise ValueError(f"a {format} model carries its own config; --model-config applies to openai, score_sde and ncsnv2")
    if format == "scoregen":
        from ..io import load_checkpoint

        net, cfg = load_checkpoint(p, device=device)
        if getattr(net, "parameterization", None) is None:
            raise ValueError(f"{p} holds a classifier, not a score model")
        return Pretrained(net.score_model(), format, f"{cfg['network']['class']} from {p}",
                          num_classes=getattr(net, "num_classes", None), null_label=getattr(net, "null_label", None),
                          info={"config": cfg, "net": net})
    if format == "diffusers":
        from .diffusers import load_diffusers

        model = load_diffusers(p, device=device)
        return Pretrained(model, format, f"diffusers model {p}", value_range=(-1.0, 1.0), x0_hook=model.x0_hook)
    if format == "ncsnv2":
        from .ncsnv2 import load_ncsnv2, ncsnv2_initial_state

        net = load_ncsnv2(p, _ncsnv2_config(p, config), device=device)
        return Pretrained(net.score_model(), format, f"NCSNv2 from {p}",
                          value_range=(-1.0, 1.0) if net.centered else (0.0, 1.0),
                          x_start=lambda n, generator: ncsnv2_initial_state(net, n, generator=generator))
    if format == "openai":
        from .openai import PRESETS, load_openai

        model = load_openai(p, _openai_config(_need(config, "an improved/guided-diffusion .pt", p, PRESETS)), device=device)
        return Pretrained(model, format, f"ADM U-Net from {p}", value_range=(-1.0, 1.0),
                          num_classes=getattr(model.net, "num_classes", None))
    if format == "score_sde":
        from .score_sde import PRESETS, load_score_sde

        model = load_score_sde(p, _need(config, "a score_sde checkpoint", p, PRESETS), device=device)
        return Pretrained(model, format, f"score_sde {type(model.net).__name__} from {p}",
                          value_range=tuple(model.data_range))
    from .edm import load_edm

    model = load_edm(p, device=device)
    return Pretrained(model, format, f"EDM {type(model.denoiser).__name__} from {p}", value_range=(-1.0, 1.0),
                      num_classes=model.denoiser.label_dim or None)
