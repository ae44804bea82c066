"""Data-parallel training under ``torchrun``: how the global batch is cut, drawn and shared out among the ranks.

``torchrun --standalone --nproc_per_node W -m scoregen train ... --batch-size B`` trains one model with W processes (ranks),
each a :class:`~torch.nn.parallel.DistributedDataParallel` replica of the network (gloo on CPU, nccl on GPUs; see
:mod:`scoregen.distributed`). ``B`` is the *global* batch: every optimizer step averages the loss over B samples in
all, each rank computing B / W of them (B must be a multiple of W).

**The batch scheme ("chunks").** A step's global batch is cut into K chunks of B / K samples (K = W for a run that
starts under torchrun; K is recorded in the checkpoint's trainer state and in ``meta.distributed``). Chunk j of step
s draws everything random — its B / K sample indices (uniform with replacement, as the one-process trainer does),
its noise levels and noise, its label dropout, and the global generator's draws such as dropout — from its own
generators, seeded from ``SeedSequence([seed, s, j])`` (:func:`chunk_seeds`). Rank r of W computes the chunks
``shard(K, r, W)`` (K / W consecutive chunks: one chunk per rank when K = W), accumulating their gradients; DDP
then averages the gradients over the ranks, so every rank steps with the gradient of the mean loss over all K
chunks. The ranks' minibatches are independent draws (different chunks, different streams), not copies. Every
rank holds the whole data set (what is sharded is each step's batch, not the data), so no sampler state exists.

**Identical on every rank.** The initial weights (DDP broadcasts rank 0's), the averaged gradient, gradient
clipping, AdamW's state, the LR schedule, the EMA and the running loss (the loss is summed across ranks before it
is reported) are the same on all ranks at every step; only rank 0 writes checkpoints (holding the folder's lock;
the other ranks never take it) and the others wait for it.

**Resume across world sizes.** Since a step's draws are a function of (seed, step, chunk) alone, no per-rank RNG
state has to survive a restart, and any world size W' that divides K continues *the same* trajectory: a
checkpoint written by 2 ranks (K = 2) resumed by one process computes both chunks itself and takes the same steps
(equal up to the order of floating-point sums; bit for bit in practice on CPU when W and K are powers of two).
If W' does not divide K, the run continues with K = W' from the checkpoint's step on (a note says so): well
defined and reproducible, but no longer the steps the old world size would have taken.

**One process without torchrun** trains exactly as it always has: one generator for the whole batch, its state in
the checkpoint (``chunks`` absent), so a resume is bit for bit an uninterrupted run. Such a checkpoint resumed by W
> 1 ranks switches to K = W chunks from its step on; a one-process run can also opt into chunks
(``train(..., chunks=K)``) to reproduce a W-rank run in one process.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import numpy as np
from torch import nn

from ..distributed import Context, on_main, shard

__all__ = ["chunk_seeds", "rank_chunks", "resolve_chunks", "Replica", "check_global_batch"]


def check_global_batch(batch_size: int, world_size: int) -> None:
    """Refuse a global batch that does not split evenly over the ranks."""
    if batch_size % world_size:
        lo = batch_size // world_size * world_size
        hint = f"{lo} or {lo + world_size}" if lo else f"{world_size}"
        raise ValueError(f"--batch-size (TrainConfig.batch_size) {batch_size} is the global batch, split evenly over "
                         f"the {world_size} processes: it must be a multiple of {world_size} (e.g. {hint})")


def chunk_seeds(seed: int, step: int, chunk: int) -> tuple[int, int]:
    """The two 63-bit seeds of chunk ``chunk`` of step ``step``: its own generator's (indices, noise levels, noise,
    label dropout) and the global generator's (dropout inside the network), from ``SeedSequence([seed, step, chunk])``."""
    a, b = np.random.SeedSequence([int(seed), int(step), int(chunk)]).generate_state(2, dtype=np.uint64)
    return int(a >> 1), int(b >> 1)


def rank_chunks(chunks: int, rank: int, world_size: int) -> range:
    """The chunks rank ``rank`` of ``world_size`` computes: its :func:`~scoregen.distributed.shard` of them, here
    ``chunks / world_size`` consecutive ones (the world size divides ``chunks``)."""
    return range(*shard(chunks, rank, world_size))


def resolve_chunks(saved: Optional[int], requested: Optional[int], world_size: int, batch_size: int,
                   resumed: bool) -> tuple[Optional[int], Optional[str]]:
    """``(K, note)``: the number of chunks this run cuts each global batch into (None: the one-process scheme, one
    generator for the whole batch), and a note when a resume changes the checkpoint's scheme.

    ``saved``: the checkpoint's K (None for a one-process checkpoint or a fresh run); ``requested``: ``train(...,
    chunks=...)``. A fresh run: ``requested``, else ``world_size`` under torchrun with W > 1, else None. A resume
    keeps ``saved`` when W divides it (the same trajectory), else takes ``requested`` or W."""
    check_global_batch(batch_size, world_size)
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"chunks must be a positive integer, got {requested!r}")
        if requested % world_size or batch_size % requested:
            raise ValueError(f"chunks={requested} must be a multiple of the {world_size} processes and divide the "
                             f"global batch of {batch_size}")
    if not resumed:
        return (requested if requested is not None else (world_size if world_size > 1 else None)), None
    if requested is not None and requested != saved:
        return requested, (f"the checkpoint's batches were drawn {_scheme(saved)}; from here on they are drawn as "
                           f"{requested} chunks (as asked)")
    if saved is None:
        if world_size == 1:
            return None, None
        return world_size, (f"the checkpoint was trained by one process (one generator for the whole batch, whose "
                            f"state a {world_size}-process run cannot share); from here on each step's batch is drawn "
                            f"as {world_size} chunks, one per process: reproducible, but not the batches a "
                            "one-process resume would draw")
    if saved % world_size == 0 and batch_size % saved == 0:
        return saved, None
    return world_size, (f"the checkpoint's batches were drawn as {saved} chunks, which {world_size} processes cannot "
                        f"share evenly; from here on they are drawn as {world_size} chunks (resume with a world size "
                        f"that divides {saved} to continue the same trajectory)")


def _scheme(chunks: Optional[int]) -> str:
    return "from one generator" if chunks is None else f"as {chunks} chunks"


class Replica:
    """The network as the loss functions see it: calls go through the DDP wrapper (so that backward averages the
    gradients across ranks), attributes (``schedule``, ``num_classes``, ...) are the network's own."""

    def __init__(self, ddp: nn.Module, net: nn.Module):
        self._ddp, self._net = ddp, net

    def __call__(self, *args, **kwargs):
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("_ddp", "_net"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._net, name)


@contextlib.contextmanager
def lock_on_main(context: Context, lock: Callable[[], contextlib.AbstractContextManager]):
    """Hold ``lock()`` on rank 0 only for the ``with`` block (the other ranks never take it: the folder's lock is
    non-blocking and one per folder); the other ranks enter the block once rank 0 holds it."""
    with contextlib.ExitStack() as stack:
        on_main(context, lambda: stack.enter_context(lock()), "lock the checkpoint folder")
        yield
