"""The training loop: AdamW, linear warmup, gradient clipping, EMA, periodic checkpoints, exact resume; under
``torchrun``, data-parallel (DistributedDataParallel) with the global batch shared out among the ranks
(:mod:`scoregen.training.distributed`)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Optional

import torch
from torch import Tensor, nn

from .._checks import check_int, check_real, short
from .._progress import progress as progress_bar
from ..distributed import Context, all_reduce_sum, launched, on_main
from ..distributed import setup as setup_distributed
from ..io import checkpoint_lock, load_trainer_state, read_checkpoint_config, save_checkpoint
from ..io.checkpoints import CONFIG_NAME, load_weights
from ..memory import activation_bytes, available_memory, format_bytes
from .distributed import Replica, check_global_batch, chunk_seeds, lock_on_main, rank_chunks, resolve_chunks
from .objectives import (check_hybrid_network, classifier_loss, ddpm_loss, drop_labels, hybrid_loss, judge_loss,
                         ncsn_loss)

__all__ = ["TrainConfig", "train", "OBJECTIVES"]

#: What :class:`TrainConfig` can train (``scoregen train --objective``).
OBJECTIVES = ("ddpm", "hybrid", "ncsn", "classifier", "judge")


@dataclass
class TrainConfig:
    """Everything that determines a training run besides the network and the data.

    objective: ``ddpm`` (L_simple on a DiscreteVP network), ``hybrid`` (Nichol & Dhariwal's L_simple + 0.001 L_vlb on
    a DiscreteVP eps network with learned variance channels, :func:`~scoregen.training.hybrid_loss`), ``ncsn``
    (denoising score matching on a DiscreteVE network), ``classifier`` (cross-entropy on noised inputs) or ``judge``
    (cross-entropy of a clean-image classifier on randomly shifted clean images, :func:`~scoregen.training.judge_loss`).
    ``label_dropout`` > 0 trains a class-conditional network for classifier-free guidance (labels dropped to its null
    label).

    bins (``hybrid`` only): the number of evenly spaced values the data takes in [-1, 1] (17 for the digits, 256 for
    8-bit images): the bound's decoder term is then Ho et al.'s discretised Gaussian; None (default): a Gaussian
    density, for continuous data. Data not on those values is refused at the first step.
    """

    objective: Literal["ddpm", "hybrid", "ncsn", "classifier", "judge"]
    steps: int
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    label_dropout: float = 0.0
    seed: int = 0
    bins: Optional[int] = None

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}, got {self.objective!r}")
        # As plain int / float: a numpy number would not survive json.dump into the checkpoint.
        self.steps = check_int("TrainConfig.steps", self.steps)
        self.batch_size = check_int("TrainConfig.batch_size", self.batch_size)
        self.checkpoint_every = check_int("TrainConfig.checkpoint_every", self.checkpoint_every)
        self.warmup = check_int("TrainConfig.warmup", self.warmup, 0)
        self.seed = check_int("TrainConfig.seed", self.seed, 0, 2**63 - 1)  # torch.manual_seed's range
        self.lr = check_real("TrainConfig.lr", self.lr, 0.0, lo_open=True)
        self.weight_decay = check_real("TrainConfig.weight_decay", self.weight_decay, 0.0)
        self.grad_clip = check_real("TrainConfig.grad_clip", self.grad_clip, 0.0, lo_open=True)
        self.ema_decay = check_real("TrainConfig.ema_decay", self.ema_decay, 0.0, 1.0, hi_open=True)
        self.label_dropout = check_real("TrainConfig.label_dropout", self.label_dropout, 0.0, 1.0, hi_open=True)
        if self.bins is not None:
            if self.objective != "hybrid":
                raise ValueError(f"TrainConfig.bins sets the decoder of the hybrid objective's bound; objective "
                                 f"{self.objective!r} has none: leave bins=None")
            self.bins = check_int("TrainConfig.bins (the number of data values, >= 2)", self.bins, 2)


def _loss_fn(config: TrainConfig, net: nn.Module) -> Callable[[Tensor, Optional[Tensor], torch.Generator], Tensor]:
    if config.objective in ("classifier", "judge"):
        clean = getattr(net, "schedule", None) is None  # a judge sees clean images: no noise levels
        if not hasattr(net, "num_classes") or getattr(net, "parameterization", None) is not None \
                or clean != (config.objective == "judge"):
            raise ValueError(f"objective {config.objective!r} needs a " + ("clean-image classifier network (e.g. "
                             "CNNClassifier)" if config.objective == "judge" else "noise-conditional classifier network "
                             "(e.g. MLPClassifier)"))
        if clean:
            return lambda x0, y, g: judge_loss(net, x0, _need_labels(y), g)
        return lambda x0, y, g: classifier_loss(net, net.schedule, x0, _need_labels(y), g)
    if config.objective == "hybrid":
        check_hybrid_network(net)  # before the memory probe: the reason, not a shape error
        loss = lambda n, x0, **kw: hybrid_loss(n, x0, bins=config.bins, **kw)  # noqa: E731
    elif getattr(net, "learned_variance", False):
        raise ValueError(f"objective {config.objective!r} does not train variance channels; this network has them "
                         "(learned_variance=True): use objective 'hybrid'")
    else:
        loss = ddpm_loss if config.objective == "ddpm" else ncsn_loss
    conditional = getattr(net, "num_classes", None) is not None
    if config.label_dropout and not conditional:
        raise ValueError("label_dropout trains classifier-free guidance: it needs a class-conditional network (num_classes=...)")

    def fn(x0, y, g):
        if not conditional:
            return loss(net, x0, generator=g)
        y = _need_labels(y)
        if config.label_dropout:
            y = drop_labels(y, config.label_dropout, net.null_label, g)
        return loss(net, x0, y=y, generator=g)

    return fn


_EXTENDABLE = ("steps", "checkpoint_every")
#: TrainConfig fields added after checkpoints were written without them, with the value such a checkpoint trained with.
_ADDED_FIELDS = {"bins": None}


def _as_json(value):
    """As it reads back from config.json (tuples become lists), for comparing with a checkpoint."""
    return json.loads(json.dumps(value))


def _need_labels(y: Optional[Tensor]) -> Tensor:
    if y is None:
        raise ValueError("this objective needs class labels, but the data has none")
    return y


@torch.no_grad()
def _ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)


def _data_fingerprint(x: Tensor, y: Optional[Tensor]) -> dict:
    """What identifies training data: the shapes and sha256 of x as float32 and of y as int64 (None without
    labels). Stored in a checkpoint's meta (``data_fingerprint``) so that a resume on other data is refused."""
    def digest(t: Tensor, dtype: torch.dtype) -> str:
        h = hashlib.sha256()
        for chunk in t.detach().reshape(-1).split(1 << 20):  # row-major bytes, a million values at a time
            h.update(chunk.to(device="cpu", dtype=dtype).contiguous().numpy().tobytes())
        return h.hexdigest()

    return {"x_shape": list(x.shape), "x_sha256": digest(x, torch.float32),
            "y_shape": None if y is None else list(y.shape), "y_sha256": None if y is None else digest(y, torch.int64)}


def _with_data_scale(meta: Optional[dict], x: Tensor) -> tuple[Optional[dict], Optional[float]]:
    """``(meta, scale)``: ``meta`` with ``data.sigma_max``, the data's largest pairwise distance (NCSNv2's technique 1,
    :func:`~scoregen.schedules.ncsnv2_sigma_max`, the value an NCSN network's first sigma gets), and that scale.
    :func:`~scoregen.io.load_checkpoint` hands it to the network, and its score model makes it Langevin's default
    sigma_max: a DDPM network's largest trained level (sigma/m = 157 on the linear schedule) is far above data in
    [-1, 1]. Left out (scale None) for constant data, or when ``meta["data"]`` is there but not a dict."""
    from ..schedules import ncsnv2_sigma_max

    data = (meta or {}).get("data", {})
    scale = ncsnv2_sigma_max(x)
    if not isinstance(data, dict) or not scale > 0:
        return meta, None
    return {**(meta or {}), "data": {**data, "sigma_max": scale}}, scale


def _restore(state: dict, path: str, step: int, opt, sched, g: torch.Generator) -> Optional[float]:
    """Put the optimizer, scheduler and RNG states of a trainer state back, after checking everything that can be
    checked without applying it: its keys, its step (``step``, config.json's), its running loss and the size
    of its RNG states. Returns the running loss."""
    def unfit(why: str) -> ValueError:
        return ValueError(f"cannot resume: the trainer state in {path} does not fit this training run ({why}); the "
                          "checkpoint is damaged or from another program")

    missing = [k for k in ("optimizer", "scheduler", "generator", "torch_rng", "step", "running_loss") if k not in state]
    if missing:
        raise unfit(f"no {', '.join(missing)}")
    if type(state["step"]) is not int or state["step"] != step:
        raise unfit(f"it is at step {short(state['step'])}, config.json says {step}")
    running = state["running_loss"]
    if not (running is None or isinstance(running, float)):
        raise unfit(f"running loss {short(running)}")
    chunks = state.get("chunks")
    if chunks is not None and (type(chunks) is not int or chunks < 1):
        raise unfit(f"chunks {short(chunks)}")
    for key, now in (("generator", g.get_state()), ("torch_rng", torch.get_rng_state())):
        saved = state[key]
        if not isinstance(saved, Tensor) or saved.dtype != torch.uint8 or saved.shape != now.shape:
            raise unfit(f"{key} is not an RNG state of {now.numel()} bytes")
    try:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError, IndexError) as e:  # torch's own checks
        raise unfit(f"{type(e).__name__}: {e}") from None
    g.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return running


#: Copies of a batch of data a training step holds besides the network's activations: x0, the noise, x_t, the target.
_DATA_COPIES = 4
#: Copies of the parameters training adds to the network's own: gradients, AdamW's two moments, the EMA.
_PARAM_COPIES = 4


def _check_memory(net: nn.Module, loss_fn, x: Tensor, y: Optional[Tensor], batch_size: int) -> None:
    """Refuse a batch size whose step cannot fit in the memory available, before anything of its size exists.

    Per sample: the network's activations, measured by one forward pass of the loss on a single sample (outputs
    that need gradients count twice: autograd keeps them, and the backward pass makes a gradient of each), and
    :data:`_DATA_COPIES` copies of the sample; once: :data:`_PARAM_COPIES` copies of the parameters. The probe runs
    in eval mode with its own generator; the caller reseeds the global generator afterwards."""
    available = available_memory(x.device)
    if available is None:
        return
    mode = net.training
    try:
        net.eval()
        per_sample = activation_bytes([net], lambda: loss_fn(x[:1], None if y is None else y[:1],
                                                             torch.Generator(x.device).manual_seed(0)))
    finally:
        net.train(mode)
    per_sample += _DATA_COPIES * x[0].numel() * x.element_size()
    params = _PARAM_COPIES * sum(p.numel() * p.element_size() for p in net.parameters())
    need = batch_size * per_sample + params
    if need > available:
        fits = int((available - params) // per_sample)
        remedy = f"use --batch-size {fits} (batch_size={fits}) or less" if fits >= 1 else \
            "even a batch of one does not fit: free memory, or train a smaller network"
        raise ValueError(f"a training batch of {batch_size} needs about {format_bytes(need)} ({format_bytes(per_sample)} "
                         f"per sample for the network's activations and the data, {format_bytes(params)} for gradients, "
                         f"optimizer state and the EMA), more than the {format_bytes(available)} available: {remedy}")


def train(
    net: nn.Module,
    x: Tensor,
    y: Optional[Tensor],
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    meta: Optional[dict] = None,
    progress: Optional[bool] = None,
    callback: Optional[Callable[[int, float], None]] = None,
    evaluate: Optional[Callable[[nn.Module], dict]] = None,
    context: Optional[Context] = None,
    chunks: Optional[int] = None,
) -> dict:
    """Train ``net`` on data ``x`` (N, ...) with optional labels ``y`` (N,), checkpointing to ``out_dir``.

    Every ``checkpoint_every`` steps and at the end, ``out_dir`` receives the weights, their EMA, and the
    optimizer / scheduler / RNG state (see :func:`~scoregen.io.save_checkpoint`); the folder is locked
    for the whole run (:class:`~scoregen.errors.FolderInUseError` if another process, or another thread of
    this one, holds it).

    A folder that already holds a checkpoint is never trained over silently: ``resume=True`` continues it,
    after checking that its network, training config and data (a fingerprint of x and y) match; on CPU the
    result is bit-for-bit that of an uninterrupted run with the same seed; ``steps`` and
    ``checkpoint_every`` may change on resume (to train longer), nothing else. A checkpoint already at
    ``steps`` trains nothing; one past it is refused. ``overwrite=True`` starts afresh and replaces that
    checkpoint's files (only those) at the first save. Neither: FileExistsError. ``resume=True`` on a
    folder without a checkpoint starts from step 0.

    ``evaluate(ema_net) -> dict`` (e.g. held-out accuracy) runs at every checkpoint on the EMA network, in eval mode
    and without gradients, and its entries join that checkpoint's meta. ``callback(step, loss)`` runs after every step. Returns ``{"steps", "start_step", "end_step",
    "running_loss", "out_dir"}``: the run trained steps ``start_step`` .. ``end_step`` (equal when there was
    nothing to do); ``running_loss`` is the exponential average of the loss (None if no step was ever taken).

    **Under torchrun** (``context``: this process's :class:`~scoregen.distributed.Context`; default: one process,
    or :func:`scoregen.distributed.setup` on the network's device when started by torchrun) every rank calls
    ``train`` with the same network, data and config, and ``net`` and ``x`` on its device. ``config.batch_size`` is
    the global batch (a multiple of the world size W): each step's batch is cut into K chunks (K = W by default)
    whose indices and noise come from per-(seed, step, chunk) generators, rank r computes its K / W chunks, and
    DistributedDataParallel averages the gradients, so the optimizer, LR schedule and EMA are identical on every
    rank. Rank 0 alone takes the folder's lock, writes the checkpoints and runs ``evaluate``; the others wait for it.
    A checkpoint resumes under any world size; one that W' divides its K continues the very same trajectory.
    ``chunks``: draw the batches as this many chunks (a multiple of W dividing the batch), e.g. to reproduce a
    2-rank run in one process. Without torchrun and ``chunks``, training is the one-process scheme of old (one
    generator for the whole batch). See :mod:`scoregen.training.distributed`.
    """
    if resume and overwrite:
        raise ValueError("resume=True continues the checkpoint in out_dir and overwrite=True replaces it: give one of them")
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must be a tensor of shape (N, ...) with N >= 1 samples, got {getattr(x, 'shape', type(x).__name__)}")
    if y is not None and (not isinstance(y, Tensor) or tuple(y.shape) != (x.shape[0],)):
        raise ValueError(f"y must be a tensor of shape (N,) = ({x.shape[0]},), one label per sample, got "
                         f"{getattr(y, 'shape', type(y).__name__)}")
    ctx = context if context is not None else _default_context(net)
    world = ctx.world_size
    check_global_batch(config.batch_size, world)
    resolve_chunks(None, chunks, world, config.batch_size, False)  # checks a requested count before any work
    loss_fn = _loss_fn(config, net)
    # before the seed: the probe's draws are then forgotten. A rank computes its chunks one after the other.
    _check_memory(net, loss_fn, x, y, config.batch_size // max(world, chunks or 1))
    out = os.fspath(out_dir)
    fingerprint = _data_fingerprint(x, y)
    meta, data_scale = _with_data_scale(meta, x)  # meta.data.sigma_max: Langevin's start on the trained model
    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout draws from the global generator
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup)))
    ema = copy.deepcopy(net).requires_grad_(False)
    start, running, saved_chunks = 0, None, None
    # from reading the checkpoint to the last save: no other writer here (under torchrun: rank 0 holds the lock)
    with lock_on_main(ctx, lambda: checkpoint_lock(out)):
        existing = os.path.lexists(os.path.join(out, CONFIG_NAME))
        if existing and not resume and not overwrite:
            try:
                held = f"step {read_checkpoint_config(out)['step']}"
            except (ValueError, OSError):
                held = "a damaged one"
            raise FileExistsError(f"{out} already holds a checkpoint ({held}): pass --resume (resume=True) to continue "
                                  "it, or --overwrite (overwrite=True) to replace it")
        if resume and existing:
            start, running, saved_chunks = _resume(out, net, ema, config, fingerprint, opt, sched, g)
        K, note = resolve_chunks(saved_chunks, chunks, world, config.batch_size, resume and existing)
        if note and ctx.is_main:
            warnings.warn(f"resuming {out} with {world} process(es): {note}", stacklevel=2)
        ddp = None
        if ctx.distributed:  # every rank has read the checkpoint: rank 0 may write from here on
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(net, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
            if not (resume and existing):  # DDP gave every rank rank 0's initial weights: so does the EMA
                ema.load_state_dict(net.state_dict())
        run_meta = {} if K is None else \
            {"distributed": {"world_size": world, "chunks": K, "backend": ctx.backend, "device_type": ctx.device.type}}

        def checkpoint(step: int) -> None:
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": g.get_state(),
                     "torch_rng": torch.get_rng_state(), "step": step, "running_loss": running}
            if K is not None:
                state["chunks"] = K  # the batch scheme: no per-rank RNG state is needed (scoregen.training.distributed)
            save_checkpoint(out, net, step=step, ema=ema, trainer_state=state,
                            meta={**(meta or {}), **_evaluated(ema, evaluate), "train": asdict(config),
                                  "data_fingerprint": fingerprint, **run_meta})

        net.train()
        if K is None:  # one process, one generator for the whole batch
            step_fn = _whole_step(config, loss_fn, opt, x, y, g)
        else:
            step_fn = _chunked_step(ctx, K, config, _loss_fn(config, Replica(ddp, net)) if ddp is not None else loss_fn,
                                    ddp, opt, x, y)
        with progress_bar(config.steps, progress if ctx.is_main else False, f"train {config.objective}", "step",
                          initial=start) as bar:
            for step in range(start, config.steps):
                loss_value = step_fn(step)  # the batch's loss; its gradient is in the parameters
                nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
                opt.step()
                sched.step()
                # EMA warm-up (as in diffusers' EMAModel): early weights fade out of short runs quickly
                _ema_update(ema, net, min(config.ema_decay, (1 + step) / (10 + step)))
                running = loss_value if running is None else 0.98 * running + 0.02 * loss_value
                bar.set_postfix(loss=f"{running:.4f}")
                bar.update()
                if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                    on_main(ctx, lambda: checkpoint(step + 1), f"write the checkpoint of step {step + 1}")
                if callback is not None:
                    callback(step + 1, loss_value)
    del ddp  # its gradient hooks go with it
    net.eval()
    if data_scale is not None:
        net.data_sigma_max = data_scale  # as load_checkpoint sets it: net.score_model() starts Langevin at the data's scale
    return {"steps": config.steps, "start_step": start, "end_step": config.steps, "running_loss": running,
            "out_dir": out}


def _default_context(net: nn.Module) -> Context:
    """One process, or under torchrun this rank's context on the device of the network's parameters."""
    if not launched():
        return Context()
    param = next(iter(net.parameters()), None)
    return setup_distributed(param.device if param is not None else None)


def _check_loss(value: float, step: int, config: TrainConfig) -> None:
    """A non-finite loss stops training before the optimizer steps."""
    if not math.isfinite(value):
        raise FloatingPointError(f"training loss became {value} at step {step}; lower lr (now {config.lr}) or check "
                                 "the data's scale")


def _whole_step(config: TrainConfig, loss_fn, opt, x: Tensor, y: Optional[Tensor], g: torch.Generator):
    """``step_fn(step) -> loss``: one process's step, the whole batch drawn from ``g`` (the checkpointed generator),
    its gradient left in the parameters."""
    def step_fn(step: int) -> float:
        idx = torch.randint(0, x.shape[0], (config.batch_size,), generator=g)
        loss = loss_fn(x[idx], None if y is None else y[idx], g)
        _check_loss(loss.item(), step, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss.item()

    return step_fn


def _chunked_step(ctx: Context, chunks: int, config: TrainConfig, loss_fn, ddp, opt, x: Tensor, y: Optional[Tensor]):
    """``step_fn(step) -> loss``: one step's forward and backward passes on this rank's chunks of the global batch,
    leaving in the gradients the mean over all ``chunks`` chunks (DDP averages the ranks'), and returning that
    global mean loss (summed across ranks: the same number on every rank). A non-finite loss raises on every rank
    together, before the optimizer steps."""
    mine = rank_chunks(chunks, ctx.rank, ctx.world_size)
    size, n = config.batch_size // chunks, x.shape[0]

    def step_fn(step: int) -> float:
        opt.zero_grad(set_to_none=True)
        total = torch.zeros(1, dtype=torch.float64)
        for i, j in enumerate(mine):
            data_seed, torch_seed = chunk_seeds(config.seed, step, j)
            g = torch.Generator().manual_seed(data_seed)
            torch.manual_seed(torch_seed)  # dropout draws from the global generator
            idx = torch.randint(0, n, (size,), generator=g)
            # gradients are averaged across ranks once, after this rank's last chunk
            sync = ddp.no_sync() if ddp is not None and i + 1 < len(mine) else contextlib.nullcontext()
            with sync:
                loss = loss_fn(x[idx], None if y is None else y[idx], g)
                (loss / len(mine)).backward()
            total += loss.detach().to("cpu", torch.float64)
        value = all_reduce_sum(total, ctx).item() / chunks
        _check_loss(value, step, config)
        return value

    return step_fn


def _evaluated(ema: nn.Module, evaluate: Optional[Callable[[nn.Module], dict]]) -> dict:
    """``evaluate(ema)`` in eval mode without gradients (no random numbers drawn: the run stays reproducible)."""
    if evaluate is None:
        return {}
    mode = ema.training
    try:
        ema.eval()
        with torch.no_grad():
            return dict(evaluate(ema))
    finally:
        ema.train(mode)


def _resume(out: str, net: nn.Module, ema: nn.Module, config: TrainConfig, fingerprint: dict, opt, sched,
            g: torch.Generator) -> tuple[int, Optional[float], Optional[int]]:
    """Load the checkpoint in ``out`` into the run after checking that it is this run's; returns (step, running loss,
    the number of chunks its batches were drawn as: None for the one-process scheme)."""
    ckpt = read_checkpoint_config(out)
    if ckpt["network"] != _as_json({"class": type(net).__name__, "config": net.config()}):
        raise ValueError(f"cannot resume: the checkpoint in {out!r} holds a different network "
                         f"({ckpt['network']['class']} {ckpt['network']['config']}) than the one given")
    before, now = ckpt["meta"].get("train"), _as_json(asdict(config))
    before = dict(before) if isinstance(before, dict) else {}
    for key, value in _ADDED_FIELDS.items():  # an older checkpoint trained with today's default
        before.setdefault(key, value)
    for key in _EXTENDABLE:  # more steps or other checkpoint spacing leave the trajectory unchanged
        before.pop(key, None), now.pop(key, None)
    if before != now:
        raise ValueError(f"cannot resume: the checkpoint was trained with {before}, not {now}")
    recorded = ckpt["meta"].get("data_fingerprint")
    if recorded is None:
        warnings.warn(f"the checkpoint in {out} records no fingerprint of its training data (it was written by an "
                      "older scoregen): resuming without checking that the data are the same", stacklevel=3)
    elif recorded != fingerprint:
        raise ValueError(f"cannot resume: the checkpoint was trained on other data ({_describe(recorded)}; "
                         f"the data given: {_describe(fingerprint)}); resume with the same data, or train afresh "
                         "into another folder")
    step = ckpt["step"]
    if step > config.steps:
        raise ValueError(f"cannot resume: the checkpoint in {out} is at step {step}, past the requested {config.steps} "
                         f"steps; to train it further ask for more than {step} steps")
    for kind in ("ema", "trainer"):
        if kind not in ckpt["files"]:
            raise ValueError(f"cannot resume: the checkpoint in {out} has no {kind} file (an exported checkpoint holds "
                             "only the weights for sampling); train afresh with overwrite=True (--overwrite)")
    state = load_trainer_state(out, ckpt)
    load_weights(net, out, ckpt, "weights")
    load_weights(ema, out, ckpt, "ema")
    return step, _restore(state, os.path.join(out, ckpt["files"]["trainer"]["name"]), step, opt, sched, g), \
        state.get("chunks")


def _describe(fingerprint) -> str:
    if not isinstance(fingerprint, dict):
        return short(fingerprint, 200)
    x = f"x of shape {fingerprint.get('x_shape')} (sha256 {str(fingerprint.get('x_sha256'))[:12]}...)"
    if fingerprint.get("y_shape") is None:
        return x + ", no labels"
    return x + f", labels of shape {fingerprint.get('y_shape')} (sha256 {str(fingerprint.get('y_sha256'))[:12]}...)"
