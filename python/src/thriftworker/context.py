"""The call being served, for handlers that want its deadline.

`current_call()` returns the `CallContext` of the call the calling handler
serves (a `contextvars` variable: per thread in `threads` mode, per task in
`asyncio`), or `None` outside a call.
"""

from __future__ import annotations

import contextvars
import time
from typing import NamedTuple


class CallContext(NamedTuple):
    """What the data plane said about one call (a tuple: one is made per call)."""

    request_id: int
    service: str
    #: Milliseconds the data plane gave the call when it sent it.
    timeout_ms: int
    #: `time.monotonic()` past which the data plane has answered the client itself.
    deadline: float

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("thriftworker_call", default=None)


def current_call() -> CallContext | None:
    """The call the current handler serves, or None."""
    return _current.get()


def _set(ctx: CallContext | None) -> contextvars.Token[CallContext | None]:
    return _current.set(ctx)


def _reset(token: contextvars.Token[CallContext | None]) -> None:
    _current.reset(token)
