"""Memory before work: :func:`scoregen.sample` sizes its batches from an estimate made before it allocates anything.

The estimate for n samples of ``shape`` in ``dtype`` (itemsize bytes per number, D = prod(shape)):

* the result, ``n * D * itemsize``, which must fit in half of what is available;
* per sample in flight, :data:`STATE_COPIES` copies of the state (x, the noise buffer, eps and the temporaries
  of an update), what the model declares for one evaluation (``eval_bytes_per_sample(dtype)``, as exact
  mixtures do), and the activations of the networks in the model stack, measured by one forward pass on a
  single sample (:func:`activation_bytes`). A batch is sized to use at most a quarter of what is available.
"""

from __future__ import annotations

import math
import os
import warnings
import weakref
from typing import Optional

import torch
from torch import Tensor

from ..models import ScoreModel

#: Copies of the batch a sampler holds at once: x, the noise buffer, eps, and the temporaries of one update
#: (x0_hat, the scaled terms of the in-place update, the model's own input copy).
STATE_COPIES = 6

#: Attributes through which a model stack reaches the networks it evaluates: transforms' ``model``, network
#: adapters' ``net``, guidance's ``classifier`` and ``log_likelihood``, and a bound method's object.
_LINKS = ("model", "net", "classifier", "log_likelihood", "__self__")

#: The level of the probe pass. Any level a model answers will do: activations do not depend on it.
_PROBE_SIGMA = _PROBE_M = math.sqrt(0.5)


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes that can still be allocated on ``device``, or None where that is unknown (the estimate is skipped).

    CPU: ``MemAvailable`` from /proc/meminfo (Linux), else the available physical pages from ``os.sysconf``.
    CUDA: the driver's free memory plus what PyTorch's caching allocator holds but does not use.
    """
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return None


def _modules(model: object) -> list[torch.nn.Module]:
    """The ``torch.nn.Module``s a model stack holds, reached through :data:`_LINKS`."""
    found, seen, todo = [], set(), [model]
    while todo:
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.append(obj)
            continue
        todo.extend(getattr(obj, link, None) for link in _LINKS)
    return found


def activation_bytes(model: ScoreModel, dtype: torch.dtype, device: torch.device, y: Optional[Tensor], n: int = 1) -> int:
    """Bytes of network activations per sample: one evaluation of ``model`` on a single sample, with forward hooks
    summing the outputs of every submodule of the networks it holds (each tensor once).

    The pass runs as sampling does (under ``torch.no_grad``; guidance turns gradients on for its likelihood), and an
    output that requires grad counts twice: autograd keeps it for the backward pass, which makes a gradient of the
    same size. Its input comes from its own generator: the caller's is not touched. ``y``: the labels of the run,
    shape (n,), or None. A stack that cannot be evaluated on one sample (a likelihood holding one measurement per
    sample) is measured once on all n samples instead, which is no more than the run itself would allocate; if
    that fails too, a warning says the activations are left out of the estimate. 0 when the stack holds no module.
    """
    modules = _modules(model)
    if not modules:
        return 0
    # (address, size) -> the tensor counted there, weakly: a module returning its child's output (or a view of it)
    # is not new memory, while a later tensor at an address the allocator reused is
    alive: dict[tuple[int, int], weakref.ref] = {}
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        outs = output if isinstance(output, (tuple, list)) else (output,)
        for t in outs:
            if not isinstance(t, Tensor):
                continue
            key = (t.data_ptr(), t.numel())
            if key in alive and alive[key]() is not None:
                continue
            alive[key] = weakref.ref(t)
            total += t.numel() * t.element_size() * (2 if t.requires_grad else 1)

    hooks = [sub.register_forward_hook(count) for module in modules for sub in module.modules()]
    gen = torch.Generator(device).manual_seed(0)
    try:
        for batch in (1, n) if n > 1 else (1,):
            alive.clear()
            total = 0
            x = torch.randn((batch, *model.shape), generator=gen, device=device, dtype=dtype)
            try:
                with torch.no_grad():
                    model.eps(x, _PROBE_SIGMA, _PROBE_M, None if y is None else y[:batch])
                return math.ceil(total / batch)
            except Exception as e:  # noqa: BLE001  retried on all n, then reported: the run raises it, or succeeds
                error = e
    finally:
        for h in hooks:
            h.remove()
    warnings.warn(f"could not measure the network activations ({type(error).__name__}: {error}); the memory estimate "
                  "counts the sampler's state only: pass batch_size if the run needs less memory",
                  RuntimeWarning, stacklevel=5)
    return 0


def per_sample_bytes(model: ScoreModel, dtype: torch.dtype, device: torch.device, y: Optional[Tensor], n: int = 1) -> int:
    """Estimated bytes per sample in flight: :data:`STATE_COPIES` copies of the state, the model's declared
    ``eval_bytes_per_sample(dtype)`` (summed over the stack) and the networks' :func:`activation_bytes`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    declared, layer = 0, model
    while layer is not None:
        per_eval = getattr(layer, "eval_bytes_per_sample", None)
        declared += int(per_eval(dtype)) if callable(per_eval) else 0
        layer = getattr(layer, "model", None) if not isinstance(layer, torch.nn.Module) else None
    return STATE_COPIES * math.prod(model.shape) * itemsize + declared + activation_bytes(model, dtype, device, y, n)


def _size(nbytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"


def batch_size_for(n: int, model: ScoreModel, dtype: torch.dtype, device: torch.device, y: Optional[Tensor],
                   batch_size: Optional[int]) -> int:
    """The batch size for n samples, or a ValueError when the result cannot fit, or ``batch_size`` is estimated
    not to: the result must fit in half of :func:`available_memory`; a batch chosen here uses at most a quarter
    (at least 1 sample); an explicit ``batch_size`` is refused when result and batch exceed all of it.
    ``y``: the run's labels, shape (n,), or None. Nothing of size n is allocated before the result is known to fit."""
    available = available_memory(device)
    if available is None:
        return n if batch_size is None else min(batch_size, n)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shape = tuple(model.shape)
    result = n * math.prod(shape) * itemsize
    if result > available / 2:
        fits = max(1, int(available / 2 // (math.prod(shape) * itemsize)))
        raise ValueError(
            f"n = {n} samples of shape {shape} in {str(dtype).replace('torch.', '')} need {_size(result)} for the result "
            f"alone, more than half of the {_size(available)} available on {device}: draw fewer samples (n <= {fits}), "
            "in several runs with different seeds if you need more")
    per_sample = per_sample_bytes(model, dtype, device, y, n)
    fitting = max(1, min(n, int(available / 4 // per_sample)))
    if batch_size is None:
        return fitting
    if result + min(batch_size, n) * per_sample > available:
        raise ValueError(
            f"batch_size={batch_size} needs about {_size(min(batch_size, n) * per_sample)} ({_size(per_sample)} per sample: "
            f"the sampler's state and the networks' activations) on top of the {_size(result)} result, more than the "
            f"{_size(available)} available on {device}: use batch_size={fitting} or less (or batch_size=None to choose)")
    return min(batch_size, n)
