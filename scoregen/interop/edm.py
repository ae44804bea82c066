"""Load NVlabs/edm networks (Karras et al. 2022) as scoregen score models, without EDM's code and without
running anything in the file.

Two forms are read:

* an EDM snapshot ``network-snapshot-*.pkl`` (or a published ``edm-*.pkl``): ``pickle.dump(dict(ema=...,
  loss_fn=..., augment_pipe=..., dataset_kwargs=...))`` of EDM's training loop. The file is read by
  :func:`scoregen.io.pickles.load_pickle`, which never executes the module source EDM pickles alongside
  its networks: ``ema`` becomes an inert record holding the preconditioner's class name, the constructor
  arguments EDM records (``_init_kwargs``) and the tensors. A file holding anything else is refused with a
  message naming ``python -m scoregen.interop.edm_convert SNAPSHOT.pkl OUT_DIR``;
* the folder that command writes (``config.json`` + ``model.safetensors``, see
  :mod:`scoregen.interop.edm_convert`).

Either way the network is rebuilt as :mod:`scoregen.networks.edm`'s class of the same name (``VPPrecond``,
``VEPrecond``, ``iDDPMPrecond`` or ``EDMPrecond`` around a ``SongUNet`` or ``DhariwalUNet``), first on the meta
device to compare its state dict's names and shapes with the file's, then for real, and loaded strictly.
:func:`load_edm` wraps it as a :class:`~scoregen.interop.kdiffusion.DenoiserScoreModel`: ``eps = (x - D(x;
sigma)) / sigma`` in VE coordinates, over EDM's sampling range by default: ``[max(0.002, net.sigma_min),
min(80, net.sigma_max)]``, as EDM's ``generate.py`` clamps its sampler's defaults to the network's range
(``EDMPrecond``'s is [0, inf]: [0.002, 80]; ``VPPrecond``'s, about [0.001, 152] with EDM's defaults: also
[0.002, 80]), with integer class labels turned into the one-hot rows EDM's conditional networks take.

The file's contents are data from anyone: before the network is built its constructor arguments must be plain
values (numbers, strings, lists, dicts; at most :data:`MAX_ARGUMENT_ITEMS` values in all), and its skeleton,
built on the meta device, is stopped once it registers more than ``2 * n + 64`` tensors (parameters and
buffers) or twice as many submodules, ``n`` the number of tensors in the file. The network built for real
has exactly the file's tensors' names and shapes, and those tensors hold no more bytes than the file (see
:mod:`scoregen.io.pickles`), so its tensors (float32) hold at most 4 bytes per byte of the file.
"""

from __future__ import annotations

import inspect
import math
import os
import threading
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch

from .._checks import short
from ..io import MAX_CONFIG_BYTES, read_json
from ..io.pickles import CONVERT_COMMAND, MAX_PICKLE_BYTES, PickledRecord, bounded_repr, load_pickle, state_tensors
from ..io.tensors import tensor_mismatch
from ..networks.edm import PRECONDITIONERS, UNETS
from .edm_convert import CONFIG_FORMAT, CONFIG_NAME, WEIGHTS_NAME
from .kdiffusion import DenoiserScoreModel, from_denoiser, one_hot

__all__ = ["edm_network", "load_edm_network", "load_edm"]

PathLike = Union[str, "os.PathLike[str]"]

#: EDM's sampler defaults (generate.py), clamped to a network's own range: ``[max(EDM_SIGMA_MIN, net.sigma_min),
#: min(EDM_SIGMA_MAX, net.sigma_max)]``.
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0
#: Most values (nested ones counted each time they occur) in a snapshot's recorded constructor arguments.
MAX_ARGUMENT_ITEMS = 10_000


def edm_network(class_name: str, init_kwargs: Mapping[str, Any], init_args: tuple = ()) -> torch.nn.Module:
    """The preconditioner EDM would build as ``class_name(*init_args, **init_kwargs)``, with fresh weights.

    ``class_name`` is one of VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond; ``init_kwargs`` are EDM's
    constructor arguments (``model_type`` picks SongUNet or DhariwalUNet, the rest go to it). Unknown
    names and bad values raise a ValueError naming them. Build it under ``with torch.device("meta")`` to
    check a file's shapes without allocating anything.
    """
    if not isinstance(class_name, str) or class_name not in PRECONDITIONERS:
        raise ValueError(f"unknown EDM network class {short(class_name)}: scoregen reads EDM's preconditioners "
                         f"{sorted(PRECONDITIONERS)} around {sorted(UNETS)}")
    if not isinstance(init_kwargs, Mapping) or not all(isinstance(k, str) for k in init_kwargs):
        raise ValueError(f"{class_name}'s constructor arguments must be a mapping of names, got {short(init_kwargs)}")
    cls = PRECONDITIONERS[class_name]
    try:
        inspect.signature(cls).bind(*init_args, **init_kwargs)
    except TypeError as e:
        raise ValueError(f"EDM's {class_name} arguments {short(sorted(init_kwargs))} do not fit {class_name}: {e}") from None
    try:
        return cls(*init_args, **init_kwargs)
    except TypeError as e:  # an argument the U-Net does not take (EDM passes **model_kwargs through)
        raise ValueError(f"EDM's {class_name} arguments do not fit its network: {e}") from None


class _TooLarge(Exception):
    pass


def _registration_limit(limit: int) -> list:
    """Global torch.nn registration hooks that raise _TooLarge once this thread registers more than ``limit``
    tensors (parameters and buffers, None ones not counted) or ``2 * limit`` submodules; other threads are not
    counted. Returns their handles (remove them when done)."""
    owner, left = threading.get_ident(), {"tensors": limit, "modules": 2 * limit}

    def counter(kind: str) -> Any:
        def hook(module: Any, name: str, value: Any) -> None:
            if value is not None and threading.get_ident() == owner:
                left[kind] -= 1
                if left[kind] < 0:
                    raise _TooLarge(kind)
        return hook

    registry = torch.nn.modules.module
    hooks = [("register_module_parameter_registration_hook", "tensors"),
             ("register_module_buffer_registration_hook", "tensors"),
             ("register_module_module_registration_hook", "modules")]
    return [getattr(registry, name)(counter(kind)) for name, kind in hooks]


def _checked_network(class_name: str, init_kwargs: Any, init_args: tuple, shapes: Mapping[str, Any],
                     what: str) -> torch.nn.Module:
    """The network of the arguments, with fresh weights, once its skeleton (built on the meta device, no memory)
    has the names and shapes of ``shapes``, the file's tensors: else a ValueError naming the differences.

    The skeleton's build is stopped once it registers more than ``2 * len(shapes) + 64`` tensors (or twice
    that many submodules): arguments from a file cannot make it build a network much larger than the file's."""
    limit = 2 * len(shapes) + 64
    handles = _registration_limit(limit)
    try:
        with torch.device("meta"):
            skeleton = edm_network(class_name, init_kwargs, init_args)
    except _TooLarge as e:
        raise ValueError(f"{what} do not fit the {class_name} built from its recorded arguments: the file holds "
                         f"{len(shapes)} tensors, and the network registered more than "
                         f"{limit if str(e) == 'tensors' else 2 * limit} {e} before its build was stopped") from None
    except (RuntimeError, ArithmeticError, AssertionError, IndexError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{what}: the recorded arguments do not build a {class_name} ({type(e).__name__}: "
                         f"{str(e)[:160]})") from None
    finally:
        for handle in handles:
            handle.remove()
    problems = tensor_mismatch({k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, shapes)
    if problems:
        raise ValueError(f"{what} do not fit the {class_name} built from its recorded arguments: {'; '.join(problems)}")
    return edm_network(class_name, init_kwargs, init_args)


def _plain_arguments(value: Any, what: str) -> None:
    """Refuse constructor arguments that are not plain data of at most MAX_ARGUMENT_ITEMS values (memo-shared
    lists counted each time they occur), so that no later check or message of them can take long."""
    todo, count = [value], 0
    while todo:
        item = todo.pop()
        count += 1
        if count > MAX_ARGUMENT_ITEMS:
            raise ValueError(f"{what} hold more than {MAX_ARGUMENT_ITEMS} values: the file is damaged or hostile")
        if type(item) in (list, tuple):
            todo.extend(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif type(item) not in (str, int, float, bool, type(None)):
            raise ValueError(f"{what} hold a {type(item).__name__}; EDM records only numbers, strings, lists and dicts")


def _from_record(record: Any, path: str) -> torch.nn.Module:
    """The network of an EDM snapshot's ``ema`` record."""
    if not isinstance(record, PickledRecord) or record.kind != "persistent":
        raise ValueError(f"{path}: 'ema' is {bounded_repr(record)}, not one of EDM's persistent networks")
    class_name, state = record.name, record.state
    if class_name not in PRECONDITIONERS:
        raise ValueError(f"{path}: 'ema' is EDM's class {bounded_repr(class_name)}; scoregen reads the preconditioners "
                         f"{sorted(PRECONDITIONERS)}")
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: the {class_name} record's state is a {type(state).__name__}, not a dict: the file "
                         "is damaged")
    init_args, init_kwargs = state.get("_init_args"), state.get("_init_kwargs")
    if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, Mapping):
        raise ValueError(f"{path}: the {class_name} record has no constructor arguments (EDM records them unless "
                         f"_record_init_args is off); convert it with `{CONVERT_COMMAND}` after rebuilding it in EDM")
    _plain_arguments([init_args, init_kwargs], f"{path}: the {class_name} record's constructor arguments")
    modules = state.get("_modules")
    inner = modules.get("model") if isinstance(modules, Mapping) else None
    model_type = init_kwargs.get("model_type", inspect.signature(PRECONDITIONERS[class_name]).parameters["model_type"].default)
    if not isinstance(inner, PickledRecord) or inner.name != model_type:
        raise ValueError(f"{path}: the {class_name}'s network is {bounded_repr(getattr(inner, 'name', inner))}, but "
                         f"its arguments say model_type={bounded_repr(model_type)}")
    try:
        tensors = state_tensors(record)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    net = _checked_network(class_name, init_kwargs, tuple(init_args), {k: tuple(v.shape) for k, v in tensors.items()},
                           f"{path}: the 'ema' network's tensors")
    net.load_state_dict(tensors, strict=True)
    for name in ("sigma_min", "sigma_max", "sigma_data"):  # EDM keeps these as attributes: they must agree
        recorded = state.get(name)
        if type(recorded) in (int, float) and not _close(recorded, getattr(net, name)):
            raise ValueError(f"{path}: the snapshot's {name} = {recorded!r} disagrees with {getattr(net, name)!r} "
                             f"computed from its arguments")
    return net


def _close(recorded: Any, value: float) -> bool:
    try:
        return math.isclose(recorded, value, rel_tol=1e-6)
    except OverflowError:  # an int too large for a float
        return False


def _from_folder(directory: str) -> torch.nn.Module:
    """The network of a folder written by :mod:`scoregen.interop.edm_convert`."""
    from safetensors import SafetensorError, safe_open

    config = read_json(os.path.join(directory, CONFIG_NAME), MAX_CONFIG_BYTES, "an EDM network config")
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{directory}: {CONFIG_NAME} is not a converted EDM network (format {CONFIG_FORMAT!r}); "
                         f"write the folder with `{CONVERT_COMMAND}`")
    class_name, init_kwargs = config.get("class_name"), config.get("init_kwargs")
    weights = os.path.join(directory, WEIGHTS_NAME)
    try:
        with safe_open(weights, framework="pt") as f:  # the header's shapes first; tensors are read after the check
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            net = _checked_network(class_name, init_kwargs, (), shapes, f"{weights}: the tensors")
            net.load_state_dict({k: f.get_tensor(k) for k in f.keys()}, strict=True)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights}: not a readable safetensors file ({short(str(e), 160)})") from None
    return net


def load_edm_network(path: PathLike, *, device: Union[str, torch.device] = "cpu",
                     max_bytes: int = MAX_PICKLE_BYTES) -> torch.nn.Module:
    """The preconditioned EDM network (:mod:`scoregen.networks.edm`) of a snapshot ``.pkl`` (its ``ema``
    entry) or of a converted folder, in eval mode on ``device``: ``net(x, sigma, class_labels)`` -> D(x; sigma).

    ``max_bytes`` caps the size of a ``.pkl`` read. Raises ValueError for anything that is not such a file,
    an unknown network class, or tensors that do not fit the recorded arguments (naming the keys).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _from_folder(path).eval().requires_grad_(False).to(device)
    data = load_pickle(path, max_bytes=max_bytes)
    if not isinstance(data, Mapping) or "ema" not in data:
        keys = sorted(map(str, data))[:6] if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"{path}: {keys} is not an EDM snapshot, a dict with the network under 'ema' "
                         "(training/training_loop.py)")
    return _from_record(data["ema"], path).eval().requires_grad_(False).to(device)


def load_edm(path: PathLike, *, device: Union[str, torch.device] = "cpu", sigma_min: Optional[float] = None,
             sigma_max: Optional[float] = None, max_bytes: int = MAX_PICKLE_BYTES) -> DenoiserScoreModel:
    """An EDM snapshot ``.pkl`` or converted folder as a scoregen score model (see the module docstring).

    Args:
        path: ``network-snapshot-*.pkl`` (read without running anything), or the folder
            ``python -m scoregen.interop.edm_convert`` wrote.
        device: where the network lives.
        sigma_min, sigma_max: the VE range queries are clamped to and samplers' default grids span; default
            EDM's sampling range, as EDM's ``generate.py`` computes it: ``max(0.002, net.sigma_min)`` and
            ``min(80, net.sigma_max)``, EDM's sampler defaults clamped to the network's range (with EDM's
            default arguments: [0.002, 80] for EDMPrecond and VPPrecond, [0.02, 80] for VEPrecond, about
            [0.0064, 80] for iDDPMPrecond). A value passed is used as given.
        max_bytes: the largest ``.pkl`` read.

    Returns:
        a :class:`DenoiserScoreModel` of shape (img_channels, img_resolution, img_resolution); for a network
        with ``label_dim`` > 0, ``y`` (integer labels of shape (B,)) is passed as one-hot rows, and a call
        without ``y`` gets EDM's all-zero labels.
    """
    net = load_edm_network(path, device=device, max_bytes=max_bytes)
    lo = sigma_min if sigma_min is not None else max(EDM_SIGMA_MIN, float(net.sigma_min))
    hi = sigma_max if sigma_max is not None else min(EDM_SIGMA_MAX, float(net.sigma_max))
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    return from_denoiser(net, shape, lo, hi, label_map=one_hot(net.label_dim) if net.label_dim else None)
