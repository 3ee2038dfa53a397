"""The example Echo and Calc services (examples/idl/echo.thrift) in Python: a
`thriftworker-py` target, packaged by deploy/python-worker.Dockerfile and run
by the `sidecar-python` and `pool-python` overlays:

    thriftworker-py --endpoint ipc:///run/thriftworker/sock/workers.sock \\
        --workers 2 --mode threads --concurrency 4 echo_app:services

The handlers behave like the Rust example worker's (examples/src/lib.rs), so
either can serve the same clients. To serve your own services, replace this
module with yours: any `module:function` returning {"Service": processor}
(see deploy/README.md, "Run a Python worker").

thriftpy2 reads the IDL when `services()` runs: no Thrift compiler and no
generated code in the image. `thriftworker-py --check echo_app:services`
runs it too, so a broken IDL fails the check, not the first call.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.thrift import TProcessor

_HERE = Path(__file__).resolve().parent
# The image copies examples/idl/echo.thrift next to this file; in the
# repository the IDL stays where it is, in one place.
_IN_IMAGE = _HERE / "echo.thrift"
_IN_REPO = _HERE.parent / "idl" / "echo.thrift"
IDL = _IN_IMAGE if _IN_IMAGE.exists() else _IN_REPO

#: Longest sleep `slow` accepts; longer requests are capped (as in Rust).
MAX_SLOW_MS = 10 * 60 * 1000


class EchoHandler:
    """Echoes, counts one-way calls (per process), throws on request, sleeps.

    Shared by the calls running at once on the thread pool (--mode threads),
    hence the lock around the counter."""

    def __init__(self, error: Any) -> None:
        self._error = error
        self._lock = threading.Lock()
        self._notified = 0

    def echo(self, message: str) -> str:
        return message

    def notify(self, message: str) -> None:
        with self._lock:
            self._notified += 1

    def notified(self) -> int:
        with self._lock:
            return self._notified

    def fail(self, message: str, code: int) -> str:
        # Always the declared exception: the reply carries it as the result.
        raise self._error(message=message, code=code)

    def slow(self, message: str, sleep_ms: int) -> str:
        # Blocks its thread only: the worker keeps heartbeating meanwhile.
        time.sleep(min(max(sleep_ms, 0), MAX_SLOW_MS) / 1000.0)
        return message

    def whoami(self) -> str:
        return f"python:{os.getpid()}"


class CalcHandler:
    def add(self, a: int, b: int) -> int:
        # i32 arithmetic that wraps, like Rust's wrapping_add (Python ints
        # do not overflow, and thriftpy2 refuses to write one out of range).
        return (a + b + 2**31) % 2**32 - 2**31


def services() -> dict[str, Any]:
    """The target: {"Echo": processor, "Calc": processor}."""
    echo = thriftpy2.load(str(IDL), module_name="echo_thrift")
    return {
        "Echo": TProcessor(echo.Echo, EchoHandler(echo.EchoError)),
        "Calc": TProcessor(echo.Calc, CalcHandler()),
    }
