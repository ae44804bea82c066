"""scoregen's own exception types, for failures that are neither bad input (ValueError) nor a missing file.

Every expected failure is one of ValueError, FileNotFoundError / FileExistsError / another OSError,
FloatingPointError (non-finite numbers), ImportError (an optional extra is missing) or a subclass of
:class:`ScoregenError`, always with a message that names what was wrong and how to fix it; the command
line prints that message as ``scoregen CMD: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import errno

__all__ = ["ScoregenError", "FolderInUseError", "DiskFullError"]


class ScoregenError(Exception):
    """Base class of scoregen's own errors."""


class FolderInUseError(ScoregenError):
    """Another process, or another thread of this one, holds the folder's lock (a trainer is writing checkpoints there)."""


class DiskFullError(ScoregenError, OSError):
    """No space left on the device while writing; what was written by the failed attempt has been removed."""

    def __init__(self, message: str):
        OSError.__init__(self, errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message
