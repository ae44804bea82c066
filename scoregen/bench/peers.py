"""Peers in the same run: diffusers' schedulers and k-diffusion's samplers driving a scoregen model.

The benchmark samples one model through scoregen's samplers and through its peers at the same NFE budgets and
scores all of them the same way. :func:`peers_for` lists the peers that can sample a model (and why the others
cannot); each :class:`Peer` runs at a budget with :meth:`Peer.run`, returning a :class:`PeerRun`.

What is compared, and how it is kept fair:

* **The model is called by scoregen's own wrapper.** Every evaluation goes through the guard that
  :func:`scoregen.sample` puts around a model (:class:`scoregen.samplers._guard.Guarded`): it counts the
  evaluations (``PeerRun.nfe``, never taken from the peer), gives the model a copy of the state when the model does
  not protect its input, and checks each answer is finite, exactly as for scoregen's samplers.
* **diffusers** (``DDPM``, ``DDIM``, ``DPMSolverMultistep``, ``UniPC``, ``Euler``, ``Heun``, ``LMS``,
  ``EulerAncestral``): each scheduler is built from the model's training schedule, a :class:`~scoregen.DiscreteVP`:
  ``trained_betas`` = its betas, ``num_train_timesteps`` = its T, ``prediction_type="epsilon"``, and otherwise
  diffusers' shipped defaults (timestep spacing, solver order, final sigma, ...). Clipping (``clip_sample``,
  ``thresholding``) is turned off unless ``data_range`` lies within [-1, 1]. Every deviation from the shipped
  defaults is listed in ``config["changed"]``. The loop is a diffusers pipeline's: initial noise
  ``init_noise_sigma * randn``, then for each ``t`` in ``scheduler.timesteps``,
  ``eps = model.eps(scheduler.scale_model_input(x, t), sigma_t, m_t, y)`` and ``x = scheduler.step(eps, t, x)``.
  Timestep ``k`` (diffusers counts 0..T-1) is the model's label ``k + schedule.first_index`` (DDPM's paper and
  scoregen's ``DiscreteVP.linear()`` count 1..T: the same level, as in :mod:`scoregen.interop.diffusers`), and the
  model is told that label's level ``m_t = sqrt(abar)``, ``sigma_t = sqrt(1 - abar)`` from its own (float64)
  schedule, as a UNet told timestep ``k`` answers at its trained level. Fractional timesteps (the Euler family's
  ``linspace`` grid) are labels between trained levels, answered by the schedule's log-SNR interpolation.
* **k-diffusion** (``euler``, ``heun``, ``lms``, ``dpmpp_2m``, ``dpmpp_2m_sde``, ``euler_ancestral``), each on two
  grids: the wrapper's own (``get_sigmas(steps)``, name ``"dpmpp_2m"``) and Karras et al.'s with rho = 7 between
  the wrapper's sigma_min and sigma_max (name ``"dpmpp_2m karras"``). A DiscreteVP model goes to k-diffusion as an
  eps network ``inner(x, t) -> eps`` (``t`` a position in ``alphas_cumprod``, i.e. the label ``t + first_index``)
  inside ``external.DiscreteEpsDDPMDenoiser(inner, alphas_cumprod, quantize=True)``, with ``alphas_cumprod`` the
  schedule's abar in float32 (as k-diffusion users pass a diffusers or CompVis model's). The wrapper is
  :func:`kdiffusion_denoiser`'s subclass that looks each distinct sigma up once per call instead of once per
  sample (bit-identical samples; the stock lookup costs about 190 ms per call at batch 8192 on one CPU thread). A model on any other
  schedule (variance exploding: an NCSN model; continuous VP) goes as a VE denoiser,
  :func:`scoregen.interop.export.denoiser`, on the Karras grid only, between the VE sigmas ``sigma / m`` of its
  schedule's cleanest and noisiest levels; the wrapper-grid peers are then skipped with that reason. Initial
  noise ``sigmas[0] * randn``, k-diffusion's convention.
* **Budgets.** :meth:`Peer.steps_for` spends as much of an NFE budget as the method's structure allows without
  exceeding it: one evaluation per step, except Heun (diffusers' and k-diffusion's: two per step, one on the last
  step to sigma = 0, so ``2 steps - 1``). diffusers' schedulers take at most T steps. k-diffusion 0.1.1's
  ``sample_dpmpp_2m_sde`` fails on a one-step grid, so that peer needs a budget of 2 (:attr:`Peer.min_nfe`).
  At one step the diffusers Euler family's ``linspace`` grid is timestep 0 alone: it starts from
  ``init_noise_sigma = sigma_0`` (0.01 on DDPM's schedule), as diffusers does, and returns little more than noise.
* All ``n`` samples run as one batch; ``y`` (class labels) is passed to ``model.eps`` as in :func:`scoregen.sample`.
* **Randomness.** Same seed, same samples: the initial noise is scoregen's own for that seed (the per-sample
  streams of :mod:`scoregen.streams`), so a peer and :func:`scoregen.sample` start from the same noise; every noise
  draw a peer makes through an interface that accepts a generator (diffusers' ``step(generator=)``, k-diffusion's
  ``noise_sampler``) comes from ``torch.Generator().manual_seed(seed)``; ``dpmpp_2m_sde``'s Brownian tree is seeded from the
  same generator; draws a peer makes from torch's global generator (k-diffusion's euler and heun draw churn noise
  they do not use at ``s_churn = 0``) run under :func:`torch.random.fork_rng` seeded from ``seed``, so they are
  reproducible and leave the caller's global generator as it was.

k-diffusion's package ``__init__`` imports its training stack (torchvision, kornia, wandb, ...); no torchvision
wheel matches the pinned CPU torch. :func:`load_kdiffusion` loads only ``sampling.py`` and ``external.py`` (and the
``utils.py`` they import) from the installed package, under a private package name, without running the package's
``__init__``. Install it without its dependencies, plus the three that ``sampling.py`` imports::

    pip install --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 torchdiffeq==0.2.5 trampoline==0.1.2

(``trampoline`` is torchsde's own dependency; scipy, tqdm, pillow and safetensors are scoregen's.)
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import math
import os
import sys
import threading
import time
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int
from ..models import ScoreModel, class_labels, prepare_levels
from ..samplers._guard import Guarded
from ..schedules import DiscreteVP, m_sigma_from_log_snr, ve_levels
from ..streams import SampleStreams

__all__ = [
    "PeerRun",
    "Peer",
    "DiffusersPeer",
    "KDiffusionPeer",
    "peers_for",
    "load_kdiffusion",
    "kdiffusion_denoiser",
    "DIFFUSERS_SCHEDULERS",
    "KDIFFUSION_SAMPLERS",
    "KDIFFUSION_INSTALL",
    "diffusers_peer",
    "eps_network",
]

#: Peer name -> diffusers scheduler class.
DIFFUSERS_SCHEDULERS = {
    "DDPM": "DDPMScheduler",
    "DDIM": "DDIMScheduler",
    "DPMSolverMultistep": "DPMSolverMultistepScheduler",
    "UniPC": "UniPCMultistepScheduler",
    "Euler": "EulerDiscreteScheduler",
    "Heun": "HeunDiscreteScheduler",
    "LMS": "LMSDiscreteScheduler",
    "EulerAncestral": "EulerAncestralDiscreteScheduler",
}
#: k-diffusion samplers (``k_diffusion.sampling.sample_<name>``).
KDIFFUSION_SAMPLERS = ("euler", "heun", "lms", "dpmpp_2m", "dpmpp_2m_sde", "euler_ancestral")
#: Methods that spend two evaluations per step, one on the last step (to sigma = 0).
_TWO_PER_STEP = {"Heun", "heun"}
#: Methods that need at least two steps (k-diffusion 0.1.1's sample_dpmpp_2m_sde reads an unset variable on one).
_MIN_TWO_STEPS = {"dpmpp_2m_sde"}
#: The shell command that installs what :func:`load_kdiffusion` needs, without torchvision or another torch.
KDIFFUSION_INSTALL = "pip install --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 torchdiffeq==0.2.5 trampoline==0.1.2"
KARRAS_RHO = 7.0


# ----------------------------------------------------------------------------- results and peers


@dataclass
class PeerRun:
    """One peer run: ``samples`` (n, *model.shape) float32 on the CPU; ``nfe`` model evaluations per trajectory,
    counted by scoregen's guard around the model; ``wall_time`` seconds of sampling (the scheduler's or grid's
    setup and the loop, not the initial noise draw, as in :func:`scoregen.sample`); ``options`` in words;
    ``steps`` the steps taken; ``seed``."""

    samples: Tensor
    nfe: int
    wall_time: float
    options: str
    steps: int = 0
    seed: int = 0


@dataclass
class Peer:
    """A sampler of another library that can sample a scoregen model: ``library`` ("diffusers" or "k-diffusion"),
    ``name`` (e.g. "DPMSolverMultistep", "dpmpp_2m karras") and ``config`` (JSON-able: everything needed to
    reproduce it, including the library's version and what was changed from its defaults)."""

    library: str
    name: str
    config: dict

    @property
    def label(self) -> str:
        """``library:name``, unique among :func:`peers_for`'s peers."""
        return f"{self.library}:{self.name}"

    @property
    def min_nfe(self) -> int:
        """The smallest budget the peer runs at (k-diffusion's ``dpmpp_2m_sde`` fails on a one-step grid: 2)."""
        return 2 if self._method in _MIN_TWO_STEPS else 1

    def steps_for(self, nfe: int) -> int:
        """The steps spending as much of ``nfe`` model evaluations as the method allows without exceeding it.
        A budget below :attr:`min_nfe` is a ValueError."""
        nfe = check_int("nfe (the budget of model evaluations)", nfe)
        if nfe < self.min_nfe:
            raise ValueError(f"{self.label} needs a budget of at least {self.min_nfe} model evaluations, got {nfe}")
        return (nfe + 1) // 2 if self._method in _TWO_PER_STEP else nfe

    def nfe_for(self, steps: int) -> int:
        """Model evaluations of ``steps`` steps (Heun: ``2 steps - 1``)."""
        return 2 * steps - 1 if self._method in _TWO_PER_STEP else steps

    @property
    def _method(self) -> str:
        return self.name.split(" ")[0]

    def run(self, nfe: int, n: int, seed: int, *, y=None) -> PeerRun:
        """``n`` samples at a budget of ``nfe`` model evaluations per trajectory; same seed, same samples.
        ``y``: class labels for a conditional model (an int, or integers of shape (n,)), passed to ``model.eps``."""
        raise NotImplementedError


def _check_run(nfe: int, n: int, seed: int) -> tuple[int, int, int]:
    return (check_int("nfe (the budget of model evaluations)", nfe), check_int("n", n),
            check_int("seed", seed, 0, 2**63 - 1))


def _global_seed(seed: int) -> int:
    """A seed for torch's global generator, distinct from ``seed`` (whose generator draws the initial noise)."""
    return (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**63


def initial_noise(seed: int, n: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """The float32 initial noise :func:`scoregen.sample` draws for samples 0..n-1 of a run with ``seed``."""
    return SampleStreams(seed, 0, n, shape, device=device, dtype=torch.float32).normal()


class _forked_global_rng:
    """Run with torch's global generator seeded from ``seed`` and restored afterwards."""

    def __init__(self, seed: int, device: torch.device):
        self._fork = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
        self._seed = _global_seed(seed)

    def __enter__(self):
        self._fork.__enter__()
        torch.manual_seed(self._seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def _finished(x: Tensor, guarded: Guarded, who: str) -> Tensor:
    guarded.finish()
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(
            f"peer {who} produced NaN or inf although every model evaluation returned finite values ({guarded.nfe} of "
            "them): its own update diverged; give it a larger budget")
    return x.detach().to(device="cpu", dtype=torch.float32)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _label_levels(schedule: DiscreteVP, labels: Sequence[float]) -> tuple[list[float], list[float]]:
    """``(m, sigma)`` of time labels of the schedule (fractional labels: log-SNR interpolated), float64."""
    m, sigma = m_sigma_from_log_snr(np.asarray(schedule.log_snr(np.asarray(labels, dtype=np.float64))), True)
    return np.atleast_1d(m).tolist(), np.atleast_1d(sigma).tolist()


def _installed(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (a finder that refuses it counts as not installed)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _model_kind(model: ScoreModel) -> str:
    return type(model).__name__


# ----------------------------------------------------------------------------- diffusers


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


@dataclass
class DiffusersPeer(Peer):
    """A diffusers scheduler driving the model in a pipeline's loop (see the module docstring)."""

    model: Optional[ScoreModel] = field(default=None, repr=False, compare=False)
    scheduler_class: str = ""
    scheduler_kwargs: dict = field(default_factory=dict, repr=False)
    device: str = "cpu"

    def steps_for(self, nfe: int) -> int:
        return min(super().steps_for(nfe), len(self.model.schedule))

    def make_scheduler(self):
        """A fresh scheduler (schedulers keep per-run state: step index, past model outputs)."""
        import diffusers

        return getattr(diffusers, self.scheduler_class)(**self.scheduler_kwargs)

    def run(self, nfe: int, n: int, seed: int, *, y=None) -> PeerRun:
        nfe, n, seed = _check_run(nfe, n, seed)
        model, schedule, device = self.model, self.model.schedule, torch.device(self.device)
        steps = self.steps_for(nfe)
        labels = None if y is None else class_labels(y, n, device, who="y: ")
        scheduler = self.make_scheduler()
        step_kwargs = {"return_dict": False}
        g = torch.Generator(device).manual_seed(seed)
        if "generator" in inspect.signature(scheduler.step).parameters:
            step_kwargs["generator"] = g
        z = initial_noise(seed, n, model.shape, device)
        guarded = Guarded(model, self.label, _model_kind(model), z)
        start = time.perf_counter()
        with torch.no_grad(), _forked_global_rng(seed, device):
            scheduler.set_timesteps(steps, device=device)
            timesteps = scheduler.timesteps
            ks = timesteps.double().cpu().tolist()
            m, sigma = _label_levels(schedule, [k + schedule.first_index for k in ks])
            prepare_levels(guarded, sigma, m)
            x = z * scheduler.init_noise_sigma
            for i, t in enumerate(timesteps):
                x_in = scheduler.scale_model_input(x, t)
                eps = guarded.eps(x_in, sigma[i], m[i], labels)
                x = scheduler.step(eps, t, x, **step_kwargs)[0]
            samples = _finished(x, guarded, self.label)
        wall = time.perf_counter() - start
        return PeerRun(samples, guarded.nfe, wall, f"steps={steps}", steps, seed)


def _diffusers_peer(model: ScoreModel, name: str, data_range, overrides: Optional[dict]) -> DiffusersPeer:
    import diffusers

    cls_name = DIFFUSERS_SCHEDULERS[name]
    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise ImportError(f"diffusers {diffusers.__version__} has no {cls_name}")
    schedule: DiscreteVP = model.schedule
    T = len(schedule)
    defaults = dict(cls().config)
    kwargs: dict = {"num_train_timesteps": T, "trained_betas": schedule.beta.tolist(), "prediction_type": "epsilon"}
    clip_ok = data_range is not None and float(data_range[0]) >= -1.0 and float(data_range[1]) <= 1.0
    if not clip_ok:
        for key in ("clip_sample", "thresholding"):
            if key in defaults:
                kwargs[key] = False
    kwargs.update(overrides or {})
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ValueError(f"{cls_name} has no option(s) {unknown}")
    built = cls(**kwargs)
    full = {k: v for k, v in dict(built.config).items() if not k.startswith("_")}
    betas_note = f"the model's {T} betas (config['schedule'])"
    full["trained_betas"] = betas_note
    changed = {k: (betas_note if k == "trained_betas" else full[k]) for k in kwargs if full.get(k) != defaults.get(k)}
    why = {}
    if "clip_sample" in changed or "thresholding" in changed:
        why["clipping"] = ("off: data_range is None" if data_range is None else
                           f"off: data_range {tuple(data_range)} is not within [-1, 1]")
    config = {
        "library": "diffusers",
        "version": _diffusers_version(),
        "scheduler": cls_name,
        "scheduler_config": _jsonable(full),
        "changed": _jsonable(changed),
        "why": why,
        "schedule": schedule.to_config(),
        "timestep_to_label": f"label = k + {schedule.first_index} (diffusers counts k = 0..{T - 1})",
        "model_call": "eps = model.eps(scheduler.scale_model_input(x, t), sigma_t, m_t, y) at label t + first_index, "
                      "(m_t, sigma_t) = (sqrt(abar), sqrt(1 - abar)) from the model's schedule",
        "initial_noise": "init_noise_sigma * scoregen's per-sample initial noise of the seed",
        "evals_per_step": "2, one on the last step" if name in _TWO_PER_STEP else "1",
        "max_steps": T,
    }
    return DiffusersPeer("diffusers", name, config, model=model, scheduler_class=cls_name, scheduler_kwargs=kwargs)


# ----------------------------------------------------------------------------- k-diffusion loading

_KD_LOCK = threading.Lock()
_KD: Optional[types.ModuleType] = None
_KD_PACKAGE = "_scoregen_k_diffusion"


class _MissingTorchvision(types.ModuleType):
    """Stands in for ``torchvision.transforms.functional`` while k-diffusion's ``utils.py`` loads: only its image
    helpers ``from_pil_image`` / ``to_pil_image`` use it, and scoregen never calls them."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"torchvision.transforms.functional.{attr}: torchvision is not installed (scoregen loads "
                          "k-diffusion's samplers without it; k_diffusion.utils' image helpers need it)")


def _exec_submodule(package: types.ModuleType, folder: str, name: str) -> types.ModuleType:
    full = f"{package.__name__}.{name}"
    spec = importlib.util.spec_from_file_location(full, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(full, None)
        raise
    setattr(package, name, module)
    return module


def load_kdiffusion() -> types.ModuleType:
    """k-diffusion's ``sampling`` and ``external`` modules without its package ``__init__`` (which imports
    torchvision, kornia, wandb, ...): returns a package module with ``.sampling``, ``.external``, ``.utils`` and
    ``.__version__``.

    The files are the installed package's own (``importlib.util.spec_from_file_location``), executed under a
    private package name (``_scoregen_k_diffusion``, a stub package whose ``__path__`` is the installed folder), so
    ``import k_diffusion`` elsewhere still gets the real package. ``sampling.py`` imports ``utils.py``, which imports
    ``torchvision.transforms.functional`` for two image helpers only; when torchvision is not already imported, a
    stub stands in for it while ``utils.py`` runs (and is removed from ``sys.modules`` afterwards), whose
    attributes raise ImportError. If the real ``k_diffusion`` package is already imported, it is returned instead.

    Raises ImportError naming what is missing (the install command is :data:`KDIFFUSION_INSTALL`).
    """
    global _KD
    with _KD_LOCK:
        if _KD is not None:
            return _KD
        real = sys.modules.get("k_diffusion")
        if real is not None and hasattr(real, "sampling") and hasattr(real, "external"):
            real.__version__ = getattr(real, "__version__", None) or importlib.metadata.version("k-diffusion")
            _KD = real
            return real
        spec = importlib.util.find_spec("k_diffusion") if _installed("k_diffusion") else None
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"k-diffusion is not installed; install it with: {KDIFFUSION_INSTALL}")
        folder = list(spec.submodule_search_locations)[0]
        missing = [m for m in ("scipy", "torchdiffeq", "torchsde", "trampoline", "tqdm", "PIL", "safetensors")
                   if not _installed(m)]
        if missing:
            raise ImportError(f"k-diffusion's samplers need {missing}, which are not installed; install with: "
                              f"{KDIFFUSION_INSTALL}")
        package = types.ModuleType(_KD_PACKAGE, "k-diffusion's sampling and external modules, loaded by scoregen")
        package.__path__ = [folder]
        package.__spec__ = importlib.machinery.ModuleSpec(_KD_PACKAGE, None, is_package=True)
        package.__spec__.submodule_search_locations = [folder]
        package.__version__ = importlib.metadata.version("k-diffusion")
        sys.modules[_KD_PACKAGE] = package
        stubs = {}
        if "torchvision.transforms.functional" not in sys.modules:
            functional = _MissingTorchvision("torchvision.transforms.functional")
            transforms = sys.modules.get("torchvision.transforms") or types.ModuleType("torchvision.transforms")
            stubs = {"torchvision.transforms.functional": functional}
            if "torchvision.transforms" not in sys.modules:
                transforms.functional = functional
                stubs["torchvision.transforms"] = transforms
            if "torchvision" not in sys.modules:
                root = types.ModuleType("torchvision")
                root.transforms = transforms
                stubs["torchvision"] = root
        try:
            sys.modules.update(stubs)
            try:
                _exec_submodule(package, folder, "utils")
            finally:
                for name, module in stubs.items():
                    if sys.modules.get(name) is module:
                        del sys.modules[name]
            _exec_submodule(package, folder, "sampling")
            _exec_submodule(package, folder, "external")
        except BaseException:
            for name in [k for k in sys.modules if k == _KD_PACKAGE or k.startswith(_KD_PACKAGE + ".")]:
                del sys.modules[name]
            raise
        _KD = package
        return package


# ----------------------------------------------------------------------------- k-diffusion wrappers

_CACHED_CLASSES: dict[int, type] = {}


def _cached_denoiser_class(kd: types.ModuleType) -> type:
    """``DiscreteEpsDDPMDenoiser`` whose ``sigma_to_t`` looks each distinct sigma up once per call."""
    cls = _CACHED_CLASSES.get(id(kd.external))
    if cls is not None:
        return cls
    base = kd.external.DiscreteEpsDDPMDenoiser

    class CachedDiscreteEpsDDPMDenoiser(base):
        """k-diffusion's ``DiscreteEpsDDPMDenoiser`` with the sigma -> t lookup done once per distinct sigma.

        The stock lookup compares every sample's sigma with all trained sigmas (a (T, batch) table per call:
        about 190 ms at T = 1000, batch 8192, one CPU thread); k-diffusion's samplers pass one sigma for the whole batch. Each
        column of the stock computation depends on its own sigma only, so looking up the distinct sigmas and
        gathering gives bit-identical labels."""

        def sigma_to_t(self, sigma, quantize=None):
            if sigma.ndim != 1 or sigma.shape[0] < 2:
                return super().sigma_to_t(sigma, quantize)
            first = sigma[:1]
            if bool((sigma == first).all()):
                return super().sigma_to_t(first, quantize).expand(sigma.shape[0]).contiguous()
            distinct, inverse = torch.unique(sigma, return_inverse=True)
            return super().sigma_to_t(distinct, quantize)[inverse]

    _CACHED_CLASSES[id(kd.external)] = CachedDiscreteEpsDDPMDenoiser
    return CachedDiscreteEpsDDPMDenoiser


def eps_network(model: ScoreModel) -> Callable[..., Tensor]:
    """The model as a DDPM eps network ``inner(x, t, y=None)`` for ``DiscreteEpsDDPMDenoiser``: ``t`` (B,) positions
    in the schedule's ``alphas_cumprod`` (label ``t + first_index``), ``x`` in VP coordinates. The model is asked at
    that label's level (m, sigma) from its own float64 schedule; fractional positions interpolate log-SNR."""
    schedule = model.schedule
    if not isinstance(schedule, DiscreteVP):
        raise ValueError(f"an eps network for DiscreteEpsDDPMDenoiser needs a DiscreteVP schedule, not {schedule!r}")
    m_arr, s_arr = _label_levels(schedule, schedule.labels)
    first_index = schedule.first_index

    def inner(x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        tt = t.reshape(-1)
        if bool((tt == tt[0]).all()):
            k = tt[0].item()
            if float(k).is_integer():
                return model.eps(x, s_arr[int(k)], m_arr[int(k)], y)
            m, s = _label_levels(schedule, [k + first_index])
            return model.eps(x, s[0], m[0], y)
        m, s = _label_levels(schedule, (tt.double().cpu().numpy() + first_index).tolist())
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=x.device)  # noqa: E731
        return model.eps(x, as_t(s), as_t(m), y)

    return inner


def kdiffusion_denoiser(model: ScoreModel, *, cached: bool = True, kd: Optional[types.ModuleType] = None):
    """k-diffusion's ``DiscreteEpsDDPMDenoiser(eps_network(model), alphas_cumprod, quantize=True)`` for a DiscreteVP
    model, ``alphas_cumprod`` its abar in float32; ``cached=True``: the subclass that looks each distinct sigma up
    once per call (bit-identical to the stock wrapper, ``cached=False``)."""
    kd = load_kdiffusion() if kd is None else kd
    cls = _cached_denoiser_class(kd) if cached else kd.external.DiscreteEpsDDPMDenoiser
    abar = torch.as_tensor(np.asarray(model.schedule.abar), dtype=torch.float32)
    return cls(eps_network(model), abar, quantize=True)


@dataclass
class KDiffusionPeer(Peer):
    """A k-diffusion sampler on its wrapper's grid or on the Karras grid (see the module docstring)."""

    model: Optional[ScoreModel] = field(default=None, repr=False, compare=False)
    sampler: str = ""
    grid: str = "wrapper"  # "wrapper" or "karras"
    cached: bool = True  # DiscreteVP models: the cached sigma lookup (False: k-diffusion's stock wrapper)
    device: str = "cpu"

    def _denoiser(self, kd, guarded: Guarded):
        if isinstance(self.model.schedule, DiscreteVP):
            return kdiffusion_denoiser(guarded, cached=self.cached, kd=kd).to(self.device)
        from ..interop.export import denoiser

        return denoiser(guarded)

    def sigmas(self, steps: int, kd=None, wrapper=None) -> Tensor:
        """The grid of ``steps`` sigmas, then 0."""
        kd = load_kdiffusion() if kd is None else kd
        if self.grid == "wrapper":
            wrapper = kdiffusion_denoiser(self.model, kd=kd) if wrapper is None else wrapper
            return wrapper.get_sigmas(steps)
        smin, smax = self.config["sigma_min"], self.config["sigma_max"]
        return kd.sampling.get_sigmas_karras(steps, smin, smax, rho=KARRAS_RHO)

    def run(self, nfe: int, n: int, seed: int, *, y=None) -> PeerRun:
        nfe, n, seed = _check_run(nfe, n, seed)
        kd = load_kdiffusion()
        model, device = self.model, torch.device(self.device)
        steps = self.steps_for(nfe)
        labels = None if y is None else class_labels(y, n, device, who="y: ")
        fn = getattr(kd.sampling, f"sample_{self.sampler}")
        g = torch.Generator(device).manual_seed(seed)
        z = initial_noise(seed, n, model.shape, device)
        guarded = Guarded(model, self.label, _model_kind(model), z)
        start = time.perf_counter()
        with torch.no_grad(), _forked_global_rng(seed, device):
            wrapper = self._denoiser(kd, guarded)
            sigmas = self.sigmas(steps, kd, wrapper if self.grid == "wrapper" else None).to(device)
            self._prepare(guarded, wrapper, sigmas)
            x = z * sigmas[0]
            kwargs: dict = {"disable": True, "extra_args": {} if labels is None else {"y": labels}}
            if self.sampler == "euler_ancestral":
                kwargs["noise_sampler"] = lambda sigma, sigma_next: torch.randn(x.shape, generator=g, device=device, dtype=x.dtype)
            elif self.sampler == "dpmpp_2m_sde":
                positive = sigmas[sigmas > 0]
                tree_seed = int(torch.randint(0, 2**62, (1,), generator=g, device=device).item())
                kwargs["noise_sampler"] = kd.sampling.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=tree_seed)
            with warnings.catch_warnings():
                # torchsde notes float32 rounding of the tree's end (sigmas.max()) on the first query: harmless
                warnings.filterwarnings("ignore", message="Should have tb<=t1", category=UserWarning)
                x = fn(wrapper, x, sigmas, **kwargs)
            samples = _finished(x, guarded, self.label)
        wall = time.perf_counter() - start
        return PeerRun(samples, guarded.nfe, wall, f"steps={steps}" + (" karras" if self.grid == "karras" else ""), steps, seed)

    def _prepare(self, guarded: Guarded, wrapper, sigmas: Tensor) -> None:
        """Declare the levels the run will query (the grid's nonzero sigmas), as scoregen's samplers do."""
        s = sigmas[sigmas > 0]
        if isinstance(self.model.schedule, DiscreteVP):
            ks = wrapper.sigma_to_t(s).double().cpu().numpy()
            m, sig = _label_levels(self.model.schedule, (ks + self.model.schedule.first_index).tolist())
            prepare_levels(guarded, sig, m)
        else:
            prepare_levels(guarded, s.double().cpu().tolist(), 1.0)


def _sampler_defaults(fn: Callable) -> dict:
    skip = {"model", "x", "sigmas", "extra_args", "callback", "disable", "noise_sampler"}
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if k not in skip and p.default is not inspect.Parameter.empty}


def _kdiffusion_peer(model: ScoreModel, kd, sampler: str, grid: str) -> KDiffusionPeer:
    discrete = isinstance(model.schedule, DiscreteVP)
    if discrete:
        wrapper = kdiffusion_denoiser(model, kd=kd)
        smin, smax = float(wrapper.sigma_min), float(wrapper.sigma_max)
        how = ("external.DiscreteEpsDDPMDenoiser(inner, alphas_cumprod=float32(schedule abar), quantize=True), "
               "sigma lookup once per distinct sigma (bit-identical to the stock wrapper); inner(x, t) = "
               "model.eps(x, sigma_t, m_t) at label t + first_index")
    else:
        smax, smin = ve_levels(model.schedule)
        how = "scoregen.interop.export.denoiser(model): D(x, sigma) = x - sigma * eps(x, sigma) in VE coordinates"
    fn = getattr(kd.sampling, f"sample_{sampler}")
    name = sampler if grid == "wrapper" else f"{sampler} karras"
    noise = {"euler_ancestral": "noise_sampler: randn from the seeded generator, after the initial noise",
             "dpmpp_2m_sde": "BrownianTreeNoiseSampler(x, min positive sigma, max sigma, seed=randint(2**62) from the "
                             "seeded generator)"}.get(sampler, "none")
    config = {
        "library": "k-diffusion",
        "version": kd.__version__,
        "sampler": f"sampling.sample_{sampler}",
        "sampler_options": _jsonable(_sampler_defaults(fn)),
        "grid": "wrapper.get_sigmas(steps)" if grid == "wrapper" else f"sampling.get_sigmas_karras(steps, sigma_min, sigma_max, rho={KARRAS_RHO:g})",
        "grid_kind": grid,
        "sigma_min": smin,
        "sigma_max": smax,
        "wrapper": how,
        "schedule": model.schedule.to_config(),
        "initial_noise": "sigmas[0] * scoregen's per-sample initial noise of the seed",
        "noise": noise,
        "evals_per_step": "2, one on the last step" if sampler in _TWO_PER_STEP else "1",
        "changed": {},
    }
    return KDiffusionPeer("k-diffusion", name, config, model=model, sampler=sampler, grid=grid)


# ----------------------------------------------------------------------------- which peers


def _all_names() -> list[tuple[str, str]]:
    names = [("diffusers", n) for n in DIFFUSERS_SCHEDULERS]
    names += [("k-diffusion", s) for s in KDIFFUSION_SAMPLERS] + [("k-diffusion", f"{s} karras") for s in KDIFFUSION_SAMPLERS]
    return names


def _selected(names: Optional[Sequence[str]]) -> list[tuple[str, str]]:
    every = _all_names()
    if names is None:
        return every
    if isinstance(names, str):
        names = [names]
    out = []
    for want in names:
        hits = [(lib, n) for lib, n in every if want in (n, f"{lib}:{n}", lib)]
        if not hits:
            raise ValueError(f"unknown peer {want!r}; peers are {[f'{lib}:{n}' for lib, n in every]} "
                             "(a name, library:name, or a library: 'diffusers', 'k-diffusion')")
        out += [h for h in hits if h not in out]
    return [h for h in every if h in out]


def peers_for(model: ScoreModel, *, data_range: Optional[Sequence[float]] = None,
              names: Optional[Sequence[str]] = None) -> tuple[list[Peer], list[str]]:
    """The peers that can sample ``model``, and a human-readable reason for each one skipped.

    Args:
        model: a score model with a ``shape`` and a ``schedule``. diffusers' schedulers need a
            :class:`~scoregen.DiscreteVP` training schedule; k-diffusion takes a DiscreteVP model through
            ``DiscreteEpsDDPMDenoiser`` (both grids) and any other model as a VE denoiser (Karras grid only).
        data_range: ``(lo, hi)`` of the data; diffusers' clipping (``clip_sample``, ``thresholding``) stays at its
            defaults only when this lies within [-1, 1], and is turned off otherwise (also when None).
        names: which peers (default all): names ("DDIM", "dpmpp_2m karras"), ``library:name`` labels, or a library
            ("diffusers", "k-diffusion"). An unknown name is a ValueError.

    Returns:
        ``(peers, skipped)``: peers in a fixed order (diffusers' then k-diffusion's, wrapper grid then Karras), and
        reasons such as a library not installed or a schedule a peer cannot take.
    """
    if not getattr(model, "shape", None):
        raise ValueError("the model does not declare its sample shape; give it a `shape`")
    if data_range is not None:
        if len(data_range) != 2 or not all(math.isfinite(float(v)) for v in data_range) or not float(data_range[0]) < float(data_range[1]):
            raise ValueError(f"data_range must be (lo, hi) with finite lo < hi, got {data_range!r}")
    schedule = getattr(model, "schedule", None)
    wanted = _selected(names)
    peers: list[Peer] = []
    skipped: list[str] = []

    diff_names = [n for lib, n in wanted if lib == "diffusers"]
    if diff_names:
        if not _installed("diffusers"):
            skipped.append(f"diffusers ({', '.join(diff_names)}): diffusers is not installed (pip install 'diffusers>=0.25')")
        elif not isinstance(schedule, DiscreteVP):
            skipped.append(f"diffusers ({', '.join(diff_names)}): its schedulers take a discrete variance-preserving "
                           f"training schedule (betas); this model's schedule is {schedule!r}")
        else:
            for name in diff_names:
                try:
                    peers.append(_diffusers_peer(model, name, data_range, None))
                except (ImportError, ValueError, TypeError) as e:
                    skipped.append(f"diffusers {name}: {e}")

    kd_wanted = [n for lib, n in wanted if lib == "k-diffusion"]
    if kd_wanted:
        try:
            kd = load_kdiffusion()
        except ImportError as e:
            kd = None
            skipped.append(f"k-diffusion ({', '.join(kd_wanted)}): {e}")
        if kd is not None and schedule is None:
            skipped.append(f"k-diffusion ({', '.join(kd_wanted)}): the model has no schedule")
        elif kd is not None:
            discrete = isinstance(schedule, DiscreteVP)
            on_wrapper = [n for n in kd_wanted if " " not in n]
            if on_wrapper and not discrete:
                skipped.append(f"k-diffusion ({', '.join(on_wrapper)}) on the wrapper's own grid: that grid is "
                               f"DiscreteEpsDDPMDenoiser's, which needs a discrete VP schedule; this model's is "
                               f"{schedule!r} (its Karras-grid peers run through a VE denoiser)")
            for name in kd_wanted:
                sampler, grid = (name.split(" ")[0], "karras") if " " in name else (name, "wrapper")
                if grid == "wrapper" and not discrete:
                    continue
                if not hasattr(kd.sampling, f"sample_{sampler}"):
                    skipped.append(f"k-diffusion {name}: k-diffusion {kd.__version__} has no sample_{sampler}")
                    continue
                peers.append(_kdiffusion_peer(model, kd, sampler, grid))
    return peers, skipped


def diffusers_peer(model: ScoreModel, name: str, *, data_range: Optional[Sequence[float]] = None,
                   overrides: Optional[dict] = None) -> DiffusersPeer:
    """One diffusers peer (``name`` a key of :data:`DIFFUSERS_SCHEDULERS`), with scheduler options ``overrides``
    on top of :func:`peers_for`'s (e.g. ``{"timestep_spacing": "linspace"}``); they are listed in
    ``config["changed"]``."""
    if name not in DIFFUSERS_SCHEDULERS:
        raise ValueError(f"unknown diffusers peer {name!r}; choose from {list(DIFFUSERS_SCHEDULERS)}")
    if not isinstance(getattr(model, "schedule", None), DiscreteVP):
        raise ValueError(f"diffusers' schedulers need a DiscreteVP schedule, not {getattr(model, 'schedule', None)!r}")
    return _diffusers_peer(model, name, data_range, overrides)

