"""How many of the n samples :func:`scoregen.sample` draws at once, decided before it allocates anything.

Per sample in flight a run holds :data:`STATE_COPIES` copies of the state, what the model stack declares for one
evaluation (:meth:`scoregen.ScoreModel.eval_bytes_per_sample`) and the activations of the networks it holds,
measured by one forward pass on a single sample (:func:`scoregen.memory.activation_bytes`).

The default batch is as many samples as fit in :data:`DEFAULT_BATCH_BYTES`, a constant: samples depend on the
batch size, so a batch taken from the machine's free memory would make the same seed give other samples on a
busy machine. Whatever the batch, the result and one batch must fit in what is available
(:func:`scoregen.memory.available_memory`); otherwise the run is refused with a batch size that fits.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..memory import activation_bytes, available_memory, format_bytes
from ..models import ScoreModel, declared_bytes
from ._common import warn_at_caller

#: Copies of the batch a sampler holds at once: x, the noise buffer, eps, the copy of x each model evaluation
#: gets, and the temporaries of one update (x0_hat, the scaled terms of the in-place update).
STATE_COPIES = 6

#: The memory a default batch may use (2 GiB). Fixed, so that the batch (and so the samples) depends on the model,
#: n, the shape and the dtype alone, never on the machine's load. 2 GiB leaves room for the result on the smallest
#: machines scoregen targets (an 8 GB laptop or GPU), and is far beyond where larger batches stop paying off in
#: per-step overhead: ring2d runs up to 7.9 million samples in one batch, gmm64 770 000, the 8x8 digits UNet 4600.
DEFAULT_BATCH_BYTES = 2 * 2**30

#: Attributes through which a model stack reaches the networks it evaluates: transforms' ``model``, network
#: adapters' ``net``, guidance's ``classifier`` and ``log_likelihood``, and a bound method's object.
_LINKS = ("model", "net", "classifier", "log_likelihood", "__self__")

#: The level of the probe pass. Any level a model answers will do: activations do not depend on it.
_PROBE_SIGMA = _PROBE_M = math.sqrt(0.5)


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


def _activations_per_sample(model: ScoreModel, dtype: torch.dtype, device: torch.device, y: Optional[Tensor]) -> int:
    """Bytes of network activations for one sample: one evaluation of ``model`` on a single sample, as sampling runs
    it (under ``torch.no_grad``; guidance turns gradients on for its likelihood). 0 when the stack holds no module.

    The input comes from its own generator (the caller's is not touched). A stack that cannot be evaluated on one
    sample (a likelihood holding one measurement per sample) is not measured on more: that would allocate what the
    estimate exists to prevent. A warning says the estimate then counts the state only.
    """
    modules = _modules(model)
    if not modules:
        return 0
    x = torch.randn((1, *model.shape), generator=torch.Generator(device).manual_seed(0), device=device, dtype=dtype)

    def probe() -> None:
        with torch.no_grad():
            model.eps(x, _PROBE_SIGMA, _PROBE_M, None if y is None else y[:1])

    try:
        return activation_bytes(modules, probe)
    except Exception as e:  # noqa: BLE001  reported: the run itself raises it again, or succeeds
        warn_at_caller(f"could not measure the network activations on one sample ({type(e).__name__}: {e}); the "
                       "memory estimate counts the sampler's state only: pass batch_size (--batch-size) if the run "
                       "needs less memory", RuntimeWarning)
        return 0


def per_sample_bytes(model: ScoreModel, dtype: torch.dtype, device: torch.device, y: Optional[Tensor],
                     extra: int = 0) -> int:
    """Estimated bytes per sample in flight: :data:`STATE_COPIES` copies of the state, ``extra`` (a sampler's own
    state beyond them, e.g. an adaptive solver's float64 stages), the stack's declared ``eval_bytes_per_sample(dtype)``
    and its networks' activations. ``y``: the run's labels, shape (n,), or None."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (STATE_COPIES * math.prod(model.shape) * itemsize + extra + declared_bytes(model, dtype)
            + _activations_per_sample(model, dtype, device, y))


def batch_size_for(n: int, model: ScoreModel, dtype: torch.dtype, device: torch.device, y: Optional[Tensor],
                   batch_size: Optional[int], extra: int = 0) -> int:
    """The batch size for n samples: ``batch_size`` (at most n), or by default as many as fit in
    :data:`DEFAULT_BATCH_BYTES` (at least 1). A ValueError when the result alone takes more than half of what is
    available (draw fewer samples), or the result and one batch more than all of it (with a batch size that fits).
    ``y``: the run's labels, shape (n,), or None; ``extra``: a sampler's own state per sample, in bytes
    (:func:`per_sample_bytes`). Nothing of size n is allocated here."""
    available = available_memory(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shape = tuple(model.shape)
    result = n * math.prod(shape) * itemsize
    if available is not None and result > available / 2:
        fits = max(1, int(available / 2 // (math.prod(shape) * itemsize)))
        raise ValueError(
            f"n = {n} samples of shape {shape} in {str(dtype).replace('torch.', '')} need {format_bytes(result)} for the "
            f"result alone, more than half of the {format_bytes(available)} available on {device}: draw fewer samples "
            f"(n <= {fits}), in several runs with different seeds if you need more")
    if batch_size is not None and available is None:  # nothing to check it against: no need to probe the model
        return min(n, batch_size)
    per_sample = per_sample_bytes(model, dtype, device, y, extra)
    batch = min(n, max(1, DEFAULT_BATCH_BYTES // max(per_sample, 1)) if batch_size is None else batch_size)
    if available is not None and result + batch * per_sample > available:
        fits = int((available - result) // per_sample)
        remedy = (f"pass batch_size={fits} or less (--batch-size {fits} on the command line)" if fits >= 1 else
                  "even one sample at a time does not fit beside the result: draw fewer samples, or free memory")
        what = f"batch_size={batch_size}" if batch_size is not None else \
            f"the default batch of {batch} samples (as many as fit in {format_bytes(DEFAULT_BATCH_BYTES)})"
        raise ValueError(
            f"{what} needs about {format_bytes(batch * per_sample)} ({format_bytes(per_sample)} per sample: the "
            f"sampler's state, the model's temporaries and its networks' activations) on top of the "
            f"{format_bytes(result)} result, more than the {format_bytes(available)} available on {device}: {remedy}")
    return batch
