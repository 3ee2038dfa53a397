"""File-descriptor helpers shared by the worker loop and the supervisor.

The wake-up pipe is non-blocking and must stay so: eventlet's monkey-patched
`os.read`/`os.write` do not return EAGAIN but wait for the descriptor, which
would park the loop on an empty pipe. These helpers use the original
functions whatever was patched.
"""

from __future__ import annotations

import contextlib
import os
import sys
from types import ModuleType


def _os() -> ModuleType:
    """The `os` module as it was before eventlet patched it (if it did)."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is None:
        return os
    original: ModuleType = patcher.original("os")
    return original


def drain(fd: int) -> None:
    """Reads a non-blocking pipe (a wake-up pipe) until it is empty."""
    read = _os().read
    with contextlib.suppress(BlockingIOError):
        while read(fd, 4096):
            pass


def poke(fd: int) -> None:
    """Writes one byte to a non-blocking wake-up pipe; a full pipe (the
    reader wakes anyway) or a closed one (it is gone) is not an error."""
    with contextlib.suppress(BlockingIOError, OSError):
        _os().write(fd, b"x")
