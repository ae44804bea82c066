"""Load NCSNv2 checkpoints written by the original code (ermongroup/ncsnv2) into :class:`~scoregen.NCSNv2`.

The original training run leaves two files that together describe a model:

* a YAML config (``configs/<dataset>.yml``, or the copy ``main.py`` writes next to the checkpoints as
  ``<exp>/logs/<doc>/config.yml``; that copy is an ``argparse.Namespace`` dumped by PyYAML, so its mappings
  carry ``!!python/object:argparse.Namespace`` tags, which are read here as plain mappings and never
  instantiated). The keys used: ``data.dataset`` (selects the network class), ``data.image_size``,
  ``data.channels``, ``data.logit_transform``, ``data.rescaled``, ``model.ngf``, ``model.sigma_begin``,
  ``model.sigma_end``, ``model.num_classes``, ``model.sigma_dist``, ``model.normalization`` and
  ``model.nonlinearity``;
* ``checkpoint_<step>.pth``: ``torch.save`` of the list ``[state_dict, optimizer_state, epoch, step]``,
  with a fifth entry, the EMA helper's shadow, when ``model.ema`` was on. ``state_dict`` comes from the
  ``nn.DataParallel`` wrapper, so every key starts with ``module.``, and includes the ``sigmas`` buffer;
  the shadow maps the inner module's parameter names (no prefix, no ``sigmas``) to averaged weights,
  which the original code samples with.

Conventions of the returned network: inputs are images of shape (B, data.channels, image_size, image_size)
in [0, 1] (``centered=False``), or in [-1, 1] when the config says ``data.rescaled: true``
(``centered=True``); ``net(x, t)`` takes NCSN labels t = 0 .. num_classes - 1, 0 being sigma_begin, and
returns the score ``h(x) / sigma_t``; its schedule is the config's sigmas, largest first: geometric
(``model.sigma_dist: geometric``, every published config) or evenly spaced (``uniform``), as the original
``get_sigmas`` builds them.

Sampling as the original does. The original's annealed Langevin loop starts from uniform noise images, not from
the Gaussian prior: :func:`ncsnv2_initial_state` draws that state, for
``scoregen.sample(net.score_model(), "langevin", x_start=ncsnv2_initial_state(net, n, seed=0), ...)``.

Files are read with ``torch.load(..., weights_only=True)`` (:func:`scoregen.io.safe_torch_load`, memory-mapped
when the file allows): a checkpoint that holds anything other than tensors and plain containers is refused
rather than unpickled. The config is checked first (sizes within the bounds below), the network is built on
the meta device (no memory) and compared with the checkpoint's tensors, and only then built for real, so an
edited config cannot allocate gigabytes before it is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np
import torch

from .._checks import check_int, check_real
from ..io import MAX_CONFIG_BYTES, read_capped, safe_torch_load
from ..io.tensors import tensor_mismatch
from ..models import innermost
from ..networks.ncsnv2 import VARIANTS, NCSNv2
from ..schedules import MAX_LEVELS, DiscreteVE

__all__ = ["ncsnv2_config", "ncsnv2_network", "load_ncsnv2", "ncsnv2_initial_state", "SIGMA_DISTS"]

PathLike = Union[str, "os.PathLike[str]"]

#: The network class the original ``get_model`` builds for each ``data.dataset`` (exact, case-sensitive names).
DATASET_VARIANTS = {"CIFAR10": "ncsnv2", "CELEBA": "ncsnv2", "LSUN": "deeper", "FFHQ": "deepest"}
_PREFIX = "module."
_NAMESPACE_TAG = "tag:yaml.org,2002:python/object:argparse.Namespace"
#: The largest value each integer key may take (published configs: image_size 32..256, channels 3, ngf 128,
#: num_classes 232..2000): far beyond any real model, small enough that a config never asks for terabytes.
LIMITS = {"data.image_size": 4096, "data.channels": 64, "model.ngf": 2048, "model.num_classes": MAX_LEVELS}
#: The ``model.sigma_dist`` values of the original ``get_sigmas``: log-spaced or evenly spaced levels.
SIGMA_DISTS = ("geometric", "uniform")


# ------------------------------------------------------------------------------------------------ config
def _yaml():
    try:
        import yaml
    except ImportError:
        raise ImportError("reading NCSNv2 YAML configs needs PyYAML: pip install 'scoregen[ncsnv2]'") from None
    return yaml


def ncsnv2_config(path: PathLike) -> dict:
    """The YAML config of an original NCSNv2 run as nested plain dicts (``{"data": {...}, "model": {...}, ...}``).

    Reads both the hand-written ``configs/*.yml`` and the ``config.yml`` that ``main.py`` dumps next to the
    checkpoints (its ``argparse.Namespace`` tags become dicts; no other Python tag is accepted, since the
    loader is PyYAML's safe loader).
    """
    yaml = _yaml()

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_constructor(_NAMESPACE_TAG, lambda loader, node: loader.construct_mapping(node, deep=True))
    data = read_capped(path, MAX_CONFIG_BYTES, "an NCSNv2 YAML config")
    try:
        config = yaml.load(data, Loader=_Loader)
    except (yaml.YAMLError, RecursionError) as e:
        raise ValueError(f"{os.fspath(path)}: not a YAML file the safe loader accepts: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{os.fspath(path)}: an NCSNv2 config is a mapping with 'data' and 'model' sections, "
                         f"got {type(config).__name__}")
    return config


def _section(config: Mapping, name: str) -> Mapping:
    section = config.get(name)
    if not isinstance(section, Mapping):
        raise ValueError(f"the NCSNv2 config has no '{name}' section (a mapping); is this an ermongroup/ncsnv2 config?")
    return section


def _get(config: Mapping, key: str) -> Any:
    section, name = key.split(".")
    values = _section(config, section)
    if name not in values:
        raise ValueError(f"the NCSNv2 config is missing {key} (the original code reads it to build the network)")
    return values[name]


def _int(config: Mapping, key: str) -> int:
    """The integer ``key`` ("section.name"), in 1 .. LIMITS[key]."""
    return check_int(key, _get(config, key), 1, LIMITS[key])


def _positive_real(config: Mapping, key: str) -> float:
    """The positive number ``key``; PyYAML reads "1e-2" (no dot) as a string, so numeric strings count."""
    value = _get(config, key)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass  # refused below, as it was written
    return check_real(key, value, 0.0, lo_open=True)


def _flag(config: Mapping, key: str) -> bool:
    value = _get(config, key)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _reference_sigmas(config: Mapping) -> np.ndarray:
    """The original ``get_sigmas``: L = num_classes levels from sigma_begin down to sigma_end (float64), log-spaced
    (``geometric``) or evenly spaced (``uniform``)."""
    dist = _get(config, "model.sigma_dist")
    if dist not in SIGMA_DISTS:
        raise ValueError(f"model.sigma_dist {dist!r} is not supported: the original get_sigmas knows {list(SIGMA_DISTS)}")
    begin, end = _positive_real(config, "model.sigma_begin"), _positive_real(config, "model.sigma_end")
    levels = _int(config, "model.num_classes")
    if not begin > end:
        raise ValueError(f"model.sigma_begin ({begin:g}) must be larger than model.sigma_end ({end:g})")
    if dist == "uniform":
        return np.linspace(begin, end, levels)
    return np.exp(np.linspace(np.log(begin), np.log(end), levels))


def ncsnv2_network(config: Union[Mapping, PathLike], *, variant: Optional[str] = None) -> NCSNv2:
    """The :class:`NCSNv2` (fresh weights) that the original code builds from ``config`` (a path or a dict
    from :func:`ncsnv2_config`).

    ``variant`` overrides the choice by ``data.dataset`` (CIFAR10 / CELEBA: ``"ncsnv2"``, LSUN:
    ``"deeper"``, FFHQ: ``"deepest"``). Raises ValueError for a missing key or an option scoregen's
    NCSNv2 does not implement (logit-transformed inputs, a sigma_dist other than geometric or uniform, a
    normalization other than InstanceNorm++, a nonlinearity other than ELU).
    """
    if not isinstance(config, Mapping):
        config = ncsnv2_config(config)
    if variant is None:
        dataset = _get(config, "data.dataset")
        if dataset not in DATASET_VARIANTS:
            raise ValueError(f"unknown data.dataset {dataset!r}: the original code builds NCSNv2 for CIFAR10 and CELEBA, "
                             f"NCSNv2Deeper for LSUN, NCSNv2Deepest for FFHQ; pass variant= (one of {VARIANTS})")
        variant = DATASET_VARIANTS[dataset]
    elif variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if _flag(config, "data.logit_transform"):
        raise ValueError("data.logit_transform: true is not supported: scoregen's NCSNv2 takes pixels in [0, 1] "
                         "(or [-1, 1] with data.rescaled), not logit-transformed ones")
    centered = _flag(config, "data.rescaled")  # the original centres x with 2x - 1 unless the data are rescaled
    norm = _get(config, "model.normalization")
    if norm != "InstanceNorm++":
        raise ValueError(f"model.normalization {norm!r} is not supported: scoregen's NCSNv2 implements InstanceNorm++")
    act = _get(config, "model.nonlinearity")
    if not isinstance(act, str) or act.lower() != "elu":
        raise ValueError(f"model.nonlinearity {act!r} is not supported: scoregen's NCSNv2 uses ELU")
    return NCSNv2(
        image_size=_int(config, "data.image_size"),
        in_channels=_int(config, "data.channels"),
        schedule=DiscreteVE(_reference_sigmas(config)),
        ngf=_int(config, "model.ngf"),
        variant=variant,
        centered=centered,
    )


# -------------------------------------------------------------------------------------------- checkpoint
def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _split(obj: Any, path: str) -> tuple[Mapping, Optional[Mapping]]:
    """``(model state, EMA shadow or None)`` from the original list layout, or a bare state dict."""
    layout = "the original layout [state_dict, optimizer, epoch, step] plus the EMA shadow when model.ema was on"
    if isinstance(obj, (list, tuple)):
        if len(obj) not in (4, 5):
            raise ValueError(f"{path}: a list of {len(obj)} entries; expected {layout} (4 or 5 entries)")
        if not _is_state_dict(obj[0]):
            raise ValueError(f"{path}: entry 0 must be the model's state_dict (names -> tensors), "
                             f"got {type(obj[0]).__name__}; expected {layout}")
        if len(obj) == 5 and not _is_state_dict(obj[4]):
            raise ValueError(f"{path}: entry 4 must be the EMA shadow (parameter names -> tensors), "
                             f"got {type(obj[4]).__name__}; expected {layout}")
        return obj[0], (obj[4] if len(obj) == 5 else None)
    if isinstance(obj, Mapping):
        if obj and _is_state_dict(obj):
            return obj, None
        keys = sorted(map(str, obj))[:6]
        raise ValueError(f"{path}: a dict with keys {keys} that is not a state_dict (names -> tensors); "
                         f"expected {layout}, or a bare state_dict")
    raise ValueError(f"{path}: got a {type(obj).__name__}; expected {layout}, or a bare state_dict")


def _strip(state: Mapping) -> dict:
    """Drop DataParallel's ``module.`` prefix when every key has it."""
    if state and all(k.startswith(_PREFIX) for k in state):
        return {k[len(_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def _check(expected: Mapping[str, torch.Size], got: Mapping[str, torch.Tensor], what: str, net: NCSNv2) -> None:
    """Raise a ValueError naming missing / unexpected keys and shape mismatches of ``got`` against ``expected``."""
    built = (f"the NCSNv2 built from the config (variant {net.variant!r}, ngf {net.begin_conv.out_channels}, "
             f"{net.shape[0]} channels)")
    problems = tensor_mismatch(expected, {k: v.shape for k, v in got.items()})
    if problems:
        raise ValueError(f"{what} does not fit {built}: {'; '.join(problems)}. Is this the checkpoint's own config "
                         "(data.dataset or variant, model.ngf, data.channels)?")


def load_ncsnv2(checkpoint_path: PathLike, config_path: Union[PathLike, Mapping], *, ema: bool = True,
                variant: Optional[str] = None, device: Union[str, torch.device] = "cpu") -> NCSNv2:
    """An original NCSNv2 checkpoint as a scoregen :class:`NCSNv2`, in eval mode on ``device``.

    Args:
        checkpoint_path: a ``checkpoint*.pth`` of ermongroup/ncsnv2 (the list layout described in the module
            docstring), or a bare state dict (``module.`` prefix optional; without a ``sigmas`` entry the
            config's sigmas are used).
        config_path: the run's YAML config (path), or a dict from :func:`ncsnv2_config`.
        ema: take the EMA shadow weights (what the original code samples with) when the checkpoint has them;
            False, or a checkpoint without them (``model.ema: false``), gives the raw training weights.
        variant: override the network class chosen from ``data.dataset`` (see :func:`ncsnv2_network`).
        device: where the returned network lives.

    The ``sigmas`` buffer is built from the config (as the original ``get_sigmas``); when the checkpoint's
    model state has one, it must agree with the config's (relative tolerance 1e-5), else ValueError.
    Loading is strict: a missing or unexpected key, or a shape mismatch, raises a ValueError that names it.
    """
    path = os.fspath(checkpoint_path)
    config = config_path if isinstance(config_path, Mapping) else ncsnv2_config(config_path)
    with torch.device("meta"):  # the config's network, checked against the file before any weight is allocated
        skeleton = ncsnv2_network(config, variant=variant)
    model_state, shadow = _split(safe_torch_load(path, path, mmap=True), path)
    model_state = _strip(model_state)
    for state in (model_state, shadow or {}):
        spectral = [k for k in state if k.endswith((".weight_orig", ".weight_u", ".weight_v"))]
        if spectral:
            raise ValueError(f"{path}: spectrally normalised weights ({spectral[0]}, ...) are not supported: scoregen's "
                             "NCSNv2 has plain convolutions")

    expected = torch.tensor(np.asarray(skeleton.schedule.sigmas), dtype=torch.float32).double()  # the buffer's values
    loaded = model_state.get("sigmas")
    if loaded is not None:
        if loaded.ndim != 1 or loaded.numel() != expected.numel() or \
                not torch.allclose(loaded.double(), expected, rtol=1e-5, atol=0.0):
            got = (f"{loaded.numel()} levels from {float(loaded.flatten()[0]):.6g} to {float(loaded.flatten()[-1]):.6g}"
                   if loaded.numel() else "no levels")
            raise ValueError(
                f"{path}: the checkpoint's sigmas ({got}) disagree with the config's ({expected.numel()} levels from "
                f"{float(expected[0]):.6g} to {float(expected[-1]):.6g}: model.sigma_begin, model.sigma_end, "
                "model.num_classes); use the config the checkpoint was trained with"
            )

    if ema and shadow is not None:
        shadow = _strip(shadow)
        _check({k: p.shape for k, p in skeleton.named_parameters()}, shadow, f"{path}: the EMA shadow (entry 4)", skeleton)
    else:
        state = dict(model_state)
        _check({k: v.shape for k, v in skeleton.state_dict().items()}, {"sigmas": skeleton.sigmas, **state},
               f"{path}: the model state_dict", skeleton)
    net = ncsnv2_network(config, variant=variant)
    if ema and shadow is not None:
        state = {**net.state_dict(), **shadow}  # parameters from the shadow; the sigmas buffer from the config
    else:
        state.setdefault("sigmas", net.sigmas)
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


# ---------------------------------------------------------------------------------------------- sampling
def ncsnv2_initial_state(net_or_model: Any, n: int, seed: Optional[int] = None,
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The state the original NCSNv2 sampler starts annealed Langevin dynamics from: uniform noise images.

    The original draws ``torch.rand(n, C, H, W)`` (pixels uniform in [0, 1]) and applies its ``data_transform``,
    which maps them to ``2x - 1`` when ``data.rescaled`` is on; scoregen's prior would instead start from
    N(0, sigma_max^2). The dequantization flags that ``data_transform`` also reads are off in every published
    config and are not applied.

    Args:
        net_or_model: an :class:`~scoregen.NCSNv2` (e.g. from :func:`load_ncsnv2`), or its score model
            (``net.score_model()``, possibly wrapped in guidance or hooks).
        n: the number of images, an integer >= 1.
        seed / generator: the source of the draw, one or the other (neither: torch's global generator, as the
            original does); a generator must be on the network's device.

    Returns: a float32 tensor of shape (n, C, H, W) on the network's device, in the network's input range
    ([0, 1], or [-1, 1] for a ``centered`` network). Pass it as
    ``scoregen.sample(model, "langevin", n=n, x_start=state, final_denoise=True, step_lr=..., steps_per_level=...)``:
    without ``start_level``, ``x_start`` is the state at the grid's first level, here sigma_begin (langevin's
    default grid on this model is exactly the trained sigmas).
    """
    net = innermost(net_or_model)
    net = getattr(net, "net", net)  # a NetworkScoreModel holds the network
    if not isinstance(net, NCSNv2):
        raise ValueError(f"ncsnv2_initial_state needs an NCSNv2 network or its score model, got {type(net_or_model).__name__}")
    n = check_int("n", n)
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    device = net.sigmas.device
    if seed is not None:
        generator = torch.Generator(device).manual_seed(check_int("seed", seed, 0, 2**63 - 1))
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device} but the network is on {device}: "
                         f"make it with torch.Generator({str(device)!r})")
    x = torch.rand((n, *net.shape), generator=generator, device=device, dtype=torch.float32)
    return 2.0 * x - 1.0 if net.centered else x
