"""Checkpoints: a folder holding ``config.json`` and the files it records (safetensors weights, their EMA copy,
the trainer's state), each with its sha256.

A save writes every file atomically under the folder's lock, ``config.json`` last, and then deletes only
the files the previous ``config.json`` recorded. A load checks config.json (size, hash, every field, every
file name), then each file's sha256, then the weight file's header against the network built on the meta
device, before anything is allocated; nothing pickled is executed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import warnings
from typing import Any, BinaryIO, Mapping, Optional

import torch
from torch import nn

from .._checks import short
from ..errors import DiskFullError
from ..networks import NETWORKS
from ..pretrained import pretrained_names, pretrained_path
from .files import NAME_MAX, TMP_PREFIX, TMP_SUFFIX, _atomic_write, _fsync_dir, _open_regular, read_json
from .lock import LOCK_NAME, checkpoint_lock
from .tensors import _safetensors_shapes, safe_torch_load, tensor_mismatch

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint_config", "load_trainer_state", "export_checkpoint",
           "checkpoint_dir", "load_weights", "CONFIG_NAME", "MAX_CONFIG_BYTES"]

CHECKPOINT_FORMAT = "scoregen-checkpoint"
#: Version 2 adds ``config_sha256``, the hash of config.json's own content; version 1 (no hash) still loads.
CHECKPOINT_VERSION = 2
CONFIG_NAME = "config.json"
#: A checkpoint's config.json is a few kB (100 kB with an explicit list of 1000 betas); larger is not ours.
MAX_CONFIG_BYTES = 16 * 2**20
_KINDS = {"weights": ".safetensors", "ema": ".safetensors", "trainer": ".pt"}
_WEIGHTS = {"weights": "weights", "ema": "EMA weights"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Only saves write temporaries under this prefix, so a save (holding the lock) may sweep up a killed one's.
_SAVE_PREFIX = TMP_PREFIX + "ckpt-"


# --------------------------------------------------------------------------------------- config.json
def _config_sha256(config: Mapping) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``config`` without its ``config_sha256``."""
    body = {k: v for k, v in config.items() if k != "config_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _file_name_problem(name: Any) -> Optional[str]:
    """Why ``name`` cannot be a file of a checkpoint (a plain name inside its folder), or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if name in (".", "..") or "/" in name or os.sep in name or (os.altsep and os.altsep in name) or "\0" in name \
            or os.path.isabs(name) or os.path.splitdrive(name)[0]:
        return "must be a plain file name inside the checkpoint folder (no folders, no absolute path, no '..')"
    # a .sg- name is a temporary file: a save deletes those it finds, so a checkpoint cannot keep one
    if name in (CONFIG_NAME, LOCK_NAME) or name.startswith(TMP_PREFIX) or len(os.fsencode(name)) > NAME_MAX:
        return (f"must not be {CONFIG_NAME} or {LOCK_NAME}, start with {TMP_PREFIX} (scoregen's temporary files) "
                f"or be longer than {NAME_MAX} bytes")
    return None


def _validate_config(config: Any, path: str) -> dict:
    """``config`` (parsed config.json) with every field checked; a ValueError names the file and the field."""
    def bad(field: str, need: str, value: Any) -> ValueError:
        return ValueError(f"{path}: {field} {need}, got {short(value)}; the checkpoint is damaged or was edited")

    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a scoregen checkpoint config (a JSON {type(config).__name__}, where an object with "
                         f"format {CHECKPOINT_FORMAT!r} belongs)")
    if config.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a scoregen checkpoint config (format {short(config.get('format'))}, "
                         f"expected {CHECKPOINT_FORMAT!r})")
    version = config.get("version")
    if type(version) is not int or version not in (1, 2):
        raise ValueError(f"{path}: checkpoint version {short(version)}; this scoregen reads versions 1 and 2")
    if version >= 2:
        digest = config.get("config_sha256")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise bad("'config_sha256'", "must be 64 lowercase hex digits", digest)
        if _config_sha256(config) != digest:
            raise ValueError(f"{path}: config.json was modified after it was written (its content hash does not match "
                             "config_sha256); restore the original, or write the checkpoint again")
    network = config.get("network")
    if not isinstance(network, dict):
        raise bad("'network'", "must be an object with 'class' and 'config'", network)
    if not isinstance(network.get("class"), str) or network["class"] not in NETWORKS:
        raise bad("'network.class'", f"must be a network class scoregen knows ({', '.join(sorted(NETWORKS))})",
                  network.get("class"))
    if not isinstance(network.get("config"), dict):
        raise bad("'network.config'", "must be an object (the network's constructor arguments)", network.get("config"))
    step = config.get("step")
    if type(step) is not int or step < 0:
        raise bad("'step'", "must be a non-negative integer", step)
    if not isinstance(config.get("meta"), dict):
        raise bad("'meta'", "must be an object", config.get("meta"))
    files = config.get("files")
    if not isinstance(files, dict) or "weights" not in files:
        raise bad("'files'", "must be an object naming at least the 'weights' file", files)
    names = set()
    for kind, entry in files.items():
        if kind not in _KINDS:
            raise bad(f"'files' kind {kind!r}", f"must be one of {sorted(_KINDS)}", kind)
        if not isinstance(entry, dict):
            raise bad(f"'files.{kind}'", "must be an object with 'name' and 'sha256'", entry)
        problem = _file_name_problem(entry.get("name"))
        if problem:
            raise bad(f"'files.{kind}.name'", problem, entry.get("name"))
        if entry["name"] in names:
            raise bad(f"'files.{kind}.name'", "must differ from the other files' names", entry["name"])
        names.add(entry["name"])
        if not isinstance(entry.get("sha256"), str) or not _HEX64.fullmatch(entry["sha256"]):
            raise bad(f"'files.{kind}.sha256'", "must be 64 lowercase hex digits", entry.get("sha256"))
    return config


def _read_config(directory: str) -> dict:
    """config.json of ``directory``, size-capped, parsed and validated (the files it names are not opened)."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{directory!r} is not a scoregen checkpoint: it has no {CONFIG_NAME}")
    return _validate_config(read_json(path, MAX_CONFIG_BYTES, "a checkpoint's config.json", follow_symlinks=False), path)


# ------------------------------------------------------------------------------------ recorded files
def _sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _open_recorded(directory: str, config: dict, kind: str) -> BinaryIO:
    """The checkpoint's ``kind`` file opened for reading (a regular file, not a link). A file config.json
    records but that is not there is most often one a trainer deleted after writing a newer checkpoint
    between our reading config.json and opening the file: the message says so."""
    name = config["files"][kind]["name"]
    try:
        return _open_regular(os.path.join(directory, name), f"the {kind} file")
    except FileNotFoundError:
        raise ValueError(f"checkpoint {directory!r} records {name} ({kind}) but the file is missing: a trainer may have "
                         "replaced this checkpoint while it was read (try again); otherwise the checkpoint is "
                         "incomplete") from None


def _check_digest(directory: str, config: dict, kind: str, digest: str) -> None:
    if digest != config["files"][kind]["sha256"]:
        raise ValueError(f"checkpoint file {os.path.join(directory, config['files'][kind]['name'])} is truncated or "
                         "was modified (its sha256 does not match config.json); restore it or train again")


def _read_recorded(directory: str, config: dict, kind: str) -> bytes:
    """The bytes of the checkpoint's ``kind`` file, read once and checked against the sha256 config.json
    records: what is then parsed is exactly what was checked (reopening the file by name could meet another)."""
    with _open_recorded(directory, config, kind) as f:
        data = f.read()
    _check_digest(directory, config, kind, hashlib.sha256(data).hexdigest())
    return data


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    """The checkpoint's ``config.json``, checked for format, for the type of every field, and for the
    integrity of every file it names (sha256).

    Version 2 configs carry ``config_sha256``, the sha256 of their own canonical JSON (sorted keys, no
    spaces, without that key): an edited config.json is refused. This catches accidents, not attacks (anyone
    can recompute it), which is why every field is also checked: each file is a plain name inside the folder,
    opened without following links. Version 1 configs (scoregen before this check) have no hash and load as
    they are.
    """
    directory = os.fspath(directory)
    config = _read_config(directory)
    for kind in config["files"]:
        with _open_recorded(directory, config, kind) as f:
            _check_digest(directory, config, kind, _sha256(f))
    return config


# ------------------------------------------------------------------------------------------- loading
def _weights_for(net: nn.Module, directory: str, config: dict, kind: str) -> bytes:
    """The checkpoint's ``kind`` weights ("weights" or "ema") as bytes, after checking every tensor name and
    shape in their header against ``net``'s state (``net`` may live on the meta device)."""
    data = _read_recorded(directory, config, kind)
    path = os.path.join(directory, config["files"][kind]["name"])
    problems = tensor_mismatch({k: tuple(v.shape) for k, v in net.state_dict().items()}, _safetensors_shapes(data, path))
    if problems:
        raise ValueError(f"checkpoint {directory!r}: its {_WEIGHTS[kind]} do not fit the {config['network']['class']} "
                         "its config describes: " + "; ".join(problems))
    return data


def _load_state(net: nn.Module, data: bytes, directory: str, config: dict, kind: str) -> None:
    """Load the safetensors ``data`` (from :func:`_weights_for`) into ``net``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        state = load(data)
    except SafetensorError as e:  # a file the header check let through
        raise ValueError(f"{os.path.join(directory, config['files'][kind]['name'])}: the weights could not be read "
                         f"({e}); the checkpoint is damaged") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. NCSNv2's sigmas disagreeing with its schedule
        raise ValueError(f"checkpoint {directory!r}: its {_WEIGHTS[kind]} do not fit the {config['network']['class']} "
                         f"its config describes: {e}") from None


def load_weights(net: nn.Module, directory: str, config: dict, kind: str) -> None:
    """Load the checkpoint's ``kind`` weights ("weights" or "ema"; ``config`` from :func:`read_checkpoint_config`)
    into ``net``: the file is read once, its sha256 and its header's names and shapes checked, then loaded."""
    _load_state(net, _weights_for(net, directory, config, kind), directory, config, kind)


def _build_network(config: dict, directory: str, kind: str) -> nn.Module:
    """The network the config describes with the checkpoint's ``kind`` weights. It is first built on the meta
    device (no memory) and compared with the weight file's header, so an edited config that asks for a huge
    network is refused before anything is allocated."""
    cls = NETWORKS[config["network"]["class"]]
    try:
        with torch.device("meta"):
            skeleton = cls.from_config(config["network"]["config"])
    except ValueError as e:
        raise ValueError(f"{os.path.join(directory, CONFIG_NAME)}: 'network.config' does not describe a valid "
                         f"{cls.__name__}: {e}") from None
    data = _weights_for(skeleton, directory, config, kind)
    net = cls.from_config(config["network"]["config"])
    _load_state(net, data, directory, config, kind)
    return net


def checkpoint_dir(checkpoint: str | os.PathLike) -> str:
    """The folder of a checkpoint given as a path, or as the name of a built-in model (``digits-ddpm``)."""
    checkpoint = os.fspath(checkpoint)
    if os.path.exists(checkpoint):  # a path that exists wins over a built-in model of the same name
        if checkpoint in pretrained_names() and not os.path.isfile(os.path.join(checkpoint, CONFIG_NAME)):
            raise FileNotFoundError(f"{checkpoint!r} here is a folder without a checkpoint, and it hides the built-in "
                                    f"model of that name: remove or rename it, or run from another folder")
        return checkpoint
    if checkpoint in pretrained_names():
        return pretrained_path(checkpoint)
    raise FileNotFoundError(f"no checkpoint folder {checkpoint!r}, and it is not the name of a built-in model "
                            f"({', '.join(pretrained_names())})")


def load_checkpoint(directory: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu"):
    """Rebuild the network a checkpoint describes and load its weights (the EMA weights when present and
    ``ema=True``). Returns ``(net, config)``; the network is in eval mode. Nothing pickled is executed.
    ``directory`` may also be the name of a built-in model (``scoregen pretrained list``).

    Before anything is allocated, config.json is checked (:func:`read_checkpoint_config`) and the network is
    built on the meta device and compared, tensor by tensor, with the names and shapes in the weight file's
    header; a mismatch raises a ValueError naming the tensors.
    """
    directory = checkpoint_dir(directory)
    config = read_checkpoint_config(directory)
    kind = "ema" if ema and "ema" in config["files"] else "weights"
    scale = _data_sigma_max(config, directory)
    net = _build_network(config, directory, kind).to(device).eval()
    if scale is not None:  # NetworkScoreModel takes it as Langevin's default sigma_max (its sigma_range)
        net.data_sigma_max = scale
    return net, config


def _data_sigma_max(config: dict, directory: str) -> Optional[float]:
    """The training data's largest pairwise distance a checkpoint records (``meta.data.sigma_max``, written by
    :func:`scoregen.training.train`), or None: a finite number > 0, else a ValueError naming the field."""
    data = config["meta"].get("data")
    value = data.get("sigma_max") if isinstance(data, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"{os.path.join(directory, CONFIG_NAME)}: 'meta.data.sigma_max' (the training data's largest "
                         f"pairwise distance) must be a finite number > 0, got {short(value)}; the checkpoint is damaged "
                         "or was edited")
    return float(value)


def load_trainer_state(directory: str | os.PathLike, config: dict) -> dict:
    """The optimizer and RNG state of a checkpoint (``config`` from :func:`read_checkpoint_config`), read once,
    checked against its sha256 and parsed with :func:`safe_torch_load`: a file holding anything but tensors
    and plain containers is refused."""
    directory = os.fspath(directory)
    if "trainer" not in config["files"]:
        raise ValueError(f"checkpoint {directory!r} has no trainer state to resume from (an exported "
                         "checkpoint holds only the weights for sampling)")
    path = os.path.join(directory, config["files"]["trainer"]["name"])
    state = safe_torch_load(io.BytesIO(_read_recorded(directory, config, "trainer")), f"the trainer state {path}")
    if not isinstance(state, dict):
        raise ValueError(f"the trainer state {path} is a {type(state).__name__}, not a dict; the checkpoint is damaged")
    return state


# ------------------------------------------------------------------------------------------- writing
def _recorded(directory: str) -> tuple[Optional[int], dict]:
    """``(step, {file name: sha256})`` of the checkpoint in ``directory``: ``(None, {})`` when there is none.
    A config.json that cannot be read is left alone, with its files (a warning says so)."""
    try:
        config = _read_config(directory)
    except FileNotFoundError:
        return None, {}
    except (ValueError, OSError) as e:
        warnings.warn(f"the config.json in {directory} could not be read ({e}); it is replaced, and whatever files "
                      "it named are left in place", stacklevel=3)
        return None, {}
    return config["step"], {entry["name"]: entry["sha256"] for entry in config["files"].values()}


def _same_file(path: str, digest: str) -> bool:
    """``path`` is a regular file (not a link) whose sha256 is ``digest``."""
    try:
        with _open_regular(path, "a checkpoint file") as f:
            return _sha256(f) == digest
    except (OSError, ValueError):
        return False


def _write_bytes(f: BinaryIO, data: bytes) -> None:
    """Write one checkpoint file's bytes into its open temporary file: the one place a checkpoint's bytes
    reach the disk, and the seam where tests simulate a full disk or a kill in the middle of a file."""
    f.write(data)


def _remove_stale_temporaries(directory: str) -> None:
    """Temporary files a killed save left behind. Only saves write ``.sg-ckpt-*`` files, and the caller holds
    the folder's lock, so no other save is writing them now."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(_SAVE_PREFIX) and entry.name.endswith(TMP_SUFFIX) \
                    and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _tensor_bytes(module: nn.Module) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})


def _pickle_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(directory: str | os.PathLike, net, *, step: int = 0, ema=None, trainer_state: Optional[dict] = None,
                    meta: Optional[dict] = None) -> None:
    """Write ``net`` (and optionally its EMA copy and the trainer's state) to ``directory``.

    Layout: ``config.json`` (network class and config, step, file names with their sha256, ``meta``, and
    ``config_sha256``, the hash of its own content), ``weights-STEP.safetensors``, ``ema-STEP.safetensors``,
    ``trainer-STEP.pt`` (optimizer, RNG states; a ``-2`` is added to a name that the previous checkpoint
    uses for other content, so its files are never overwritten).

    The save holds the folder's lock (:func:`checkpoint_lock`; :class:`FolderInUseError` if another process
    or thread has it). Each file is written atomically and ``config.json`` last, so an interrupted save (even
    by SIGKILL) leaves the previous checkpoint intact. Then, and only then, the files the previous config.json
    named and the new one does not are deleted. Nothing else in the folder is deleted; but a file that
    happens to have exactly the name this save chooses for one of its files (``weights-300.safetensors``
    when saving step 300, say) and that the previous config.json does not record is replaced, as any file
    written to an existing name is. A full disk (ENOSPC / EDQUOT) removes the files this save wrote and
    raises :class:`DiskFullError`; any other failure removes them too and is re-raised.
    """
    if type(step) is not int or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict (JSON-able), got {type(meta).__name__}")
    directory = os.fspath(directory)
    config = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
              "network": {"class": type(net).__name__, "config": net.config()}, "step": step, "files": {},
              "meta": meta or {}}
    try:
        json.dumps(config, allow_nan=False)  # before any file is written: the config must be plain JSON
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot save a checkpoint: its config or meta is not plain JSON ({e})") from None
    blobs = [("weights", _tensor_bytes(net))]
    if ema is not None:
        blobs.append(("ema", _tensor_bytes(ema)))
    if trainer_state is not None:
        blobs.append(("trainer", _pickle_bytes(trainer_state)))

    with checkpoint_lock(directory):
        previous_step, previous = _recorded(directory)
        _remove_stale_temporaries(directory)
        writes = []
        for kind, data in blobs:
            digest = hashlib.sha256(data).hexdigest()
            stem, ext = f"{kind}-{step}", _KINDS[kind]
            # A name the previous checkpoint records is never rewritten: it is reused only when the file
            # there already holds exactly these bytes (saving the same step twice), else the next name is taken.
            name = next(n for n in (stem + ext, f"{stem}-2{ext}", f"{stem}-3{ext}", f"{stem}-4{ext}")
                        if n not in previous or (previous[n] == digest and _same_file(os.path.join(directory, n), digest)))
            config["files"][kind] = {"name": name, "sha256": digest}
            if name not in previous:
                writes.append((name, data))
        config["config_sha256"] = _config_sha256(config)
        writes.append((CONFIG_NAME, json.dumps(config, indent=1).encode()))

        written = []
        try:
            for name, data in writes:
                if name == CONFIG_NAME:
                    _fsync_dir(directory)  # the weights' renames reach the disk before the config that names them
                with _atomic_write(os.path.join(directory, name), "wb", _SAVE_PREFIX) as f:
                    _write_bytes(f, data)
                written.append(name)
        except BaseException as e:
            for name in written:  # never a file the previous config records: those are never rewritten
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                free = shutil.disk_usage(directory).free / 1e6
                before = (f"the previous checkpoint at step {previous_step} is intact" if previous_step is not None
                          else "there is no previous checkpoint")
                raise DiskFullError(f"no space left on the device holding {directory} ({free:.1f} MB free): the "
                                    f"checkpoint for step {step} was not written; {before}") from e
            raise
        _fsync_dir(directory)
        now = {entry["name"] for entry in config["files"].values()}
        for name in previous.keys() - now:
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
            except OSError as e:
                warnings.warn(f"could not remove {name}, a file of the previous checkpoint in {directory}: {e}",
                              stacklevel=2)


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, meta: Optional[dict] = None) -> None:
    """Write the weights sampling needs (the EMA copy when ``src`` has one) as a checkpoint of their own in
    ``dst``: no second weight set, no optimizer state; ``meta`` is merged into the source's. ``dst`` must be
    another folder than ``src``: exporting in place would delete the source's EMA and trainer state."""
    source = checkpoint_dir(src)
    if os.path.isdir(dst) and os.path.samefile(source, dst):
        raise ValueError(f"cannot export {os.fspath(src)!r} into {os.fspath(dst)!r}: they are the same folder, and the "
                         "export would replace its checkpoint, deleting the EMA weights and trainer state a resume "
                         "needs; choose another folder for the export")
    net, config = load_checkpoint(source)
    weights = "ema" if "ema" in config["files"] else "weights"
    save_checkpoint(dst, net, step=config["step"], meta={**config["meta"], "exported_weights": weights, **(meta or {})})
