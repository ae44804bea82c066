"""Scale out on torch.distributed: what every command does differently when started by ``torchrun``.

``torchrun --nproc_per_node K -m scoregen COMMAND ...`` starts K copies of the same command, each with the environment
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (across machines:
``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``). :func:`setup` reads them, joins the process group
(gloo on CPU, nccl on GPUs) and picks each rank's device; a command started without torchrun gets a one-process
context and never touches torch.distributed. Each rank then works on its share of the indices (:func:`shard`, or
the one-process batches: :func:`scoregen.batch_ranges`), and rank 0 gathers the per-sample results.

Results do not depend on the split: sample i's random draws are a function of (seed, i) alone
(:mod:`scoregen.streams`), so a rank that samples indices [a, b) produces exactly the rows [a, b) of the
one-process result.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar, Union

import torch

from .errors import ScoregenError

T = TypeVar("T")

__all__ = ["Context", "launched", "setup", "teardown", "shard", "all_reduce_sum", "all_reduce_max", "barrier", "on_main",
           "default_device"]

#: How long a collective waits for the other ranks before the job fails (a rank that died is reported by torchrun
#: first; this bounds a rank that hangs).
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Context:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine, its ``device``,
    and the process group's ``backend`` (None without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets ``WORLD_SIZE`` and ``RANK``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _env_int(name: str, default: Optional[int] = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise RuntimeError(f"torchrun sets {name}, but it is missing from the environment")
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"the environment variable {name} must be an integer, got {value!r}") from None


def default_device(local_rank: int = 0) -> torch.device:
    """``cuda:LOCAL_RANK`` where CUDA is available (one GPU per process), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: Union[str, torch.device, None] = None) -> Context:
    """This process's :class:`Context`; under torchrun, join the process group first (once).

    ``device``: where this rank computes (``--device``); default :func:`default_device` of its ``LOCAL_RANK``. The
    backend follows the device: nccl for CUDA, gloo otherwise.
    """
    import torch.distributed as dist

    if not launched():
        return Context(device=torch.device(device) if device is not None else default_device())
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK {rank} is outside 0..WORLD_SIZE-1 ({world - 1})")
    dev = torch.device(device) if device is not None else default_device(local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Context(rank, world, local, dev, backend if world > 1 else None)


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The indices ``[start, stop)`` of ``n`` that rank ``rank`` of ``world_size`` takes: contiguous, in rank order (so
    concatenating the ranks' shards gives 0..n-1), sizes as equal as they can be."""
    def cut(r: int) -> int:
        return n if r >= world_size else n * r // world_size

    return cut(rank), cut(rank + 1)


def all_reduce_sum(values: torch.Tensor, context: Context) -> torch.Tensor:
    """``values`` summed over the ranks (a copy; float64 sums on CPU tensors go through gloo, on CUDA through nccl).
    Without torchrun, ``values`` itself."""
    return _all_reduce(values, context, "SUM")


def all_reduce_max(values: torch.Tensor, context: Context) -> torch.Tensor:
    """``values``' elementwise maximum over the ranks (a copy); without torchrun, ``values`` itself."""
    return _all_reduce(values, context, "MAX")


def _all_reduce(values: torch.Tensor, context: Context, op: str) -> torch.Tensor:
    if not context.distributed:
        return values
    import torch.distributed as dist

    out = values.detach().clone().to(context.device if context.backend == "nccl" else "cpu")
    dist.all_reduce(out, op=getattr(dist.ReduceOp, op))
    return out.to(values.device)


def barrier(context: Context) -> None:
    """Wait for every rank (no-op without torchrun)."""
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()


def teardown() -> None:
    """Leave the process group, if this process joined one (the command line does it when a command ends)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def on_main(context: Context, action: Callable[[], T], what: str) -> Optional[T]:
    """Run ``action`` on rank 0 only, while the other ranks wait; then every rank learns whether it succeeded, so
    that a failure on rank 0 (a folder in use, a full disk) stops every rank with a message instead of leaving
    them waiting. Rank 0 re-raises its own error; the others raise :class:`~scoregen.errors.ScoregenError`.
    Returns ``action()``'s value on rank 0, None elsewhere (and ``action()`` itself without torchrun)."""
    if not context.distributed:
        return action()
    failure: Optional[BaseException] = None
    result = None
    if context.is_main:
        try:
            result = action()
        except BaseException as e:  # noqa: B902 - told to every rank first, then re-raised
            failure = e
    failed = all_reduce_sum(torch.tensor([0.0 if failure is None else 1.0], dtype=torch.float64), context)
    if failure is not None:
        raise failure
    if failed.item():
        raise ScoregenError(f"rank 0 failed to {what} (its error says why); rank {context.rank} stops too")
    return result
