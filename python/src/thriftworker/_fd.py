"""File-descriptor helpers shared by the worker loop and the supervisor."""

from __future__ import annotations

import contextlib
import os


def drain(fd: int) -> None:
    """Reads a non-blocking pipe (a wake-up pipe) until it is empty."""
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass
