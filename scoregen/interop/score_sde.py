"""Load checkpoints of score_sde_pytorch (Song et al. 2021, yang-song/score_sde_pytorch): NCSN++, DDPM++ and DDPM
networks trained on the VE, VP or sub-VP SDE, continuous or discrete, as score models.

A run of the original code is described by its ml_collections config (``configs/<sde>/<name>.py``) and leaves
``checkpoint_<n>.pth``: ``torch.save`` of ``{'optimizer': ..., 'model': state_dict, 'ema': {'decay',
'num_updates', 'shadow_params'}, 'step': int}``. ``model`` comes from ``nn.DataParallel`` (keys start with
``module.``); the EMA's ``shadow_params`` is a list, in ``model.parameters()`` order, of the parameters that take
gradients (NCSN++'s fixed Fourier frequencies are not among them). The original samples with the EMA weights.

:func:`score_sde_config` gives a config as nested plain dicts (``{"training": {...}, "data": {...}, "model":
{...}}``, the original's names) from a published preset (:data:`PRESETS`, named after the config files, e.g.
``"ve/cifar10_ncsnpp_continuous"``) or from a dict (``config.to_dict()`` of an ml_collections config), with
overrides. The keys read: ``training.sde`` ('vesde', 'vpsde', 'subvpsde'), ``training.continuous``,
``data.image_size``, ``data.num_channels``, ``data.centered``, ``model.name`` ('ncsnpp', 'ddpm'),
``model.sigma_min/sigma_max/num_scales``, ``model.beta_min/beta_max`` and the network's options (see
:mod:`scoregen.networks.ncsnpp`).

Noise conventions, as the original ``get_score_fn``: with t the SDE time in [0, 1],

* VE, continuous: :class:`~scoregen.schedules.ContinuousVE`; the network takes ``sigma(t) = sigma_min (sigma_max /
  sigma_min)^t`` and outputs the score (NCSN++ divides by sigma itself with ``scale_by_sigma``);
* VE, discrete (SMLD): :class:`~scoregen.schedules.DiscreteVE` of the ``num_scales`` geometric sigmas, labelled
  0 (sigma_max) .. N - 1, the original's ``round((1 - t)(N - 1))``; the network takes that index, outputs the score;
* VP, discrete (DDPM): :class:`~scoregen.schedules.DiscreteVP` with betas ``linspace(beta_min / N, beta_max / N,
  N)`` (the original VPSDE's discretisation), labelled 0 .. N - 1 = ``t (N - 1)``; the network outputs eps;
* VP and sub-VP, continuous: :class:`~scoregen.schedules.ContinuousVP` /
  :class:`~scoregen.schedules.ContinuousSubVP`; the network takes ``999 t`` and outputs eps (score = -eps / std,
  std the SDE's own marginal std, ``1 - exp(-int beta)`` for sub-VP).

Discrete models answer at the nearest trained level, continuous ones exactly. Data range: ``data.centered``
false (every VE config) means images in [0, 1], which the network maps to [-1, 1] itself; true (VP, sub-VP) means
[-1, 1]. The returned model says which as ``model.data_range`` ((0.0, 1.0) or (-1.0, 1.0)): samples come out in
that range, and a clipping hook should use it (``clip_x0(*model.data_range)``).

Files are read with ``torch.load(weights_only=True)`` (:func:`scoregen.io.safe_torch_load`): a pickle holding
anything but tensors and plain containers is refused, nothing in it is executed. The config is checked and the
network built on the meta device and compared with the file (names, shapes, the EMA list's length and shapes)
before anything is allocated; loading is strict.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..io import safe_torch_load
from ..io.tensors import tensor_mismatch
from ..models import NetworkScoreModel
from ..networks.ncsnpp import NCSNpp, ScoreSDEDDPM, geometric_sigmas
from ..schedules import MAX_LEVELS, ContinuousSubVP, ContinuousVE, ContinuousVP, DiscreteVE, DiscreteVP, Schedule

__all__ = ["PRESETS", "score_sde_config", "score_sde_network", "score_sde_schedule", "load_score_sde", "ScoreSDELabels"]

PathLike = Union[str, "os.PathLike[str]"]
_PREFIX = "module."
SDES = ("vesde", "vpsde", "subvpsde")
#: The sampling start time of the original's samplers (``sampling_eps``): a continuous model is queried down to it.
T_MIN = {"vesde": 1e-5, "vpsde": 1e-3, "subvpsde": 1e-3}


# ------------------------------------------------------------------------------------------------ presets
def _defaults(dataset: str) -> dict:
    """The sections of ``configs/default_<dataset>_configs.py`` that concern the model."""
    data = {"cifar10": ("CIFAR10", 32, 50.0, 1000, 0.1), "celeba": ("CELEBA", 64, 90.0, 1000, 0.1),
            "lsun": ("LSUN", 256, 378.0, 2000, 0.0)}
    name, size, sigma_max, scales, dropout = data[dataset]
    return {"training": {"continuous": True},
            "data": {"dataset": name, "image_size": size, "centered": False, "num_channels": 3},
            "model": {"sigma_min": 0.01, "sigma_max": sigma_max, "num_scales": scales, "beta_min": 0.1,
                      "beta_max": 20.0, "dropout": dropout, "embedding_type": "fourier"}}


_NCSNPP = {"name": "ncsnpp", "normalization": "GroupNorm", "nonlinearity": "swish", "nf": 128,
           "ch_mult": [1, 2, 2, 2], "num_res_blocks": 4, "attn_resolutions": [16], "resamp_with_conv": True,
           "conditional": True, "fir": True, "fir_kernel": [1, 3, 3, 1], "skip_rescale": True,
           "resblock_type": "biggan", "progressive": "none", "progressive_input": "residual",
           "progressive_combine": "sum", "attention_type": "ddpm", "init_scale": 0.0, "fourier_scale": 16,
           "conv_size": 3}
_DDPMPP = {**_NCSNPP, "fir": False, "progressive_input": "none"}
_DDPM = {"name": "ddpm", "normalization": "GroupNorm", "nonlinearity": "swish", "nf": 128, "ch_mult": [1, 2, 2, 2],
         "num_res_blocks": 2, "attn_resolutions": [16], "resamp_with_conv": True, "conditional": True}
_LSUN_NCSNPP = {**_NCSNPP, "ch_mult": [1, 1, 2, 2, 2, 2, 2], "num_res_blocks": 2, "progressive": "output_skip",
                "progressive_input": "input_skip"}
_HQ_1024 = {**_LSUN_NCSNPP, "nf": 16, "ch_mult": [1, 2, 4, 8, 16, 32, 32, 32], "num_res_blocks": 1}


def _preset(dataset: str, sde: str, continuous: bool, model: dict, data: Optional[dict] = None) -> dict:
    cfg = _defaults(dataset)
    cfg["training"].update(sde=sde, continuous=continuous)
    cfg["model"].update(model)
    cfg["model"].setdefault("scale_by_sigma", sde == "vesde")
    if sde != "vesde":  # every VP / sub-VP config trains on [-1, 1] with a positional embedding
        cfg["data"]["centered"] = True
        if cfg["model"]["name"] == "ncsnpp":
            cfg["model"]["embedding_type"] = "positional"
    cfg["data"].update(data or {})
    return cfg


def _without(cfg: dict, *keys: str) -> dict:
    """``cfg`` without the model keys a config file does not set (ones its network does not read)."""
    for key in keys:
        del cfg["model"][key]
    return cfg


def _presets() -> dict:
    positional = {**_NCSNPP, "embedding_type": "positional"}
    out = {
        "ve/cifar10_ncsnpp": _without(_preset("cifar10", "vesde", False, positional), "fourier_scale"),
        "ve/cifar10_ncsnpp_continuous": _preset("cifar10", "vesde", True, _NCSNPP),
        "ve/cifar10_ncsnpp_deep_continuous": _preset("cifar10", "vesde", True, {**_NCSNPP, "num_res_blocks": 8}),
        "ve/cifar10_ddpm": _preset("cifar10", "vesde", False, _DDPM),
        "ve/celeba_ncsnpp": _without(_preset("celeba", "vesde", False, positional), "fourier_scale"),
        "ve/bedroom_ncsnpp_continuous": _preset("lsun", "vesde", True, _LSUN_NCSNPP),
        "ve/church_ncsnpp_continuous": _preset("lsun", "vesde", True, {**_LSUN_NCSNPP, "sigma_max": 380.0}),
        "ve/ffhq_256_ncsnpp_continuous": _preset("lsun", "vesde", True, {**_LSUN_NCSNPP, "sigma_max": 348.0},
                                                 {"dataset": "FFHQ"}),
        "ve/celebahq_256_ncsnpp_continuous": _preset("lsun", "vesde", True, {**_LSUN_NCSNPP, "sigma_max": 348.0},
                                                     {"dataset": "CelebAHQ"}),
        "ve/ffhq_ncsnpp_continuous": _without(_preset("lsun", "vesde", True, {**_HQ_1024, "sigma_max": 1348.0},
                                                      {"dataset": "FFHQ", "image_size": 1024}), "beta_min", "beta_max"),
        "ve/celebahq_ncsnpp_continuous": _without(_preset("lsun", "vesde", True, {**_HQ_1024, "sigma_max": 1348.0},
                                                          {"dataset": "CelebAHQ", "image_size": 1024}),
                                                  "beta_min", "beta_max"),
        "vp/ddpm/cifar10": _preset("cifar10", "vpsde", False, {**_DDPM, "scale_by_sigma": False}),
        "vp/ddpm/cifar10_continuous": _preset("cifar10", "vpsde", True, {**_DDPM, "scale_by_sigma": False}),
    }
    for sde in ("vp", "subvp"):
        for continuous in ((False, True) if sde == "vp" else (True,)):
            tail = "_continuous" if continuous else ""
            for name, model in (("ncsnpp", _NCSNPP), ("ddpmpp", _DDPMPP)):
                out[f"{sde}/cifar10_{name}{tail}"] = _preset("cifar10", f"{sde}sde", continuous, model)
                if name == "ncsnpp" and not continuous:
                    _without(out[f"{sde}/cifar10_{name}{tail}"], "fourier_scale")
                if continuous:
                    out[f"{sde}/cifar10_{name}_deep{tail}"] = _preset("cifar10", f"{sde}sde", True,
                                                                      {**model, "num_res_blocks": 8})
    out["subvp/cifar10_ddpm_continuous"] = _preset("cifar10", "subvpsde", True, {**_DDPM, "scale_by_sigma": False})
    for name, data in (("bedroom", None), ("church", None), ("celebahq", {"dataset": "CelebAHQ"})):
        out[f"vp/ddpm/{name}"] = _preset("lsun", "vpsde", False, {**_DDPM, "ch_mult": [1, 1, 2, 2, 4, 4],
                                                                   "num_scales": 1000, "scale_by_sigma": False}, data)
    return out


#: The published configs (``configs/<path>.py`` of the original repository, without ``.py``) as plain dicts.
PRESETS: dict[str, dict] = _presets()


# ------------------------------------------------------------------------------------------------- config
def _merge(base: dict, overrides: Mapping, where: str = "") -> dict:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            if not isinstance(out.get(key, {}), Mapping):
                raise ValueError(f"config override {where}{key} is a section, but the config's {where}{key} is a value")
            out[key] = _merge(dict(out.get(key, {})), value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _get(config: Mapping, key: str) -> Any:
    section, name = key.split(".")
    values = config.get(section)
    if not isinstance(values, Mapping) or name not in values:
        raise ValueError(f"the score_sde config is missing {key} (the original code reads it to build the model); "
                         f"start from a preset, e.g. score_sde_config('ve/cifar10_ncsnpp_continuous', overrides)")
    return values[name]


def _bool(config: Mapping, key: str) -> bool:
    value = _get(config, key)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}")
    return value


def _number(config: Mapping, key: str) -> float:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def _validate(cfg: dict) -> None:
    """Refuse combinations the original cannot train or this port does not reproduce, naming the keys."""
    sde = _get(cfg, "training.sde")
    if sde not in SDES:
        raise ValueError(f"training.sde must be one of {list(SDES)}, got {sde!r}")
    continuous = _bool(cfg, "training.continuous")
    name = _get(cfg, "model.name")
    if name not in ("ncsnpp", "ddpm"):
        raise ValueError(f"model.name {name!r} is not supported: scoregen ports score_sde's 'ncsnpp' (NCSN++ / DDPM++) "
                         "and 'ddpm' models (use scoregen.interop.ncsnv2 for NCSN / NCSNv2 checkpoints)")
    if sde == "subvpsde" and not continuous:
        raise ValueError("training.sde 'subvpsde' needs training.continuous True: the original trains the sub-VP SDE "
                         "in continuous time only")
    for key, allowed in (("model.normalization", "GroupNorm"), ("model.attention_type", "ddpm"), ("model.conv_size", 3)):
        field = key.split(".")[1]
        if field in cfg["model"] and cfg["model"][field] != allowed:
            raise ValueError(f"{key} {cfg['model'][field]!r} is not supported: the original networks use {allowed!r}")
    scale_by_sigma = _bool(cfg, "model.scale_by_sigma")
    if scale_by_sigma and sde != "vesde":
        raise ValueError("model.scale_by_sigma True goes with training.sde 'vesde' (a VP / sub-VP network outputs eps, "
                         "which get_score_fn divides by the std itself); no published config combines them")
    embedding = _get(cfg, "model.embedding_type") if name == "ncsnpp" else "positional"
    if embedding == "fourier" and not continuous:
        raise ValueError("model.embedding_type 'fourier' needs training.continuous True (the original asserts it)")
    if sde == "vesde" and continuous and embedding == "positional":
        raise ValueError("a positional embedding with training.sde 'vesde' and training.continuous True would embed "
                         "sigma as a step index; the original's continuous VE configs use embedding_type 'fourier'")
    sigma_min, sigma_max = _number(cfg, "model.sigma_min"), _number(cfg, "model.sigma_max")
    if not sigma_max > sigma_min:
        raise ValueError(f"model.sigma_max ({sigma_max:g}) must exceed model.sigma_min ({sigma_min:g})")
    if sde != "vesde":
        beta_min, beta_max = _number(cfg, "model.beta_min"), _number(cfg, "model.beta_max")
        if not beta_max > beta_min:
            raise ValueError(f"model.beta_max ({beta_max:g}) must exceed model.beta_min ({beta_min:g})")
    num_scales = _get(cfg, "model.num_scales")
    if isinstance(num_scales, bool) or not isinstance(num_scales, int) or not 2 <= num_scales <= MAX_LEVELS:
        raise ValueError(f"model.num_scales must be an integer in 2..{MAX_LEVELS}, got {num_scales!r}")
    if sde == "vpsde" and not continuous and _number(cfg, "model.beta_max") / num_scales >= 1:
        raise ValueError(f"model.beta_max / model.num_scales must be below 1 (a discrete VP beta), got "
                         f"{beta_max:g} / {num_scales}")
    if sde != "vesde" and continuous and name == "ncsnpp" and num_scales < 1000:
        raise ValueError(f"model.num_scales must be at least 1000 for a continuous 'ncsnpp' VP / sub-VP network: the "
                         f"original looks up sigmas[label] with labels 999 t up to 999, got {num_scales}")


def score_sde_config(config: Union[str, Mapping], overrides: Optional[Mapping] = None) -> dict:
    """A score_sde config as nested plain dicts, checked.

    ``config``: a preset name from :data:`PRESETS` (the config file's path under ``configs/`` without ``.py``, such as
    ``"ve/cifar10_ncsnpp_continuous"``, ``"vp/cifar10_ddpmpp_deep_continuous"``, ``"vp/ddpm/cifar10"``; a bare file name
    such as ``"cifar10_ddpm"`` works when only one preset has it), or a dict with the original's sections
    (``ml_collections`` ``config.to_dict()``). ``overrides``: a nested dict merged on top, e.g. ``{"model": {"nf":
    64}}``. Raises ValueError for an unknown preset, a missing key or an unsupported option, naming it.
    """
    if isinstance(config, str):
        matches = [k for k in PRESETS if k == config] or [k for k in PRESETS if k.rsplit("/", 1)[-1] == config]
        if len(matches) != 1:
            hint = f"it names {matches}; give the full path" if matches else f"known: {sorted(PRESETS)}"
            raise ValueError(f"unknown score_sde preset {config!r}: {hint}")
        cfg = copy.deepcopy(PRESETS[matches[0]])
    elif isinstance(config, Mapping):
        cfg = _merge({}, config)
    else:
        raise ValueError(f"a score_sde config is a preset name or a dict of sections, got {type(config).__name__}")
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise ValueError(f"overrides must be a dict of sections, got {type(overrides).__name__}")
        cfg = _merge(cfg, overrides)
    _validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------ network, schedule
_NETWORK_KEYS = {
    "ncsnpp": ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv", "conditional",
               "fir", "fir_kernel", "skip_rescale", "resblock_type", "progressive", "progressive_input",
               "progressive_combine", "embedding_type", "fourier_scale", "init_scale", "scale_by_sigma",
               "nonlinearity", "sigma_min", "sigma_max", "num_scales"),
    "ddpm": ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv", "conditional",
             "scale_by_sigma", "nonlinearity", "sigma_min", "sigma_max", "num_scales"),
}


def score_sde_network(config: Union[str, Mapping]) -> nn.Module:
    """The original's network for ``config`` (a preset name or a dict, see :func:`score_sde_config`), fresh weights:
    :class:`~scoregen.networks.ncsnpp.NCSNpp` or :class:`~scoregen.networks.ncsnpp.ScoreSDEDDPM`, taking the
    original's labels (the module docstring says which)."""
    cfg = score_sde_config(config)
    name = cfg["model"]["name"]
    keys = [k for k in _NETWORK_KEYS[name] if k != "fourier_scale" or cfg["model"].get("embedding_type") == "fourier"]
    kwargs = {k: _get(cfg, f"model.{k}") for k in keys}  # fourier_scale: read by the Fourier embedding only
    data = {k: _get(cfg, f"data.{k}") for k in ("image_size", "num_channels", "centered")}
    return (NCSNpp if name == "ncsnpp" else ScoreSDEDDPM)(**kwargs, **data)


def score_sde_schedule(config: Union[str, Mapping]) -> Schedule:
    """The noise schedule a score_sde model was trained on (see the module docstring), in scoregen's labels."""
    cfg = score_sde_config(config)
    m, sde = cfg["model"], cfg["training"]["sde"]
    if sde == "vesde":
        if cfg["training"]["continuous"]:
            return ContinuousVE(m["sigma_min"], m["sigma_max"], t_min=T_MIN[sde])
        return DiscreteVE(geometric_sigmas(m["sigma_min"], m["sigma_max"], m["num_scales"]), first_index=0)
    if sde == "subvpsde":
        return ContinuousSubVP(m["beta_min"], m["beta_max"], t_min=T_MIN[sde])
    if cfg["training"]["continuous"]:
        return ContinuousVP(m["beta_min"], m["beta_max"], t_min=T_MIN[sde])
    n = m["num_scales"]
    return DiscreteVP(np.linspace(m["beta_min"] / n, m["beta_max"] / n, n), first_index=0)


class ScoreSDELabels(nn.Module):
    """A score_sde network as scoregen calls it: ``forward(x, t)`` with t the schedule's own label (continuous SDE
    time, or a discrete level index) turned into the label the network was trained with: ``"sigma"`` (continuous
    VE: sigma_min (sigma_max / sigma_min)^t), ``"999t"`` (continuous VP / sub-VP) or ``"index"`` (discrete: as is)."""

    def __init__(self, net: nn.Module, label: str, sigma_min: float = 0.0, sigma_max: float = 0.0):
        super().__init__()
        if label not in ("sigma", "999t", "index"):
            raise ValueError(f"label must be 'sigma', '999t' or 'index', got {label!r}")
        if label == "sigma" and not sigma_max > sigma_min > 0:
            raise ValueError(f"label 'sigma' needs sigma_max > sigma_min > 0, got {sigma_max!r}, {sigma_min!r}")
        self.net, self.label = net, label
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.shape = net.shape

    def network_labels(self, t: Tensor) -> Tensor:
        """The original's labels for schedule labels ``t`` (B,)."""
        if self.label == "sigma":
            return (self.sigma_min * (self.sigma_max / self.sigma_min) ** t.double()).to(t.dtype)
        return t * 999 if self.label == "999t" else t

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, self.network_labels(t))


# ------------------------------------------------------------------------------------------------- loading
def _split(obj: Any, path: str) -> tuple[Mapping, Optional[Any]]:
    """``(model state, EMA state or None)`` of the original container, or of a bare state dict."""
    layout = "the original layout {'optimizer', 'model', 'ema', 'step'} or a bare state_dict"
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: got a {type(obj).__name__}; expected {layout}")
    if "model" in obj:
        state = obj["model"]
        if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
            raise ValueError(f"{path}: entry 'model' must be a state_dict (names -> tensors); expected {layout}")
        return state, obj.get("ema")
    if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return obj, None
    raise ValueError(f"{path}: a dict with keys {sorted(map(str, obj))[:6]}; expected {layout}")


def _strip(state: Mapping) -> dict:
    """Drop DataParallel's ``module.`` prefix when every key has it."""
    if state and all(k.startswith(_PREFIX) for k in state):
        return {k[len(_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def _shadow_state(ema: Any, skeleton: nn.Module, path: str) -> dict:
    """The EMA's ``shadow_params`` list as a partial state dict, matched to the parameters that take gradients in
    ``parameters()`` order (the original's ExponentialMovingAverage keeps exactly those), count and shapes checked."""
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, (list, tuple)) or not all(isinstance(v, Tensor) for v in shadow):
        raise ValueError(f"{path}: entry 'ema' must be the original ExponentialMovingAverage's state_dict with a "
                         "'shadow_params' list of tensors; pass ema=False for the raw training weights")
    names = [(k, p.shape) for k, p in skeleton.named_parameters() if p.requires_grad]
    if len(shadow) != len(names):
        raise ValueError(f"{path}: the EMA has {len(shadow)} shadow_params, the network built from the config has "
                         f"{len(names)} trainable parameters; is this the checkpoint's own config (model.nf, ch_mult, "
                         "num_res_blocks, attn_resolutions, progressive*, resblock_type)?")
    wrong = [f"#{i} {k}: EMA {tuple(v.shape)}, network {tuple(s)}" for i, ((k, s), v) in enumerate(zip(names, shadow))
             if tuple(v.shape) != tuple(s)]
    if wrong:
        raise ValueError(f"{path}: EMA shadow_params do not fit the network built from the config (matched by order): "
                         f"{'; '.join(wrong[:5])}")
    return {k: v for (k, _), v in zip(names, shadow)}


def load_score_sde(path: PathLike, config: Union[str, Mapping], *, ema: bool = True,
                   device: Union[str, torch.device] = "cpu") -> NetworkScoreModel:
    """An original score_sde_pytorch checkpoint as a score model on ``device`` (network in eval mode).

    Args:
        path: ``checkpoint_<n>.pth`` (the container described in the module docstring), or a bare state dict
            (``module.`` prefix optional; then ``ema=False``).
        config: the run's config: a preset name or a dict (:func:`score_sde_config`).
        ema: take the EMA weights (what the original samples with); False takes the raw training weights.
        device: where the network lives.

    Returns a :class:`~scoregen.NetworkScoreModel` on :func:`score_sde_schedule`'s schedule, parameterization
    "score" (VE) or "eps" (VP, sub-VP), whose ``net`` is a :class:`ScoreSDELabels` around the original network; its
    ``data_range`` is (0, 1) or (-1, 1) after ``data.centered``. ValueError when the file does not fit the config
    (missing / unexpected names, shapes, the EMA list's length or shapes), names the problem.
    """
    cfg = score_sde_config(config)
    path = os.fspath(path)
    with torch.device("meta"):  # the config's network, checked against the file before any weight is allocated
        skeleton = score_sde_network(cfg)
    model_state, ema_state = _split(safe_torch_load(path, path, mmap=True), path)
    model_state = _strip(model_state)
    problems = tensor_mismatch({k: v.shape for k, v in skeleton.state_dict().items()},
                               {k: v.shape for k, v in model_state.items()})
    if problems:
        raise ValueError(f"{path}: the model state_dict does not fit the {type(skeleton).__name__} built from the config: "
                         f"{'; '.join(problems)}. Is this the checkpoint's own config?")
    expected = torch.as_tensor(geometric_sigmas(cfg["model"]["sigma_min"], cfg["model"]["sigma_max"],
                                                cfg["model"]["num_scales"]))
    if not torch.allclose(model_state["sigmas"].double(), expected, rtol=1e-5, atol=0.0):
        raise ValueError(f"{path}: the checkpoint's sigmas buffer disagrees with the config's model.sigma_min, sigma_max "
                         "and num_scales; use the config the checkpoint was trained with")
    if ema:
        if ema_state is None:
            raise ValueError(f"{path}: no 'ema' entry (the EMA weights the original samples with); pass ema=False for "
                             "the raw training weights")
        model_state = {**model_state, **_shadow_state(ema_state, skeleton, path)}
    net = score_sde_network(cfg)
    net.load_state_dict(model_state, strict=True)
    net = net.to(device).eval()
    sde, continuous = cfg["training"]["sde"], cfg["training"]["continuous"]
    label = "index" if not continuous else ("sigma" if sde == "vesde" else "999t")
    wrapped = ScoreSDELabels(net, label, float(cfg["model"]["sigma_min"]), float(cfg["model"]["sigma_max"]))
    model = NetworkScoreModel(wrapped, score_sde_schedule(cfg), "score" if sde == "vesde" else "eps",
                              time="fractional" if continuous else "nearest")
    model.data_range = (-1.0, 1.0) if cfg["data"]["centered"] else (0.0, 1.0)
    return model
