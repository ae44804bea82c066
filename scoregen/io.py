"""Files: atomic writes, output checks, the checkpoint folder lock, and checkpoints (safetensors weights + a
JSON config, verified on load).

Everything here writes through :func:`atomic_write` (a fresh, exclusively created temporary file beside the
destination, renamed over it once complete) and reads untrusted files without executing anything in them:
safetensors for weights, ``torch.load(weights_only=True)`` for the optimizer state, JSON for configs, with
every field and size checked before anything is built from it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import io
import json
import math
import os
import pickle
import re
import shlex
import shutil
import socket
import stat
import sys
import tempfile
import threading
import warnings
import zipfile
from typing import IO, Any, BinaryIO, Iterator, Mapping, Optional, Sequence

import torch

from .errors import DiskFullError, FolderInUseError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see checkpoint_lock)
    fcntl = None

__all__ = ["atomic_write", "check_output_file", "check_output_dir", "checkpoint_lock", "safe_torch_load",
           "save_image_grid", "save_checkpoint", "load_checkpoint", "read_checkpoint_config", "load_trainer_state",
           "export_checkpoint", "checkpoint_dir"]

#: The longest file name (one path component) most file systems accept, in bytes.
NAME_MAX = 255
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_TMP_PREFIX, _CKPT_TMP_PREFIX, _TMP_SUFFIX = ".sg-", ".sg-ckpt-", ".tmp"


# ------------------------------------------------------------------------------------------- writing
def _creation_mode() -> int:
    """The permissions ``open()`` gives a new file (0o666 less the umask). mkstemp's 0o600 would hide a
    checkpoint or a sample file from the user's group, unlike every other file they write."""
    mask = os.umask(0o022)  # the only portable way to read the umask is to set it (and put it back at once)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def _atomic_write(path: str | os.PathLike, mode: str, prefix: str) -> Iterator[IO]:
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # mkstemp opens O_CREAT | O_EXCL | O_NOFOLLOW under a fresh random name: nothing planted beside the
    # destination (a symlink under any name) can redirect the write, and the name is short whatever `path` is.
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=_TMP_SUFFIX)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _creation_mode())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces `path` itself: a link there is replaced, never followed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """An open file (``mode`` "w": UTF-8 text, "wb": bytes) whose contents appear at ``path`` whole, or not at all.

    Writes go to a new temporary file ``.sg-XXXXXXXX.tmp`` beside ``path``, created exclusively (O_EXCL,
    O_NOFOLLOW), then flushed, fsync'd and renamed over ``path``; on any failure it is removed and ``path``
    is left as it was. Missing parent folders are created.
    """
    with _atomic_write(path, mode, _TMP_PREFIX) as f:
        yield f


def _fsync_dir(directory: str) -> None:
    """Make the renames in ``directory`` durable. Best effort: Windows cannot open a folder, and some file
    systems refuse to fsync one; the renames themselves are atomic either way."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_names(path: str) -> None:
    """Every component of ``path`` fits in NAME_MAX bytes."""
    for part in path.replace(os.altsep or os.sep, os.sep).split(os.sep):
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise ValueError(f"cannot write {path!r}: the name {part[:40]!r}... is {size} bytes long, more than the "
                             f"{NAME_MAX} a file system accepts; choose a shorter name")


def _check_creatable(path: str) -> None:
    """``path`` can be created: its nearest existing ancestor is a writable folder (missing folders are created)."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"cannot write {path!r}: {ancestor!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path!r}: the folder {ancestor!r} is not writable (no permission, or a "
                         "read-only file system); choose another place")


def check_output_file(path: str | os.PathLike, suffix: Optional[str] = None) -> None:
    """Refuse, with a ValueError naming ``path``, an output file that cannot be written: no file name, a name
    longer than NAME_MAX bytes, a ``suffix`` other than the one given (compared case-insensitively), an
    existing folder, a parent that is a file, or a folder that is not writable. Missing parent folders are
    fine (writing creates them). Call it before any work, so that a bad destination costs nothing."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if not name or name in (".", ".."):
        raise ValueError(f"{path!r} does not name a file: give a file name" + (f" ending in {suffix}" if suffix else ""))
    _check_names(path)
    if suffix is not None and not name.lower().endswith(suffix.lower()):
        raise ValueError(f"{path!r} must name a {suffix} file")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a file: give a file name inside it")
    _check_creatable(path)


def check_output_dir(path: str | os.PathLike) -> None:
    """Refuse, with a ValueError naming ``path``, a folder a checkpoint cannot be written to: an empty name, a
    name longer than NAME_MAX bytes, an existing file (or a dangling link), a folder that is not writable, or
    a missing folder whose nearest existing ancestor is a file or not writable. Call it before any work."""
    path = os.fspath(path)
    if not path:
        raise ValueError("the checkpoint folder is empty: name a folder")
    _check_names(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.isfile(path) else "exists and is not a folder (a dangling link?)"
        raise ValueError(f"{path!r} {what}: choose a folder for the checkpoint")
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"the folder {path!r} is not writable (no permission, or a read-only file system); "
                             "choose another folder")
    else:
        _check_creatable(path)


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


# ------------------------------------------------------------------------------------------- the lock
LOCK_NAME = ".scoregen.lock"
_held: dict = {}  # real path of a locked folder -> [lock fd or None, how many times this process holds it]
_held_guard = threading.Lock()


def _holder(fd: int) -> str:
    """Who holds a lock, from what the holder wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return (f"pid {int(info['pid'])} on {str(info['host'])}, running `{str(info['command'])}` "
                f"since {str(info['since'])}")
    except (OSError, ValueError, TypeError, KeyError):
        return "a process that has not written its details yet"


def _acquire(folder: str, shown: str) -> Optional[int]:
    if fcntl is None:
        return None
    path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        if os.path.islink(path):
            raise ValueError(f"{path} is a symbolic link; scoregen's lock file must be a plain file: remove the link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file; scoregen keeps its lock there: remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(f"{shown} is in use by another scoregen process ({_holder(fd)}): wait for it to "
                                   "finish, or choose another folder") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv)[:500],
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd
    except BaseException:
        os.close(fd)  # also drops the lock if it was taken
        raise


@contextlib.contextmanager
def checkpoint_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold ``directory`` (created if missing) for writing checkpoints: an advisory ``flock`` on
    ``DIR/.scoregen.lock``, into which the holder writes its pid, host, command line and start time.

    Another process asking for the same folder gets :class:`FolderInUseError` naming the holder. The lock
    is reentrant within a process (counted per real path), so :func:`save_checkpoint` takes it while
    :func:`~scoregen.training.train` holds it for a whole run. The operating system releases it when the
    process ends, however it ends (even by SIGKILL), so a lock is never stale; the lock file itself stays
    (deleting it would race with a process opening it). Where ``fcntl`` does not exist (Windows) there is
    no lock: nothing stops two processes from writing the same folder there.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    key = os.path.realpath(directory)
    with _held_guard:
        entry = _held.get(key)
        if entry is None:
            entry = _held[key] = [_acquire(key, directory), 0]
        entry[1] += 1
    try:
        yield
    finally:
        with _held_guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                if entry[0] is not None:
                    os.close(entry[0])


# -------------------------------------------------------------------------------------------- reading
def _open_regular(path: str, what: str) -> BinaryIO:
    """``path`` opened for reading, refused (ValueError) if it is a symbolic link or not a regular file."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        if os.path.islink(path):
            raise ValueError(f"{path}: {what} is a symbolic link; a checkpoint's files must be plain files in its folder") from None
        raise
    if not _NOFOLLOW and os.path.islink(path):  # no O_NOFOLLOW on this system: the check after opening
        os.close(fd)
        raise ValueError(f"{path}: {what} is a symbolic link; a checkpoint's files must be plain files in its folder")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path}: {what} is not a regular file")
    return os.fdopen(fd, "rb")


def read_capped(path: str | os.PathLike, max_bytes: int, what: str, *, regular_only: bool = False) -> bytes:
    """The bytes of a small file (a config, a target), refused with a ValueError naming ``path`` and ``what``
    when it holds more than ``max_bytes``: reading it whole would cost memory out of proportion to its job.
    ``regular_only`` also refuses symbolic links and anything but a regular file (a checkpoint's own files)."""
    path = os.fspath(path)
    with (_open_regular(path, what) if regular_only else open(path, "rb")) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path}: larger than the {max_bytes / 2**20:g} MiB {what} may have; is it the right file?")
    return data


def read_json(path: str | os.PathLike, max_bytes: int, what: str, *, regular_only: bool = False) -> Any:
    """A JSON file parsed (:func:`read_capped` first); anything that is not JSON — bad syntax, bad encoding,
    nesting too deep for the parser — is a ValueError naming the file."""
    data = read_capped(path, max_bytes, what, regular_only=regular_only)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{os.fspath(path)}: {what} is not valid JSON ({_short(str(e), 200)})") from None


def _sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def safe_torch_load(source: str | os.PathLike | BinaryIO, what: str, *, mmap: bool = False) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU, with its refusals in scoregen's own words.

    ``what`` names the file in messages (e.g. "the trainer state /run/trainer-300.pt"). A file holding
    anything other than tensors and plain containers (pickled code, say) raises a ValueError saying so, and
    nothing in it is executed; a damaged or foreign file raises a ValueError too; OSErrors pass through.
    ``mmap=True`` maps a zip-format file (``torch.save``'s default since 1.6) instead of reading it, so
    tensors cost no memory until used; older files are read normally.
    """
    try:
        if mmap and not hasattr(source, "read") and zipfile.is_zipfile(source):
            return torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(source, map_location="cpu", weights_only=True)
    except (OSError, MemoryError):
        raise
    except Exception as e:  # the unpickler's refusal, or a damaged / foreign file
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = (found.group(1) if found else (text.strip().splitlines() or [type(e).__name__])[0]).strip()
        detail = re.split(r"\.\s", detail)[0].rstrip(".")
        if "weights_only" in detail:  # torch's advice to turn the check off is not ours to give
            detail = type(e).__name__
        if isinstance(e, pickle.UnpicklingError) and detail.startswith("Unsupported global"):
            raise ValueError(f"{what} is refused: read with torch.load(weights_only=True), which executes nothing, it "
                             f"holds objects other than tensors and plain containers, such as pickled code ({detail}); "
                             "nothing in it was executed") from None
        raise ValueError(f"{what} could not be read with torch.load(weights_only=True), which accepts only tensors and "
                         f"plain containers and executes nothing ({type(e).__name__}: {detail}); the file is damaged "
                         "or holds other objects") from None


# ---------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "scoregen-checkpoint"
#: Version 2 adds ``config_sha256``, the hash of config.json's own content; version 1 (no hash) still loads.
CHECKPOINT_VERSION = 2
CONFIG_NAME = "config.json"
#: A checkpoint's config.json is a few kB (100 kB with an explicit list of 1000 betas); larger is not ours.
MAX_CONFIG_BYTES = 16 * 2**20
#: safetensors' own limit on the JSON header of a weights file.
MAX_HEADER_BYTES = 100 * 2**20
_KINDS = {"weights": ".safetensors", "ema": ".safetensors", "trainer": ".pt"}
_WEIGHTS = {"weights": "weights", "ema": "EMA weights"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _config_sha256(config: Mapping) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``config`` without its ``config_sha256``."""
    body = {k: v for k, v in config.items() if k != "config_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _network_class(name: str):
    from .networks import NETWORKS

    if name not in NETWORKS:
        raise ValueError(f"unknown network class {name!r} in checkpoint; known: {sorted(NETWORKS)}")
    return NETWORKS[name]


def _file_name_problem(name: Any) -> Optional[str]:
    """Why ``name`` cannot be a file of a checkpoint (a plain name inside its folder), or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if name in (".", "..") or "/" in name or os.sep in name or (os.altsep and os.altsep in name) or "\0" in name \
            or os.path.isabs(name) or os.path.splitdrive(name)[0]:
        return "must be a plain file name inside the checkpoint folder (no folders, no absolute path, no '..')"
    if name in (CONFIG_NAME, LOCK_NAME) or len(os.fsencode(name)) > NAME_MAX:
        return f"must not be {CONFIG_NAME}, {LOCK_NAME} or longer than {NAME_MAX} bytes"
    return None


def _validate_config(config: Any, path: str) -> dict:
    """``config`` (parsed config.json) with every field checked; a ValueError names the file and the field."""
    def bad(field: str, need: str, value: Any) -> ValueError:
        return ValueError(f"{path}: {field} {need}, got {_short(value)}; the checkpoint is damaged or was edited")

    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: not a scoregen checkpoint config (format {_short(found)}, expected {CHECKPOINT_FORMAT!r})")
    version = config.get("version")
    if type(version) is not int or version not in (1, 2):
        raise ValueError(f"{path}: checkpoint version {_short(version)}; this scoregen reads versions 1 and 2")
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
    from .networks import NETWORKS

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
    return _validate_config(read_json(path, MAX_CONFIG_BYTES, "a checkpoint's config.json", regular_only=True), path)


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
    for kind, entry in config["files"].items():
        file = os.path.join(directory, entry["name"])
        try:
            with _open_regular(file, f"the {kind} file") as f:
                digest = _sha256(f)
        except FileNotFoundError:
            raise ValueError(f"checkpoint {directory!r} names {entry['name']} ({kind}) but the file is missing") from None
        if digest != entry["sha256"]:
            raise ValueError(f"checkpoint file {file} is truncated or was modified (its sha256 does not match "
                             "config.json); restore it or train again")
    return config


def _safetensors_shapes(path: str) -> dict:
    """``{tensor name: shape}`` from the header of a safetensors file, every entry checked against the file's
    size: an 8-byte little-endian header length, then JSON ``{name: {dtype, shape, data_offsets}}``."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: not a valid safetensors file ({why}); the checkpoint is damaged")

    with _open_regular(path, "the weights file") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise bad("shorter than its 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise bad(f"its header claims {n} bytes of a {size}-byte file")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_size, shapes = size - 8 - n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) \
                or info.get("dtype") not in _ITEMSIZE or not isinstance(offsets, list) or len(offsets) != 2 \
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= data_size \
                or offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[info["dtype"]]:
            raise bad(f"tensor {name!r} has an invalid entry {_short(info)}")
        shapes[name] = tuple(shape)
    return shapes


def _tensor_mismatch(expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]]) -> list:
    """What keeps tensors of shapes ``got`` from loading into a model whose state has shapes ``expected``:
    a list of readable problems (missing names, unexpected names, shape mismatches), empty when they fit."""
    def some(items: list) -> str:
        return f"{items[:5]}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    problems = []
    missing, unexpected = [k for k in expected if k not in got], [k for k in got if k not in expected]
    if missing:
        problems.append(f"missing keys {some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {some(unexpected)}")
    shapes = [f"{k}: checkpoint {tuple(got[k])}, network {tuple(expected[k])}"
              for k in expected if k in got and tuple(got[k]) != tuple(expected[k])]
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]) + (f" and {len(shapes) - 5} more" if len(shapes) > 5 else ""))
    return problems


def _state_shapes(net: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _check_fit(net: torch.nn.Module, directory: str, config: dict, kind: str) -> str:
    """The path of the checkpoint's ``kind`` weights ("weights" or "ema"), after checking every tensor name and
    shape in the file's header against ``net``'s state (``net`` may live on the meta device)."""
    path = os.path.join(directory, config["files"][kind]["name"])
    problems = _tensor_mismatch(_state_shapes(net), _safetensors_shapes(path))
    if problems:
        raise ValueError(f"checkpoint {directory!r}: its {_WEIGHTS[kind]} do not fit the {config['network']['class']} "
                         "its config describes: " + "; ".join(problems))
    return path


def _load_weights(net: torch.nn.Module, directory: str, config: dict, kind: str) -> None:
    """Load the checkpoint's ``kind`` weights into ``net``, after :func:`_check_fit`."""
    from safetensors.torch import load_file

    path = _check_fit(net, directory, config, kind)
    try:
        state = load_file(path)
    except (OSError, MemoryError):
        raise
    except Exception as e:  # safetensors' own error type, for a file its header check let through
        raise ValueError(f"{path}: the weights could not be read ({type(e).__name__}: {e}); the checkpoint is damaged") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. NCSNv2's sigmas disagreeing with its schedule
        raise ValueError(f"checkpoint {directory!r}: its {_WEIGHTS[kind]} do not fit the {config['network']['class']} "
                         f"its config describes: {e}") from None


def _build_network(config: dict, directory: str, kind: str) -> torch.nn.Module:
    """The network the config describes with the checkpoint's ``kind`` weights. It is first built on the meta
    device (no memory) and compared with the weight file's header, so an edited config that asks for a huge
    network is refused before anything is allocated."""
    cls = _network_class(config["network"]["class"])
    try:
        with torch.device("meta"):
            skeleton = cls.from_config(config["network"]["config"])
    except ValueError as e:
        raise ValueError(f"{os.path.join(directory, CONFIG_NAME)}: 'network.config' does not describe a valid "
                         f"{cls.__name__}: {e}") from None
    _check_fit(skeleton, directory, config, kind)
    net = cls.from_config(config["network"]["config"])
    _load_weights(net, directory, config, kind)
    return net


def checkpoint_dir(checkpoint: str | os.PathLike) -> str:
    """The folder of a checkpoint given as a path, or as the name of a built-in model (``digits-ddpm``)."""
    from .pretrained import pretrained_names, pretrained_path

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
    return _build_network(config, directory, kind).to(device).eval(), config


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


def _write_file(path: str, data: bytes) -> None:
    """One file of a checkpoint, written atomically (the one place a checkpoint's bytes reach the disk)."""
    with _atomic_write(path, "wb", _CKPT_TMP_PREFIX) as f:
        f.write(data)


def _remove_stale_temporaries(directory: str) -> None:
    """Temporary files a killed save left behind. Only saves write ``.sg-ckpt-*`` files, and the caller holds
    the folder's lock, so no other save is writing them now."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(_CKPT_TMP_PREFIX) and entry.name.endswith(_TMP_SUFFIX) \
                    and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _tensor_bytes(module: torch.nn.Module) -> bytes:
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
    has it). Each file is written atomically and ``config.json`` last, so an interrupted save (even by
    SIGKILL) leaves the previous checkpoint intact. Then, and only then, the files the previous config.json
    named and the new one does not are deleted: nothing else in the folder is touched. A full disk
    (ENOSPC / EDQUOT) removes the files this save wrote and raises :class:`DiskFullError`; any other failure
    removes them too and is re-raised.
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
                _write_file(os.path.join(directory, name), data)
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
    ``dst``: no second weight set, no optimizer state; ``meta`` is merged into the source's."""
    net, config = load_checkpoint(src)
    weights = "ema" if "ema" in config["files"] else "weights"
    save_checkpoint(dst, net, step=config["step"], meta={**config["meta"], "exported_weights": weights, **(meta or {})})


def load_trainer_state(directory: str | os.PathLike, config: dict) -> dict:
    """The optimizer and RNG state of a checkpoint (``config`` from :func:`read_checkpoint_config`), read with
    :func:`safe_torch_load`: a file holding anything but tensors and plain containers is refused."""
    entry = config["files"].get("trainer")
    if entry is None:
        raise ValueError(f"checkpoint {os.fspath(directory)!r} has no trainer state to resume from (an exported "
                         "checkpoint holds only the weights for sampling)")
    path = os.path.join(os.fspath(directory), entry["name"])
    with _open_regular(path, "the trainer state") as f:
        state = safe_torch_load(f, f"the trainer state {path}")
    if not isinstance(state, dict):
        raise ValueError(f"the trainer state {path} is a {type(state).__name__}, not a dict; the checkpoint is damaged")
    return state
