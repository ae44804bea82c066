"""Files: atomic writes, destination checks before any work, and capped reads of regular files.

Every write goes through :func:`atomic_write`: a fresh, exclusively created temporary file beside the
destination, renamed over it once complete. Every read of a small file (a config, a target) goes through
:func:`read_capped`: opened without blocking, refused unless it is a regular file, and read only up to a cap.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
import tempfile
from typing import IO, Any, BinaryIO, Iterator, Optional

from .._checks import short

__all__ = ["atomic_write", "check_output_file", "check_output_dir", "read_capped", "read_json"]

#: The longest file name (one path component) most file systems accept, in bytes.
NAME_MAX = 255
#: Every temporary file scoregen writes is named TMP_PREFIX + random + TMP_SUFFIX.
TMP_PREFIX, TMP_SUFFIX = ".sg-", ".tmp"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever; on a regular file it changes nothing.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


# ------------------------------------------------------------------------------------------- writing
def _umask() -> int:
    """The process's umask, read from /proc/self/status where the system shows it there (Linux): setting the
    umask to read it, even for an instant, changes the mode of files that other threads create meanwhile."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _umask_by_setting()


@functools.lru_cache(maxsize=None)
def _umask_by_setting() -> int:
    """The umask read the only portable way, by setting it and putting it back at once: done once and cached,
    so that the window in which another thread could create a file under the wrong mask opens only once."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _creation_mode() -> int:
    """The permissions ``open()`` gives a new file (0o666 less the umask). mkstemp's 0o600 would hide a
    checkpoint or a sample file from the user's group, unlike every other file they write."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def _atomic_write(path: str | os.PathLike, mode: str, prefix: str) -> Iterator[IO]:
    """:func:`atomic_write` with the temporary file named ``prefix`` + random + TMP_SUFFIX (checkpoints use
    their own prefix, so that a save can sweep up the temporaries of a killed save and nothing else)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # mkstemp opens O_CREAT | O_EXCL | O_NOFOLLOW under a fresh random name: nothing planted beside the
    # destination (a symlink under any name) can redirect the write, and the name is short whatever `path` is.
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=TMP_SUFFIX)
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
    with _atomic_write(path, mode, TMP_PREFIX) as f:
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


# ------------------------------------------------------------------------------- output destinations
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
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a file: give a file name inside it")
    if suffix is not None and not name.lower().endswith(suffix.lower()):
        raise ValueError(f"{path!r} must name a {suffix} file")
    _check_creatable(path)


def check_output_dir(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Refuse, with a ValueError naming ``path``, a folder a checkpoint (or ``what``) cannot be written to: an empty name, a
    name longer than NAME_MAX bytes, an existing file (or a dangling link), a folder that is not writable, or
    a missing folder whose nearest existing ancestor is a file or not writable. Call it before any work."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"the {what} folder is empty: name a folder")
    _check_names(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        problem = "is a file, not a folder" if os.path.isfile(path) else \
            ("is a link to nothing" if os.path.islink(path) and not os.path.exists(path) else "exists and is not a folder")
        raise ValueError(f"{path!r} {problem}: choose a folder for the {what}")
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"the folder {path!r} is not writable (no permission, or a read-only file system); "
                             "choose another folder")
    else:
        _check_creatable(path)


# -------------------------------------------------------------------------------------------- reading
def _open_regular(path: str, what: str, *, follow_symlinks: bool = False) -> BinaryIO:
    """``path`` opened for reading without blocking, refused (ValueError) unless it is a regular file: a FIFO,
    a device or a folder, whose reads could block forever or never end. Without ``follow_symlinks`` a symbolic
    link is refused too (a checkpoint's files must be the files in its folder)."""
    try:
        fd = os.open(path, _READ_FLAGS | (0 if follow_symlinks else _NOFOLLOW))
    except OSError:
        if not follow_symlinks and os.path.islink(path):
            raise ValueError(f"{path}: {what} is a symbolic link; it must be a plain file (links are not followed "
                             "here)") from None
        raise
    try:
        if not follow_symlinks and not _NOFOLLOW and os.path.islink(path):  # no O_NOFOLLOW here: check after opening
            raise ValueError(f"{path}: {what} is a symbolic link; it must be a plain file (links are not followed here)")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: {what} is not a regular file (a folder, a pipe or a device?); give a file")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_capped(path: str | os.PathLike, max_bytes: int, what: str, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of a small regular file (a config, a target), refused with a ValueError naming ``path`` and
    ``what`` when it is not a regular file (see :func:`_open_regular`; ``follow_symlinks=False`` refuses links
    too) or holds more than ``max_bytes``: reading it whole would cost memory out of proportion to its job."""
    path = os.fspath(path)
    with _open_regular(path, what, follow_symlinks=follow_symlinks) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path}: larger than the {max_bytes / 2**20:g} MiB {what} may have; is it the right file?")
    return data


def read_json(path: str | os.PathLike, max_bytes: int, what: str, *, follow_symlinks: bool = True) -> Any:
    """A JSON file parsed (:func:`read_capped` first); anything that is not JSON — bad syntax, bad encoding,
    nesting too deep for the parser — is a ValueError naming the file."""
    data = read_capped(path, max_bytes, what, follow_symlinks=follow_symlinks)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{os.fspath(path)}: {what} is not valid JSON ({short(str(e), 200)})") from None


#: The environment variable naming scoregen's cache folder (optimised grids, Analytic-DPM's estimates).
CACHE_ENV = "SCOREGEN_CACHE"


def cache_dir(sub: str) -> str:
    """The cache subfolder ``sub``: ``$SCOREGEN_CACHE/sub``, else ``$XDG_CACHE_HOME/scoregen/sub``, else
    ``~/.cache/scoregen/sub``."""
    root = os.environ.get(CACHE_ENV, "").strip()
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        root = os.path.join(xdg or os.path.join(os.path.expanduser("~"), ".cache"), "scoregen")
    return os.path.join(root, sub)
