"""Files: atomic writes and checkpoints (safetensors weights + a JSON config, verified on load)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from typing import IO, Iterator, Optional

import torch

__all__ = ["atomic_path", "atomic_write", "save_image_grid", "save_checkpoint", "load_checkpoint", "read_checkpoint_config",
           "load_trainer_state", "export_checkpoint", "checkpoint_dir"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` only once writing succeeded."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """An open file whose contents appear at ``path`` whole, or not at all."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, value_range: Optional[tuple] = (-1.0, 1.0),
                    nrow: Optional[int] = None, padding: int = 1, scale: Optional[int] = None) -> None:
    """Save images (n, C, H, W), C = 1 or 3, with values in ``value_range`` as one PNG grid (Pillow),
    ``nrow`` images per row, each enlarged ``scale`` times by pixel repetition (default: to at least 32 px)."""
    from PIL import Image

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"an image grid needs images of shape (n, 1 or 3, H, W), got {tuple(images.shape)}")
    lo, hi = value_range if value_range is not None else (float(images.min()), float(images.max()))
    x = ((images.detach().float().cpu() - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    if scale is not None and (not isinstance(scale, int) or scale < 1):
        raise ValueError(f"scale must be a positive integer (how many times to enlarge each pixel), got {scale!r}")
    scale = scale or max(1, math.ceil(32 / max(h, w)))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, mode="L" if c == 1 else "RGB")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")


# ---------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "scoregen-checkpoint"
CHECKPOINT_VERSION = 1


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _network_class(name: str):
    from .networks import NETWORKS

    if name not in NETWORKS:
        raise ValueError(f"unknown network class {name!r} in checkpoint; known: {sorted(NETWORKS)}")
    return NETWORKS[name]


def save_checkpoint(directory: str | os.PathLike, net, *, step: int = 0, ema=None, trainer_state: Optional[dict] = None,
                    meta: Optional[dict] = None) -> None:
    """Write ``net`` (and optionally its EMA copy and the trainer's state) to ``directory``.

    Layout: ``config.json`` (network class and config, step, file names with their sha256, ``meta``),
    ``weights-STEP.safetensors``, ``ema-STEP.safetensors``, ``trainer-STEP.pt`` (optimizer, RNG states).
    Each file is written atomically and ``config.json`` last, so an interrupted save leaves the previous
    checkpoint intact; files the new config no longer names are then removed.
    """
    from safetensors.torch import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    files = {}

    def put(kind: str, name: str, write) -> None:
        path = os.path.join(directory, name)
        with atomic_path(path) as tmp:
            write(tmp)
        files[kind] = {"name": name, "sha256": _sha256(path)}

    tensors = lambda m: {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}  # noqa: E731
    put("weights", f"weights-{step}.safetensors", lambda p: save_file(tensors(net), p))
    if ema is not None:
        put("ema", f"ema-{step}.safetensors", lambda p: save_file(tensors(ema), p))
    if trainer_state is not None:
        put("trainer", f"trainer-{step}.pt", lambda p: torch.save(trainer_state, p))
    config = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "network": {"class": type(net).__name__, "config": net.config()},
        "step": int(step),
        "files": files,
        "meta": meta or {},
    }
    with atomic_write(os.path.join(directory, "config.json")) as f:
        json.dump(config, f, indent=1)
    keep = {v["name"] for v in files.values()} | {"config.json"}
    for name in os.listdir(directory):
        if name not in keep and (name.startswith(("weights-", "ema-", "trainer-")) and not name.startswith(".")):
            os.remove(os.path.join(directory, name))


def checkpoint_dir(checkpoint: str | os.PathLike) -> str:
    """The folder of a checkpoint given as a path, or as the name of a built-in model (``digits-ddpm``)."""
    from .pretrained import pretrained_names, pretrained_path

    checkpoint = os.fspath(checkpoint)
    if os.path.exists(checkpoint):  # a path that exists wins over a built-in model of the same name
        if checkpoint in pretrained_names() and not os.path.isfile(os.path.join(checkpoint, "config.json")):
            raise FileNotFoundError(f"{checkpoint!r} here is a folder without a checkpoint, and it hides the built-in "
                                    f"model of that name: remove or rename it, or run from another folder")
        return checkpoint
    if checkpoint in pretrained_names():
        return pretrained_path(checkpoint)
    raise FileNotFoundError(f"no checkpoint folder {checkpoint!r}, and it is not the name of a built-in model "
                            f"({', '.join(pretrained_names())})")


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    """The checkpoint's ``config.json``, checked for format and for the integrity of every file it names."""
    directory = os.fspath(directory)
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory!r} is not a scoregen checkpoint: it has no config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a scoregen checkpoint (format {config.get('format') if isinstance(config, dict) else None!r})")
    if config.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {config.get('version')!r}; this scoregen reads version {CHECKPOINT_VERSION}")
    for kind, entry in config.get("files", {}).items():
        file = os.path.join(directory, entry["name"])
        if not os.path.isfile(file):
            raise ValueError(f"checkpoint {directory!r} names {entry['name']} ({kind}) but the file is missing")
        if _sha256(file) != entry["sha256"]:
            raise ValueError(f"checkpoint file {file} is truncated or was modified (its sha256 does not match "
                             "config.json); restore it or train again")
    return config


def load_checkpoint(directory: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu"):
    """Rebuild the network a checkpoint describes and load its weights (the EMA weights when present and
    ``ema=True``). Returns ``(net, config)``; the network is in eval mode. Nothing pickled is executed.
    ``directory`` may also be the name of a built-in model (``scoregen pretrained list``)."""
    from safetensors.torch import load_file

    directory = checkpoint_dir(directory)
    config = read_checkpoint_config(directory)
    net_cfg = config["network"]
    net = _network_class(net_cfg["class"]).from_config(net_cfg["config"])
    kind = "ema" if ema and "ema" in config["files"] else "weights"
    state = load_file(os.path.join(os.fspath(directory), config["files"][kind]["name"]))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {directory!r}: its weights do not fit the {net_cfg['class']} its config describes: {e}") from None
    return net.to(device).eval(), config


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, meta: Optional[dict] = None) -> None:
    """Write the weights sampling needs (the EMA copy when ``src`` has one) as a checkpoint of their own in
    ``dst``: no second weight set, no optimizer state; ``meta`` is merged into the source's."""
    net, config = load_checkpoint(src)
    weights = "ema" if "ema" in config["files"] else "weights"
    save_checkpoint(dst, net, step=config["step"], meta={**config["meta"], "exported_weights": weights, **(meta or {})})


def load_trainer_state(directory: str | os.PathLike, config: dict) -> dict:
    """The optimizer and RNG state of a checkpoint, loaded with ``torch.load(weights_only=True)``."""
    entry = config["files"].get("trainer")
    if entry is None:
        raise ValueError(f"checkpoint {os.fspath(directory)!r} has no trainer state to resume from")
    return torch.load(os.path.join(os.fspath(directory), entry["name"]), weights_only=True)
