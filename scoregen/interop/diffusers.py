"""diffusers pipelines as scoregen score models: a ``UNet2DModel`` plus the scheduler it was trained with.

A diffusers image pipeline is a folder ``model_index.json``, ``unet/`` (``config.json`` and
``diffusion_pytorch_model.safetensors``) and ``scheduler/scheduler_config.json``. The network alone does
not say what it computes; the scheduler's config does, and :func:`load_diffusers` reads it:

* ``DDPMScheduler`` / ``DDIMScheduler``: a discrete variance-preserving model. The schedule is a
  :class:`~scoregen.DiscreteVP` with ``first_index=0`` whose ``abar`` are the scheduler's own
  ``alphas_cumprod`` (``beta_schedule`` ``linear``, ``scaled_linear``, ``squaredcos_cap_v2``, or
  ``trained_betas``), and ``prediction_type`` gives the parameterization: ``epsilon`` -> ``"eps"``,
  ``v_prediction`` -> ``"v"`` (``v = m eps - sigma x0``), ``sample`` -> ``"x0"``.
* ``ScoreSdeVeScheduler`` with an NCSN++ UNet (``time_embedding_type="fourier"``): score-SDE's
  variance-exploding model. The UNet takes the noise std sigma itself as its timestep (it embeds
  ``log sigma``) and divides its output by sigma: the output is the score ``grad_x log p_sigma(x)``.
  The schedule is a :class:`~scoregen.ContinuousVE` with sigma geometric from ``sigma_min`` to
  ``sigma_max`` over t in [``sampling_eps``, 1], as the diffusers pipeline samples it; any sigma in that
  range is answered exactly (no rounding to a grid).

Time labels. diffusers counts timesteps k = 0 .. T-1; the DDPM paper (Ho et al. 2020) counts
t = 1 .. T. They name the same levels: diffusers' k is the paper's t = k + 1, with the same
``abar = prod_{s <= t} (1 - beta_s)`` (diffusers' ``alphas_cumprod[k]``). The loaded model's schedule
uses diffusers' labels (``first_index=0``), so the network receives exactly the integer timesteps a
diffusers pipeline would pass it; ``DiscreteVP(model.schedule.beta, first_index=1)`` is the same
schedule labelled the paper's way.

Noise convention. As everywhere in scoregen, a query ``model.eps(x, sigma, m)`` is in the caller's
coordinates ``x = m x0 + sigma eps``; diffusers' timestep k is the VP level ``m = sqrt(abar_k)``,
``sigma = sqrt(1 - abar_k)``, and any other level (e.g. VE, ``m = 1``) is answered by matching log-SNR.

Sampling knobs that belong to the scheduler, not to the network, are not applied by the model:
``clip_sample`` / ``thresholding`` are available as ``model.x0_hook`` (pass it to
``scoregen.sample(..., x0_hook=model.x0_hook)``; the DDPM sampler then matches DDPMScheduler's clipping,
and the DDIM sampler matches DDIMScheduler with ``use_clipped_model_output=True``, since an x0 hook
also re-derives eps from the clipped x0), and ``timestep_spacing`` / ``steps_offset`` only choose
diffusers' inference grid (scoregen's ``steps`` picks evenly spaced trained levels, both ends included).

``diffusers`` is imported only when a pipeline is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..io import MAX_CONFIG_BYTES, read_json
from ..models import Level, NetworkScoreModel, clip_x0, network_input, to_eps
from ..schedules import ContinuousVE, DiscreteVP, Schedule

__all__ = [
    "DiffusersScoreModel",
    "DiffusersUNet",
    "from_diffusers",
    "load_diffusers",
    "schedule_from_scheduler",
    "is_diffusers_folder",
    "x0_hook_from_scheduler",
    "SUPPORTED_SCHEDULERS",
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
]

#: Scheduler classes whose configuration fixes how the network was trained.
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
VE_SCHEDULERS = ("ScoreSdeVeScheduler",)
SUPPORTED_SCHEDULERS = VP_SCHEDULERS + VE_SCHEDULERS
#: ``beta_schedule`` values of DDPM/DDIM schedulers that are read (``trained_betas`` works with any).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
#: diffusers ``prediction_type`` -> scoregen parameterization.
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SUPPORTED_UNETS = ("UNet2DModel",)

SchedulerLike = Union[str, os.PathLike, Mapping[str, Any], Any]


# ----------------------------------------------------------------------------- scheduler configs


def is_diffusers_folder(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (``model_index.json``) or a model folder with its scheduler
    (``scheduler_config.json``)."""
    return os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isfile(os.path.join(path, "scheduler_config.json"))


def _scheduler_config(scheduler: SchedulerLike) -> tuple[str, dict]:
    """``(class name, config dict)`` of a scheduler object, a config dict, a folder or a JSON file."""
    if isinstance(scheduler, (str, os.PathLike)):
        path = Path(scheduler)
        file = path / "scheduler_config.json" if path.is_dir() else path
        if file.exists() and not file.is_file():
            raise ValueError(f"{file} is not a regular file (a scheduler config is a JSON file)")
        if not file.is_file():
            raise FileNotFoundError(f"no scheduler config at {file}: pass a folder holding scheduler_config.json, "
                                    "the JSON file itself, a config dict or a diffusers scheduler object")
        config = _read_json(file)
        name = config.get("_class_name")
        where = str(file)
    elif isinstance(scheduler, Mapping):
        config, name, where = dict(scheduler), scheduler.get("_class_name"), "the scheduler config"
    elif hasattr(scheduler, "config"):
        config, name, where = dict(scheduler.config), type(scheduler).__name__, f"the {type(scheduler).__name__} object"
    else:
        raise TypeError(f"scheduler must be a diffusers scheduler, a config dict, a folder or a JSON file; got {type(scheduler).__name__}")
    if name is None:
        raise ValueError(f"{where} has no '_class_name'; expected one of {list(SUPPORTED_SCHEDULERS)}")
    if name not in SUPPORTED_SCHEDULERS:
        raise ValueError(f"unsupported scheduler {name!r} (in {where}); supported: {list(SUPPORTED_SCHEDULERS)} "
                         "(DDPM/DDIM for discrete variance-preserving models, ScoreSdeVe for NCSN++)")
    return name, config


def _vp_parameterization(config: dict) -> str:
    pred = config.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {pred!r}; supported: {list(PREDICTION_TYPES)} "
                         f"(read as scoregen parameterizations {list(PREDICTION_TYPES.values())})")
    return PREDICTION_TYPES[pred]


def _vp_schedule(name: str, config: dict) -> DiscreteVP:
    """The DiscreteVP (labels 0..T-1) whose abar are the scheduler's float32 ``alphas_cumprod``."""
    if config.get("trained_betas") is None:
        kind = config.get("beta_schedule", "linear")
        if kind not in BETA_SCHEDULES:
            raise ValueError(f"unsupported beta_schedule {kind!r}; supported: {list(BETA_SCHEDULES)} or trained_betas")
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError("rescale_betas_zero_snr=True makes the last level pure noise (abar_T = 0, beta_T = 1), "
                         "which a DiscreteVP (betas in (0, 1)) cannot represent")
    import diffusers

    # diffusers computes the betas (in float32) and trains and samples with their float32 cumulative
    # product, so that product is the schedule: betas are recovered as 1 - abar_k / abar_{k-1}.
    built = getattr(diffusers, name).from_config(config)
    abar = built.alphas_cumprod.double().cpu().numpy()
    betas = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
    if not np.all((betas > 0) & (betas < 1)):  # float32 rounding flattened abar somewhere: keep the raw betas
        betas = built.betas.double().cpu().numpy()
    return DiscreteVP(betas, first_index=0)


def _ve_schedule(config: dict) -> ContinuousVE:
    return ContinuousVE(sigma_min=float(config.get("sigma_min", 0.01)), sigma_max=float(config.get("sigma_max", 1348.0)),
                        t_min=float(config.get("sampling_eps", 1e-5)))


def schedule_from_scheduler(scheduler: SchedulerLike) -> tuple[Schedule, str]:
    """``(schedule, parameterization)`` a diffusers scheduler (object, config dict, folder or JSON file) describes.

    DDPM/DDIM: ``(DiscreteVP(..., first_index=0), "eps" | "v" | "x0")``; ScoreSdeVe: ``(ContinuousVE, "score")``.
    An unsupported scheduler class, ``beta_schedule`` or ``prediction_type`` is a ``ValueError`` naming it.
    """
    name, config = _scheduler_config(scheduler)
    if name in VE_SCHEDULERS:
        return _ve_schedule(config), "score"
    return _vp_schedule(name, config), _vp_parameterization(config)


def _diffusers_threshold(ratio: float, max_value: float) -> Callable[[Tensor], Tensor]:
    """diffusers' ``thresholding``: per sample s = the ``ratio`` quantile of |x0|, clamped to [1, max_value];
    x0 is clipped to [-s, s] and divided by s (so the result lies in [-1, 1])."""

    def hook(x0: Tensor) -> Tensor:
        s = torch.quantile(x0.reshape(x0.shape[0], -1).abs().float(), ratio, dim=1).clamp(1.0, max_value)
        s = s.to(x0).reshape(-1, *([1] * (x0.ndim - 1)))
        return x0.clamp(-s, s) / s

    return hook


def x0_hook_from_scheduler(scheduler: SchedulerLike) -> Optional[Callable[[Tensor], Tensor]]:
    """The x0 hook reproducing a DDPM/DDIM scheduler's ``thresholding`` or ``clip_sample`` (None when off,
    and for ScoreSdeVe). Use it as ``scoregen.sample(model, ..., x0_hook=hook)``."""
    name, config = _scheduler_config(scheduler)
    if name not in VP_SCHEDULERS:
        return None
    if config.get("thresholding", False):
        return _diffusers_threshold(float(config.get("dynamic_thresholding_ratio", 0.995)), float(config.get("sample_max_value", 1.0)))
    if config.get("clip_sample", True):
        r = float(config.get("clip_sample_range", 1.0))
        return clip_x0(-r, r)
    return None


# ----------------------------------------------------------------------------- the network


class DiffusersUNet(torch.nn.Module):
    """A diffusers ``UNet2DModel`` as a scoregen network ``net(x, t[, y])``.

    ``x``: (B, C, H, W); ``t``: (B,) time labels of the model's schedule; ``y``: (B,) class labels for a
    class-conditional UNet. With ``timestep="index"`` the label is passed as diffusers' timestep
    (0..T-1); with ``timestep="sigma"`` (NCSN++) the label is a :class:`ContinuousVE` time and the UNet
    receives ``sigma(t)``; :meth:`at_sigma` calls it at sigma directly. Returns the UNet's ``.sample``
    (B, C, H, W) in ``x``'s dtype; for a learned-variance UNet (2C output channels) the first C, or all 2C with
    ``learned_variance`` (the scheduler's ``variance_type="learned_range"``: the last C are the variance values).
    """

    def __init__(self, unet: torch.nn.Module, timestep: Literal["index", "sigma"], schedule: Schedule,
                 learned_variance: bool = False):
        super().__init__()
        cfg = unet.config
        if timestep not in ("index", "sigma"):
            raise ValueError(f"timestep must be 'index' or 'sigma', got {timestep!r}")
        self.unet, self.timestep, self.schedule = unet, timestep, schedule
        c_in, c_out = int(cfg.in_channels), int(cfg.out_channels)
        if c_out not in (c_in, 2 * c_in):
            raise ValueError(f"the UNet has {c_in} input and {c_out} output channels; expected equal counts "
                             "(or twice as many outputs, for a learned variance)")
        self.channels = c_in
        self.learned_variance = bool(learned_variance)
        if self.learned_variance and c_out != 2 * c_in:
            raise ValueError(f"a learned variance needs twice the input channels as outputs; the UNet has {c_out} for "
                             f"{c_in} inputs")
        size = cfg.sample_size
        if size is None:
            raise ValueError("the UNet's config has no sample_size, so the image shape is unknown")
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.shape = (c_in, int(h), int(w))
        self.num_classes = getattr(cfg, "num_class_embeds", None)
        self.conditional = getattr(unet, "class_embedding", None) is not None
        self.learned_labels = cfg.time_embedding_type == "learned"

    def _call(self, x: Tensor, timestep: Tensor, y: Optional[Tensor]) -> Tensor:
        if self.conditional and y is None:
            raise ValueError("this UNet is class-conditional "
                             f"(num_class_embeds={self.num_classes}): pass class labels y of shape (batch,)")
        if not self.conditional and y is not None:
            raise ValueError("this UNet is not class-conditional (no num_class_embeds): it takes no labels y")
        if y is not None and self.num_classes is not None and bool(((y < 0) | (y >= self.num_classes)).any()):
            raise ValueError(f"class labels must be in 0..{self.num_classes - 1} (num_class_embeds={self.num_classes}), "
                             f"got {sorted(set(y.tolist()))}")
        dtype = self.unet.dtype
        out = self.unet(x.to(dtype), timestep, class_labels=y, return_dict=False)[0]
        return out.to(x.dtype) if self.learned_variance else out[:, : self.channels].to(x.dtype)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if self.timestep == "sigma":
            sigma = self.schedule.sigma(t.detach().double().cpu().numpy())
            return self.at_sigma(x, torch.as_tensor(sigma, dtype=torch.float32, device=x.device), y)
        if self.learned_labels:  # an embedding table: integer timesteps only
            if not torch.equal(t, t.round()):
                raise ValueError("this UNet has a learned (table) time embedding and takes integer timesteps only; use time='nearest'")
            t = t.long()
        return self._call(x, t, y)

    def at_sigma(self, x: Tensor, sigma: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """NCSN++: the UNet at noise std ``sigma`` (B,), which it receives as its timestep. Returns the score."""
        return self._call(x, sigma, y)


class DiffusersScoreModel(NetworkScoreModel):
    """A diffusers UNet and its training schedule as a :class:`~scoregen.ScoreModel`.

    ``eps(x, sigma, m, y)`` with ``x`` of shape (B, C, H, W) in the caller's coordinates
    ``x = m x0 + sigma eps``. Attributes: ``unet`` (the diffusers module), ``scheduler_class``,
    ``scheduler_config`` (a dict), ``x0_hook`` (the scheduler's clipping/thresholding as an x0 hook, or
    None), ``num_classes`` (None when unconditional), plus NetworkScoreModel's ``net``, ``schedule``,
    ``parameterization``, ``shape``.
    """

    def __init__(self, unet: torch.nn.Module, scheduler: SchedulerLike, *,
                 time: Optional[Literal["nearest", "fractional"]] = None):
        name, config = _scheduler_config(scheduler)
        scheduler = {**config, "_class_name": name}  # read once: a folder or object is not parsed again below
        schedule, parameterization = schedule_from_scheduler(scheduler)
        fourier = unet.config.time_embedding_type == "fourier"
        if name in VE_SCHEDULERS and not fourier:
            raise ValueError(f"{name} needs an NCSN++ UNet (time_embedding_type='fourier', which takes sigma as its "
                             f"timestep); this UNet's time_embedding_type is {unet.config.time_embedding_type!r}")
        if name in VP_SCHEDULERS and fourier:
            raise ValueError(f"a UNet with time_embedding_type='fourier' takes sigma as its timestep and outputs a score "
                             f"(NCSN++, ScoreSdeVeScheduler); it does not fit {name}'s integer timesteps")
        # improved-diffusion's learned range (diffusers' variance_type "learned_range"): the variance channels are kept
        # and answered as eps_and_variance's weight; other variance types sample with a fixed variance
        learned = config.get("variance_type") == "learned_range" and int(unet.config.out_channels) == 2 * int(unet.config.in_channels)
        net = DiffusersUNet(unet, "sigma" if fourier else "index", schedule, learned_variance=learned)
        if time == "fractional" and net.learned_labels:
            raise ValueError("time='fractional' needs a UNet that accepts fractional timesteps; this one has a learned "
                             "(table) time embedding")
        super().__init__(net, schedule, parameterization, shape=net.shape, time=time or "nearest", learned_variance=learned)
        self.unet, self.scheduler_class, self.scheduler_config = unet, name, config
        self.x0_hook = x0_hook_from_scheduler(scheduler)
        self.num_classes = net.num_classes

    def eps_and_variance(self, x: Tensor, sigma: Level, m: Level = 1.0,
                         y: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """eps at the caller's level; ``x`` (B, C, H, W), ``sigma``/``m`` floats or (B,) tensors, ``y`` (B,) or None."""
        if self.net.timestep != "sigma":
            return super().eps_and_variance(x, sigma, m, y)
        # NCSN++: hand the UNet the matched sigma itself (in float64 until the call), not a float32 time label
        x_in, _, m_t, sigma_t = self.levels(x, sigma, m)
        s = torch.as_tensor(sigma_t, dtype=torch.float32, device=x.device).expand(x.shape[0])
        out = self.net.at_sigma(network_input(x, x_in, read_after=False), s, y)
        return to_eps(out, x_in, m_t, sigma_t, "score"), None  # a score output: x_in is not read after

    def __repr__(self) -> str:
        return (f"DiffusersScoreModel({type(self.unet).__name__} {self.shape}, {self.scheduler_class}, "
                f"{self.schedule!r}, parameterization={self.parameterization!r})")


def from_diffusers(unet: torch.nn.Module, scheduler: SchedulerLike, *,
                   time: Optional[Literal["nearest", "fractional"]] = None) -> DiffusersScoreModel:
    """Wrap an in-memory diffusers ``UNet2DModel`` and the scheduler it was trained with.

    Args:
        unet: a ``diffusers.UNet2DModel`` (put it on its device/dtype first); it is switched to eval mode.
        scheduler: a DDPM/DDIM/ScoreSdeVe scheduler object, or its config (dict, folder or JSON file).
        time: ``"nearest"`` (default: the integer timestep nearest the queried log-SNR) or
            ``"fractional"`` (exact fractional timesteps; the positional embedding accepts them).
    Returns: a score model with ``shape = (C, H, W)``; ``eps(x, sigma, m, y)`` as in scoregen.
    """
    cls = type(unet).__name__
    if cls not in SUPPORTED_UNETS:
        raise ValueError(f"unsupported network {cls!r}; supported: {list(SUPPORTED_UNETS)} "
                         "(text-conditional UNets need their encoders and are not score models on their own)")
    unet.eval()
    return DiffusersScoreModel(unet, scheduler, time=time)


# ----------------------------------------------------------------------------- folders


def _read_json(path: Path) -> dict:
    """A diffusers config file: a JSON object (ValueError naming the file otherwise)."""
    config = read_json(path, MAX_CONFIG_BYTES, "a diffusers config")
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return config


def load_diffusers(
    path: Union[str, os.PathLike],
    *,
    subfolder: Optional[str] = None,
    scheduler: Optional[SchedulerLike] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    time: Optional[Literal["nearest", "fractional"]] = None,
) -> DiffusersScoreModel:
    """Load a diffusers pipeline folder (or a UNet folder plus its scheduler) as a score model.

    Args:
        path: a local pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``) or a folder
            holding a ``UNet2DModel``'s ``config.json`` and weights. (Hub ids are not fetched: download
            first, e.g. with ``huggingface_hub.snapshot_download``.)
        subfolder: the UNet's folder inside ``path`` (default: the pipeline's ``unet`` component, or
            ``path`` itself when there is no ``model_index.json``).
        scheduler: the scheduler (object, config dict, folder or ``scheduler_config.json``); default: the
            pipeline's ``scheduler`` component, else a ``scheduler_config.json`` beside the UNet's config.
        device, dtype: where and in which precision the UNet's weights go.
        time: see :func:`from_diffusers`.
    Returns: a :class:`DiffusersScoreModel` of shape (C, H, W) answering ``eps(x, sigma, m, y)`` for
    ``x = m x0 + sigma eps``.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{os.fspath(path)!r} is not a local folder; load_diffusers reads a saved pipeline "
                                "or UNet folder (download hub models first, e.g. huggingface_hub.snapshot_download)")
    index = _read_json(root / "model_index.json") if (root / "model_index.json").is_file() else None
    if subfolder is not None:
        unet_dir = root / subfolder
    elif index is not None:
        if "unet" not in index:
            parts = sorted(k for k in index if not k.startswith("_"))
            raise ValueError(f"{root / 'model_index.json'} has no 'unet' component (components: {parts})")
        unet_dir = root / "unet"
    else:
        unet_dir = root
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"no UNet config at {unet_dir / 'config.json'}")
    cls = _read_json(unet_dir / "config.json").get("_class_name")
    if cls not in SUPPORTED_UNETS:
        raise ValueError(f"unsupported network {cls!r} in {unet_dir / 'config.json'}; supported: {list(SUPPORTED_UNETS)}")

    if scheduler is None:
        if index is not None and "scheduler" in index and (root / "scheduler").is_dir():
            scheduler = root / "scheduler"
        elif (unet_dir / "scheduler_config.json").is_file():
            scheduler = unet_dir
        else:
            raise FileNotFoundError(f"no scheduler config found for {unet_dir}: pass scheduler= (a folder, "
                                    "scheduler_config.json, a config dict or a diffusers scheduler)")
    _scheduler_config(scheduler)  # refuse an unsupported scheduler before loading weights

    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(os.fspath(unet_dir), torch_dtype=dtype, local_files_only=True)
    return from_diffusers(unet.to(device), scheduler, time=time)
