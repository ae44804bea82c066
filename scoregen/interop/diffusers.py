"""diffusers pipelines as scoregen score models: a ``UNet2DModel`` plus the scheduler it was trained with.

A diffusers image pipeline is a folder ``model_index.json``, ``unet/`` (``config.json`` and
``diffusion_pytorch_model.safetensors``) and ``scheduler/scheduler_config.json``. The network alone does
not say what it computes; the scheduler's config does, and :func:`load_diffusers` reads it. A scheduler class
is two things: a training schedule (what the network was trained on) and a sampler. Only the first is read;
scoregen's ``sampler`` argument picks the sampler (``model.scheduler_note`` names the nearest scoregen sampler,
:data:`SUPPORTED_SCHEDULERS` lists every accepted class):

* Discrete variance-preserving schedulers (:data:`VP_SCHEDULERS`: DDPM, DDIM, PNDM, LMS, Euler,
  EulerAncestral, Heun, KDPM2, KDPM2Ancestral, DPMSolverMultistep / Singlestep / SDE, UniPC, DEIS, SASolver,
  LCM, TCD, DDIMInverse, ...): a :class:`~scoregen.DiscreteVP` with ``first_index=0`` whose ``abar`` are the
  ``alphas_cumprod`` the scheduler class itself builds from ``num_train_timesteps``, ``beta_start``,
  ``beta_end``, ``beta_schedule`` (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``, and ``sigmoid`` /
  ``exp`` where the class has them) or ``trained_betas``. ``prediction_type`` gives the parameterization:
  ``epsilon`` -> ``"eps"``, ``v_prediction`` -> ``"v"`` (``v = m eps - sigma x0``), ``sample`` -> ``"x0"``.
  The sigma-space (Euler-type) schedulers train the same network: they hand the UNet ``x / sqrt(1 + sigma^2)``
  (the VP state) and the timestep whose log sigma is interpolated linearly between the trained ones, which is
  scoregen's ``time="fractional"`` (log-SNR interpolated linearly in the label); on trained levels both are
  the integer timestep.
* ``rescale_betas_zero_snr=True`` trains the last level at pure noise (``abar = 0``, an infinite VE level). As
  diffusers' Euler, DPMSolverMultistep and UniPC schedulers do, that level is clamped to
  ``abar = 2**-24`` (VE sigma 4096); the model's ``scheduler_note`` says so.
* EDM-preconditioned denoisers (:data:`EDM_SCHEDULERS`: EDMEuler, EDMDPMSolverMultistep,
  CosineDPMSolverMultistep, CMStochasticIterative for consistency models): a variance-exploding model in
  continuous sigma, a :class:`~scoregen.ContinuousVE` from ``sigma_min`` to ``sigma_max``, parameterization
  ``"x0"``: the UNet sees ``c_in(sigma) x`` at timestep ``c_noise(sigma)`` and the denoiser is
  ``c_skip(sigma) x + c_out(sigma) F`` (:class:`EDMPreconditioning`, the schedulers' ``precondition_*``
  methods / ``get_scalings_for_boundary_condition``).
* ``ScoreSdeVeScheduler`` with an NCSN++ UNet (``time_embedding_type="fourier"``): score-SDE's
  variance-exploding model. The UNet takes the noise std sigma itself as its timestep (it embeds
  ``log sigma``) and divides its output by sigma: the output is the score ``grad_x log p_sigma(x)``.
  The schedule is a :class:`~scoregen.ContinuousVE` with sigma geometric from ``sigma_min`` to
  ``sigma_max`` over t in [``sampling_eps``, 1], as the diffusers pipeline samples it; any sigma in that
  range is answered exactly (no rounding to a grid).

Refused, with the reason (:data:`REFUSED_SCHEDULERS`): rectified-flow schedulers (velocity of
``(1 - t) x0 + t eps``), TrigFlow (sCM), discrete-token schedulers, samplers that carry no training schedule
(IPNDM, KarrasVe), ``use_flow_sigmas=True``, and Euler's ``timestep_type="continuous"``.

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
``clip_sample`` / ``thresholding`` (and consistency models' ``clip_denoised``) are available as
``model.x0_hook`` (pass it to ``scoregen.sample(..., x0_hook=model.x0_hook)``; the DDPM sampler then matches
DDPMScheduler's clipping, and the DDIM sampler matches DDIMScheduler with ``use_clipped_model_output=True``,
since an x0 hook also re-derives eps from the clipped x0), and ``timestep_spacing`` / ``steps_offset`` /
``use_karras_sigmas`` / ``use_exponential_sigmas`` / ``use_beta_sigmas`` / ``solver_order`` / ... only choose
diffusers' inference grid and solver (scoregen's ``steps`` and ``spacing`` pick its own).

``diffusers`` is imported only when a pipeline is loaded.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
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
    "EDMPreconditioning",
    "from_diffusers",
    "load_diffusers",
    "schedule_from_scheduler",
    "is_diffusers_folder",
    "x0_hook_from_scheduler",
    "nearest_sampler",
    "SUPPORTED_SCHEDULERS",
    "REFUSED_SCHEDULERS",
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
]

_log = logging.getLogger(__name__)

#: Discrete variance-preserving schedulers (they build ``alphas_cumprod`` from the betas) -> the nearest scoregen
#: sampler (a name in ``scoregen.SAMPLERS``; :func:`nearest_sampler` refines it from the config).
VP_SCHEDULERS: dict[str, str] = {
    "DDPMScheduler": "ddpm", "DDPMParallelScheduler": "ddpm", "RePaintScheduler": "ddpm", "UnCLIPScheduler": "ddpm",
    "DDIMScheduler": "ddim", "DDIMParallelScheduler": "ddim", "DDIMInverseScheduler": "ddim",
    "CogVideoXDDIMScheduler": "ddim", "LCMScheduler": "ddim", "TCDScheduler": "ddim",
    "PNDMScheduler": "ipndm", "LMSDiscreteScheduler": "ipndm",
    "EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_maruyama",
    "HeunDiscreteScheduler": "heun", "KDPM2DiscreteScheduler": "heun", "KDPM2AncestralDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpmpp_2m", "DPMSolverMultistepInverseScheduler": "dpmpp_2m",
    "DPMSolverSinglestepScheduler": "dpmpp_2m", "CogVideoXDPMScheduler": "dpmpp_2m",
    "DPMSolverSDEScheduler": "dpmpp_2m_sde", "SASolverScheduler": "dpmpp_2m_sde",
    "UniPCMultistepScheduler": "unipc", "DEISMultistepScheduler": "deis",
}
#: EDM-preconditioned denoisers in continuous sigma -> the nearest scoregen sampler.
EDM_SCHEDULERS: dict[str, str] = {
    "EDMEulerScheduler": "euler", "EDMDPMSolverMultistepScheduler": "dpmpp_2m",
    "CosineDPMSolverMultistepScheduler": "dpmpp_2m_sde", "CMStochasticIterativeScheduler": "ddpm",
}
#: Score-SDE's VE scheduler -> the nearest scoregen sampler (its predictor-corrector).
VE_SCHEDULERS: dict[str, str] = {"ScoreSdeVeScheduler": "pc"}
SUPPORTED_SCHEDULERS = tuple(VP_SCHEDULERS) + tuple(EDM_SCHEDULERS) + tuple(VE_SCHEDULERS)

_FLOW = ("a rectified-flow model (trained on x_t = (1 - t) x0 + t eps with a velocity output): scoregen has no "
         "flow-matching schedule or velocity parameterization")
_TOKENS = "a discrete-token (masked or categorical) diffusion, not a Gaussian score model"
#: Scheduler classes that are refused, with the reason.
REFUSED_SCHEDULERS: dict[str, str] = {
    **dict.fromkeys(("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler",
                     "FlowMapEulerDiscreteScheduler", "LTXEulerAncestralRFScheduler", "HeliosScheduler",
                     "HeliosDMDScheduler", "PiflowScheduler", "MiniMaxH3Scheduler", "RFD4ProteinaScheduler"), _FLOW),
    **dict.fromkeys(("AmusedScheduler", "VQDiffusionScheduler", "BlockRefinementScheduler", "DiscreteDDIMScheduler",
                     "EntropyBoundScheduler"), _TOKENS),
    "SCMScheduler": "TrigFlow time (x_t = cos(t) x0 + sin(t) sigma_data eps, sCM): scoregen has no such schedule",
    "DDPMWuerstchenScheduler": "Wuerstchen's continuous-time prior, whose networks are not UNet2DModels",
    "IPNDMScheduler": "a sampler that carries no training schedule (its alphas are built per inference grid): pass "
                      "the scheduler the network was trained with, and use scoregen's sampler 'ipndm'",
    "KarrasVeScheduler": "a sampler that carries no training schedule: pass the scheduler the network was trained "
                         "with, and use scoregen's sampler 'edm'",
}
#: ``beta_schedule`` names diffusers implements (each class a subset: sigmoid in DDPM and RePaint, exp in Heun).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "exp")
#: diffusers ``prediction_type`` -> scoregen parameterization.
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SUPPORTED_UNETS = ("UNet2DModel",)
#: diffusers' clamp of a zero-terminal-SNR level (EulerDiscreteScheduler, DPMSolverMultistepScheduler, UniPC).
ZERO_SNR_ABAR = 2.0**-24

SchedulerLike = Union[str, os.PathLike, Mapping[str, Any], Any]


# ----------------------------------------------------------------------------- scheduler configs


def is_diffusers_folder(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (``model_index.json``) or a model folder with its scheduler
    (``scheduler_config.json``)."""
    return os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isfile(os.path.join(path, "scheduler_config.json"))


def _scheduler_config(scheduler: SchedulerLike) -> tuple[str, dict]:
    """``(class name, config dict)`` of a scheduler object, a config dict, a folder or a JSON file; the class must
    be supported (a refused or unknown one is a ValueError naming it and why)."""
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
    if name in REFUSED_SCHEDULERS:
        raise ValueError(f"unsupported scheduler {name!r} (in {where}): {REFUSED_SCHEDULERS[name]}")
    if name not in SUPPORTED_SCHEDULERS:
        raise ValueError(f"unsupported scheduler {name!r} (in {where}); supported: {list(SUPPORTED_SCHEDULERS)} "
                         "(discrete variance-preserving, EDM-preconditioned, and ScoreSdeVe for NCSN++)")
    _check_options(name, config)
    return name, config


def _check_options(name: str, config: dict) -> None:
    """Refuse the config options that change what the network was trained on into something scoregen cannot express."""
    if config.get("use_flow_sigmas", False):
        raise ValueError(f"{name} with use_flow_sigmas=True describes {_FLOW}")
    if name in VP_SCHEDULERS:
        if config.get("trained_betas") is None and config.get("beta_schedule", "linear") not in BETA_SCHEDULES:
            raise ValueError(f"unsupported beta_schedule {config['beta_schedule']!r}; diffusers implements "
                             f"{list(BETA_SCHEDULES)} (not every class each) or trained_betas")
        _vp_parameterization(config)
        if config.get("timestep_type", "discrete") == "continuous" and config.get("prediction_type") == "v_prediction":
            raise ValueError(f"{name} with timestep_type='continuous' hands the UNet 0.25 log sigma instead of a "
                             "trained timestep: not supported (use timestep_type='discrete')")
    elif name in EDM_SCHEDULERS and name != "CMStochasticIterativeScheduler":
        pred = config.get("prediction_type", "epsilon")
        if pred not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {pred!r} for {name}: its precondition_outputs takes "
                             "'epsilon' or 'v_prediction'")


def _vp_parameterization(config: dict) -> str:
    pred = config.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {pred!r}; supported: {list(PREDICTION_TYPES)} "
                         f"(read as scoregen parameterizations {list(PREDICTION_TYPES.values())})")
    return PREDICTION_TYPES[pred]


def _built(name: str, config: dict):
    """The scheduler class built from ``config`` (its defaults filled in), as diffusers itself would build it."""
    import diffusers

    try:
        return getattr(diffusers, name).from_config(config)
    except NotImplementedError as e:  # e.g. a beta_schedule this class does not implement
        raise ValueError(f"{name} cannot be built from this config: {e}") from None


def _vp_schedule(name: str, config: dict) -> tuple[DiscreteVP, bool]:
    """The DiscreteVP (labels 0..T-1) whose abar are the scheduler's ``alphas_cumprod``, and whether a zero-SNR last
    level was clamped (to ``abar = 2**-24``, or below the level before it)."""
    # diffusers computes the betas (in float32) and trains and samples with their cumulative product, so that
    # product is the schedule: betas are recovered as 1 - abar_k / abar_{k-1}.
    built = _built(name, config)
    abar = built.alphas_cumprod.double().cpu().numpy().copy()
    clamped = bool(built.config.get("rescale_betas_zero_snr", False))
    if clamped and len(abar) >= 3:
        # zero terminal SNR: abar_T = 0 (DDPM, DDIM, ...) or diffusers' clamp 2**-24 (Euler-type classes). Where the
        # level before is already below 2**-24 (a linear schedule of 1000 steps), the clamp would put the last level
        # above it; extrapolating the last ratio keeps the levels ordered.
        abar[-1] = ZERO_SNR_ABAR if ZERO_SNR_ABAR < abar[-2] else abar[-2] ** 2 / abar[-3]
    betas = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
    if not np.all((betas > 0) & (betas < 1)):  # float32 rounding flattened abar somewhere: keep the raw betas
        betas = built.betas.double().cpu().numpy()
    return DiscreteVP(betas, first_index=0), clamped


def _continuous_ve(name: str, config: dict) -> ContinuousVE:
    built = _built(name, config).config
    if name in VE_SCHEDULERS:
        return ContinuousVE(sigma_min=float(built.sigma_min), sigma_max=float(built.sigma_max), t_min=float(built.sampling_eps))
    return ContinuousVE(sigma_min=float(built.sigma_min), sigma_max=float(built.sigma_max), t_min=0.0)


def schedule_from_scheduler(scheduler: SchedulerLike) -> tuple[Schedule, str]:
    """``(schedule, parameterization)`` a diffusers scheduler (object, config dict, folder or JSON file) describes.

    Discrete VP classes: ``(DiscreteVP(..., first_index=0), "eps" | "v" | "x0")``; EDM classes: ``(ContinuousVE,
    "x0")`` (of the preconditioned denoiser); ScoreSdeVe: ``(ContinuousVE, "score")``. An unsupported scheduler
    class, ``beta_schedule`` or ``prediction_type`` is a ``ValueError`` naming it.
    """
    name, config = _scheduler_config(scheduler)
    if name in VE_SCHEDULERS:
        return _continuous_ve(name, config), "score"
    if name in EDM_SCHEDULERS:
        return _continuous_ve(name, config), "x0"
    return _vp_schedule(name, config)[0], _vp_parameterization(config)


def nearest_sampler(scheduler: SchedulerLike) -> str:
    """The scoregen sampler (a name in ``scoregen.SAMPLERS``) nearest to what the scheduler class samples with:
    e.g. Euler -> ``"euler"``, Heun -> ``"heun"``, DPMSolverMultistep -> ``"dpmpp_2m"`` (``"dpmpp_3m"`` with
    ``solver_order=3``, ``"dpmpp_2m_sde"`` for the SDE variants)."""
    name, config = _scheduler_config(scheduler)
    if name in ("DPMSolverMultistepScheduler", "EDMDPMSolverMultistepScheduler"):
        if str(config.get("algorithm_type", "")).startswith("sde-"):
            return "dpmpp_2m_sde"
        if config.get("solver_order", 2) == 3:
            return "dpmpp_3m"
    return {**VP_SCHEDULERS, **EDM_SCHEDULERS, **VE_SCHEDULERS}[name]


def _diffusers_threshold(ratio: float, max_value: float) -> Callable[[Tensor], Tensor]:
    """diffusers' ``thresholding``: per sample s = the ``ratio`` quantile of |x0|, clamped to [1, max_value];
    x0 is clipped to [-s, s] and divided by s (so the result lies in [-1, 1])."""

    def hook(x0: Tensor) -> Tensor:
        s = torch.quantile(x0.reshape(x0.shape[0], -1).abs().float(), ratio, dim=1).clamp(1.0, max_value)
        s = s.to(x0).reshape(-1, *([1] * (x0.ndim - 1)))
        return x0.clamp(-s, s) / s

    return hook


def x0_hook_from_scheduler(scheduler: SchedulerLike) -> Optional[Callable[[Tensor], Tensor]]:
    """The x0 hook reproducing a scheduler's ``thresholding``, ``clip_sample`` or (consistency models)
    ``clip_denoised``, with the class's own defaults (None when off, and for ScoreSdeVe). Use it as
    ``scoregen.sample(model, ..., x0_hook=hook)``."""
    name, config = _scheduler_config(scheduler)
    if name in VE_SCHEDULERS:
        return None
    config = dict(_built(name, config).config)  # the class's defaults: clip_sample is on for DDPM, off for Heun
    if config.get("thresholding", False):
        return _diffusers_threshold(float(config.get("dynamic_thresholding_ratio", 0.995)), float(config.get("sample_max_value", 1.0)))
    if config.get("clip_sample", False):
        r = float(config.get("clip_sample_range", 1.0))
        return clip_x0(-r, r)
    if config.get("clip_denoised", False):
        return clip_x0(-1.0, 1.0)
    return None


@dataclass(frozen=True)
class EDMPreconditioning:
    """EDM's preconditioning (Karras et al. 2022) as the diffusers EDM schedulers apply it, in VE coordinates.

    The UNet F sees ``c_in(sigma) x`` at timestep ``c_noise(sigma)``; the denoiser (an x0 prediction) is
    ``D(x; sigma) = c_skip(sigma) x + c_out(sigma) F``, with ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)`` and

    * ``kind="edm"`` (EDMEuler, EDMDPMSolverMultistep): ``c_noise = log(sigma) / 4``;
      ``kind="cosine"`` (CosineDPMSolverMultistep): ``c_noise = atan(sigma) 2 / pi``; for both
      ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)`` and ``c_out = +-sigma sigma_data / sqrt(sigma^2 +
      sigma_data^2)`` (``-`` for ``v_prediction``);
    * ``kind="consistency"`` (CMStochasticIterative): ``c_noise = 250 log(sigma + 1e-44)``, the boundary-condition
      ``c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)`` and
      ``c_out = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2)``.
    """

    kind: Literal["edm", "cosine", "consistency"]
    sigma_data: float
    prediction_type: str = "epsilon"
    sigma_min: float = 0.0

    @classmethod
    def from_scheduler(cls, name: str, config: dict) -> "EDMPreconditioning":
        built = _built(name, config).config
        kind = {"CosineDPMSolverMultistepScheduler": "cosine", "CMStochasticIterativeScheduler": "consistency"}.get(name, "edm")
        return cls(kind, float(built.sigma_data), built.get("prediction_type", "epsilon"), float(built.sigma_min))

    def c_in(self, sigma: Tensor) -> Tensor:
        return 1.0 / torch.sqrt(sigma**2 + self.sigma_data**2)

    def c_noise(self, sigma: Tensor) -> Tensor:
        if self.kind == "edm":
            return 0.25 * torch.log(sigma)
        if self.kind == "cosine":
            return torch.atan(sigma) / math.pi * 2
        return 1000 * 0.25 * torch.log(sigma + 1e-44)

    def c_skip_out(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        sd2 = self.sigma_data**2
        if self.kind == "consistency":
            shifted = sigma - self.sigma_min
            return sd2 / (shifted**2 + sd2), shifted * self.sigma_data / torch.sqrt(sigma**2 + sd2)
        c_out = sigma * self.sigma_data / torch.sqrt(sigma**2 + sd2)
        return sd2 / (sigma**2 + sd2), -c_out if self.prediction_type == "v_prediction" else c_out


# ----------------------------------------------------------------------------- the network


class DiffusersUNet(torch.nn.Module):
    """A diffusers ``UNet2DModel`` as a scoregen network ``net(x, t[, y])``.

    ``x``: (B, C, H, W); ``t``: (B,) time labels of the model's schedule; ``y``: (B,) class labels for a
    class-conditional UNet. With ``timestep="index"`` the label is passed as diffusers' timestep
    (0..T-1; fractional labels as they are); with ``timestep="sigma"`` (NCSN++) the label is a :class:`ContinuousVE`
    time and the UNet receives ``sigma(t)``; with ``timestep="edm"`` the label is a :class:`ContinuousVE` time and
    the UNet is wrapped in ``precondition`` (:class:`EDMPreconditioning`, x in VE coordinates); :meth:`at_sigma`
    calls the last two at sigma directly. Returns the UNet's ``.sample`` (B, C, H, W) in ``x``'s dtype (the
    denoiser ``D(x; sigma)`` for "edm"); for a learned-variance UNet (2C output channels) the first C, or all 2C with
    ``learned_variance`` (the scheduler's ``variance_type="learned_range"``: the last C are the variance values).
    """

    def __init__(self, unet: torch.nn.Module, timestep: Literal["index", "sigma", "edm"], schedule: Schedule,
                 learned_variance: bool = False, precondition: Optional[EDMPreconditioning] = None):
        super().__init__()
        cfg = unet.config
        if timestep not in ("index", "sigma", "edm"):
            raise ValueError(f"timestep must be 'index', 'sigma' or 'edm', got {timestep!r}")
        if (timestep == "edm") != (precondition is not None):
            raise ValueError("timestep='edm' needs its EDMPreconditioning (precondition=), and only it takes one")
        self.unet, self.timestep, self.schedule, self.precondition = unet, timestep, schedule, precondition
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
        if self.timestep != "index":
            sigma = self.schedule.sigma(t.detach().double().cpu().numpy())
            return self.at_sigma(x, torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1), y)
        if self.learned_labels:  # an embedding table: integer timesteps only
            if not torch.equal(t, t.round()):
                raise ValueError("this UNet has a learned (table) time embedding and takes integer timesteps only; use time='nearest'")
            t = t.long()
        return self._call(x, t, y)

    def at_sigma(self, x: Tensor, sigma: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """At VE noise std ``sigma`` (B,): NCSN++ receives it as its timestep and returns the score; an EDM UNet is
        preconditioned and returns the denoiser ``D(x; sigma)`` (coefficients in float64, as exact as sigma is)."""
        if self.precondition is None:
            return self._call(x, sigma.float(), y)
        pre, s = self.precondition, sigma.double()
        col = s.reshape(-1, *([1] * (x.ndim - 1)))
        out = self._call(x * pre.c_in(col).to(x.dtype), pre.c_noise(s).float(), y)  # a new tensor: x stays intact
        c_skip, c_out = pre.c_skip_out(col)
        return c_skip.to(x.dtype) * x + c_out.to(x.dtype) * out


class DiffusersScoreModel(NetworkScoreModel):
    """A diffusers UNet and its training schedule as a :class:`~scoregen.ScoreModel`.

    ``eps(x, sigma, m, y)`` with ``x`` of shape (B, C, H, W) in the caller's coordinates
    ``x = m x0 + sigma eps``. Attributes: ``unet`` (the diffusers module), ``scheduler_class``,
    ``scheduler_config`` (a dict), ``scheduler_note`` (one sentence: the scheduler was read for its training
    schedule only, the nearest scoregen sampler, and any clamped level), ``x0_hook`` (the scheduler's
    clipping/thresholding as an x0 hook, or None), ``num_classes`` (None when unconditional), plus
    NetworkScoreModel's ``net``, ``schedule``, ``parameterization``, ``shape``.
    """

    def __init__(self, unet: torch.nn.Module, scheduler: SchedulerLike, *,
                 time: Optional[Literal["nearest", "fractional"]] = None):
        name, config = _scheduler_config(scheduler)
        scheduler = {**config, "_class_name": name}  # read once: a folder or object is not parsed again below
        embedding = unet.config.time_embedding_type
        if name in VE_SCHEDULERS and embedding != "fourier":
            raise ValueError(f"{name} needs an NCSN++ UNet (time_embedding_type='fourier', which takes sigma as its "
                             f"timestep); this UNet's time_embedding_type is {embedding!r}")
        if name not in VE_SCHEDULERS and embedding == "fourier":
            takes = "integer timesteps" if name in VP_SCHEDULERS else "timesteps c_noise(sigma), which can be negative"
            raise ValueError(f"a UNet with time_embedding_type='fourier' takes sigma as its timestep and outputs a score "
                             f"(NCSN++, ScoreSdeVeScheduler); it does not fit {name}'s {takes}")
        clamped, precondition = False, None
        if name in VP_SCHEDULERS:
            schedule, clamped = _vp_schedule(name, config)
            parameterization, mode = _vp_parameterization(config), "index"
        else:
            schedule = _continuous_ve(name, config)
            parameterization, mode = ("score", "sigma") if name in VE_SCHEDULERS else ("x0", "edm")
        if mode == "edm":
            if embedding == "learned":
                raise ValueError(f"{name} hands the UNet continuous timesteps c_noise(sigma); this UNet has a learned "
                                 "(table) time embedding, which takes integers only")
            precondition = EDMPreconditioning.from_scheduler(name, config)
        # improved-diffusion's learned range (diffusers' variance_type "learned_range"): the variance channels are kept
        # and answered as eps_and_variance's weight; other variance types sample with a fixed variance
        learned = config.get("variance_type") == "learned_range" and int(unet.config.out_channels) == 2 * int(unet.config.in_channels)
        net = DiffusersUNet(unet, mode, schedule, learned_variance=learned, precondition=precondition)
        if time == "fractional" and net.learned_labels:
            raise ValueError("time='fractional' needs a UNet that accepts fractional timesteps; this one has a learned "
                             "(table) time embedding")
        super().__init__(net, schedule, parameterization, shape=net.shape, time=time or "nearest", learned_variance=learned)
        self.unet, self.scheduler_class, self.scheduler_config = unet, name, config
        self.x0_hook = x0_hook_from_scheduler(scheduler)
        self.num_classes = net.num_classes
        self.scheduler_note = _note(name, scheduler, schedule, parameterization, clamped)
        if name not in _NOTED:  # once per class and process: loading many models of one pipeline says it once
            _NOTED.add(name)
            quiet = name in ("DDPMScheduler", "DDIMScheduler", "ScoreSdeVeScheduler") and not clamped
            _log.log(logging.INFO if quiet else logging.WARNING, self.scheduler_note)

    def eps_and_variance(self, x: Tensor, sigma: Level, m: Level = 1.0,
                         y: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """eps at the caller's level; ``x`` (B, C, H, W), ``sigma``/``m`` floats or (B,) tensors, ``y`` (B,) or None."""
        if self.net.timestep == "index":
            return super().eps_and_variance(x, sigma, m, y)
        # NCSN++ and EDM: hand the network the matched sigma itself (float64), not a float32 time label
        x_in, _, m_t, sigma_t = self.levels(x, sigma, m)
        s = torch.as_tensor(sigma_t, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        if self.net.timestep == "edm":  # the preconditioned UNet reads x_in without writing to it
            return to_eps(self.net.at_sigma(x_in, s, y), x_in, m_t, sigma_t, "x0"), None
        out = self.net.at_sigma(network_input(x, x_in, read_after=False), s, y)
        return to_eps(out, x_in, m_t, sigma_t, "score"), None  # a score output: x_in is not read after

    def __repr__(self) -> str:
        return (f"DiffusersScoreModel({type(self.unet).__name__} {self.shape}, {self.scheduler_class}, "
                f"{self.schedule!r}, parameterization={self.parameterization!r})")


#: Scheduler classes whose note was logged in this process.
_NOTED: set[str] = set()


def _note(name: str, scheduler: dict, schedule: Schedule, parameterization: str, clamped: bool) -> str:
    note = (f"{name} was read for its training schedule only ({schedule!r}, parameterization {parameterization!r}); "
            f"scoregen's sampler argument picks the sampler (nearest to {name}'s own: {nearest_sampler(scheduler)!r})")
    if clamped:
        abar = float(schedule.abar[-1])
        note += (f"; its zero-SNR last level (rescale_betas_zero_snr: abar = 0, an infinite VE level) is clamped to "
                 f"abar = {abar:.4g} (VE sigma {math.sqrt(1 / abar - 1):.4g}): 2**-24 as diffusers' Euler and "
                 "DPMSolverMultistep clamp it, or lower where the level before is already below that")
    return note


def from_diffusers(unet: torch.nn.Module, scheduler: SchedulerLike, *,
                   time: Optional[Literal["nearest", "fractional"]] = None) -> DiffusersScoreModel:
    """Wrap an in-memory diffusers ``UNet2DModel`` and the scheduler it was trained with.

    Args:
        unet: a ``diffusers.UNet2DModel`` (put it on its device/dtype first); it is switched to eval mode.
        scheduler: a scheduler object of a class in :data:`SUPPORTED_SCHEDULERS`, or its config (dict, folder or
            JSON file). Only its training schedule is read (see ``model.scheduler_note``).
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
