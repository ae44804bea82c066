"""The checkpoint folder lock: one writer per folder, across processes and across the threads of one."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import socket
import stat
import sys
import threading
from dataclasses import dataclass
from typing import Iterator, Optional

from ..errors import FolderInUseError
from .files import _NOFOLLOW

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see checkpoint_lock)
    fcntl = None

__all__ = ["checkpoint_lock", "LOCK_NAME"]

LOCK_NAME = ".scoregen.lock"


@dataclass
class _Hold:
    """This process's hold on a folder: the locked file (None without fcntl), the thread that owns the hold,
    and how many times that thread has entered :func:`checkpoint_lock` for the folder."""

    fd: Optional[int]
    owner: threading.Thread
    depth: int = 0


_holds: dict = {}  # real path of a locked folder -> its _Hold
_holds_guard = threading.Lock()


def _holder(fd: int) -> str:
    """Who holds a lock, from what the holder wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return (f"pid {int(info['pid'])} on {str(info['host'])}, running `{str(info['command'])}` "
                f"since {str(info['since'])}")
    except (OSError, ValueError, TypeError, KeyError):
        return "a process that has not written its details yet"


def _acquire(folder: str, shown: str) -> Optional[int]:
    """The lock file of ``folder`` opened and flock'ed, with this process's details written into it; None
    where there is no fcntl."""
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

    Another process asking for the same folder gets :class:`FolderInUseError` naming the holder; so does
    another thread of this process (flock cannot tell the threads of one process apart, so the hold is
    recorded per thread here). The lock is reentrant for the thread that holds it (counted per real path),
    so :func:`save_checkpoint` takes it while :func:`~scoregen.training.train` holds it for a whole run. The
    operating system releases it when the process ends, however it ends (even by SIGKILL), so a lock is
    never stale; the lock file itself stays (deleting it would race with a process opening it). Where
    ``fcntl`` does not exist (Windows) there is no lock between processes: nothing stops two of them from
    writing the same folder there.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    key = os.path.realpath(directory)
    me = threading.current_thread()
    with _holds_guard:
        hold = _holds.get(key)
        if hold is None:
            hold = _holds[key] = _Hold(_acquire(key, directory), me)
        elif hold.owner is not me:
            raise FolderInUseError(f"{directory} is held by another thread of this process ({hold.owner.name!r}, "
                                   "writing checkpoints there): wait for it to finish, or choose another folder")
        hold.depth += 1
    try:
        yield
    finally:
        with _holds_guard:
            hold.depth -= 1
            if hold.depth == 0:
                del _holds[key]
                if hold.fd is not None:
                    os.close(hold.fd)
