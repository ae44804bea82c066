"""The training loop: AdamW, linear warmup, gradient clipping, EMA, periodic checkpoints, exact resume."""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..io import load_trainer_state, read_checkpoint_config, save_checkpoint
from .objectives import classifier_loss, ddpm_loss, drop_labels, ncsn_loss

__all__ = ["TrainConfig", "train"]


@dataclass
class TrainConfig:
    """Everything that determines a training run besides the network and the data.

    objective: ``ddpm`` (L_simple on a DiscreteVP network), ``ncsn`` (denoising score matching on a
    DiscreteVE network) or ``classifier`` (cross-entropy on noised inputs). ``label_dropout`` > 0 trains a
    class-conditional network for classifier-free guidance (labels dropped to its null label).
    """

    objective: Literal["ddpm", "ncsn", "classifier"]
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

    def __post_init__(self):
        if self.objective not in ("ddpm", "ncsn", "classifier"):
            raise ValueError(f"objective must be 'ddpm', 'ncsn' or 'classifier', got {self.objective!r}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def _loss_fn(config: TrainConfig, net: nn.Module) -> Callable[[Tensor, Optional[Tensor], torch.Generator], Tensor]:
    if config.objective == "classifier":
        if not hasattr(net, "num_classes") or getattr(net, "parameterization", None) is not None:
            raise ValueError("objective 'classifier' needs a classifier network (e.g. MLPClassifier)")
        return lambda x0, y, g: classifier_loss(net, net.schedule, x0, _need_labels(y), g)
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


def train(
    net: nn.Module,
    x: Tensor,
    y: Optional[Tensor],
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    meta: Optional[dict] = None,
    progress: Optional[bool] = None,
    callback: Optional[Callable[[int, float], None]] = None,
) -> dict:
    """Train ``net`` on data ``x`` (N, ...) with optional labels ``y`` (N,), checkpointing to ``out_dir``.

    Every ``checkpoint_every`` steps and at the end, ``out_dir`` receives the weights, their EMA, and the
    optimizer / scheduler / RNG state. ``resume=True`` continues from the checkpoint there, after checking
    that its network and training config match; on CPU the result is bit-for-bit that of an uninterrupted
    run with the same seed; ``steps`` and ``checkpoint_every`` may change on resume (to train longer),
    nothing else. ``callback(step, loss)`` runs after every step. Returns a summary dict.
    """
    loss_fn = _loss_fn(config, net)
    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout draws from the global generator
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup)))
    ema = copy.deepcopy(net).requires_grad_(False)
    start, running = 0, None
    if resume and os.path.isfile(os.path.join(os.fspath(out_dir), "config.json")):
        ckpt = read_checkpoint_config(out_dir)
        if ckpt["network"] != _as_json({"class": type(net).__name__, "config": net.config()}):
            raise ValueError(f"cannot resume: the checkpoint in {os.fspath(out_dir)!r} holds a different network "
                             f"({ckpt['network']['class']} {ckpt['network']['config']}) than the one given")
        before, now = dict(ckpt["meta"].get("train") or {}), _as_json(asdict(config))
        for key in _EXTENDABLE:  # more steps or other checkpoint spacing leave the trajectory unchanged
            before.pop(key, None), now.pop(key, None)
        if before != now:
            raise ValueError(f"cannot resume: the checkpoint was trained with {before}, not {now}")
        from safetensors.torch import load_file

        net.load_state_dict(load_file(os.path.join(os.fspath(out_dir), ckpt["files"]["weights"]["name"])))
        ema.load_state_dict(load_file(os.path.join(os.fspath(out_dir), ckpt["files"]["ema"]["name"])))
        state = load_trainer_state(out_dir, ckpt)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start, running = int(state["step"]), state["running_loss"]

    def checkpoint(step: int) -> None:
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": g.get_state(),
                 "torch_rng": torch.get_rng_state(), "step": step, "running_loss": running}
        save_checkpoint(out_dir, net, step=step, ema=ema, trainer_state=state,
                        meta={**(meta or {}), "train": asdict(config)})

    net.train()
    n = x.shape[0]
    with tqdm(total=config.steps, initial=start, disable=None if progress is None else not progress,
              desc=f"train {config.objective}", unit="step") as bar:
        for step in range(start, config.steps):
            idx = torch.randint(0, n, (config.batch_size,), generator=g)
            loss = loss_fn(x[idx], None if y is None else y[idx], g)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}; lower lr (now {config.lr}) "
                                         "or check the data's scale")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            # EMA warm-up (as in diffusers' EMAModel): early weights fade out of short runs quickly
            _ema_update(ema, net, min(config.ema_decay, (1 + step) / (10 + step)))
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.update()
            bar.set_postfix(loss=f"{running:.4f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                checkpoint(step + 1)
            if callback is not None:
                callback(step + 1, loss.item())
    net.eval()
    return {"steps": config.steps, "running_loss": running, "out_dir": os.fspath(out_dir)}
