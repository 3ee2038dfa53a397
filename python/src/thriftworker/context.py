"""The call being served, for handlers that want its deadline or headers.

`current_call()` returns the `CallContext` of the call the calling handler
serves (a `contextvars` variable: per thread in `threads` mode, per task in
`asyncio`), or `None` outside a call.

Headers are a THeader client's info headers (`client_timeout`,
`traceparent`, caller identity...), forwarded by a data plane that speaks
worker protocol version 2; `set_reply_header` sends headers back to such
clients::

    call = thriftworker.current_call()
    if call is not None:
        trace = call.header(b"traceparent")
        call.set_reply_header(b"x-served-by", b"worker-7")
"""

from __future__ import annotations

import contextvars
import time
from typing import NamedTuple

#: At most this many reply headers per call (the data plane's bound).
MAX_REPLY_HEADERS = 128


class CallContext(NamedTuple):
    """What the data plane said about one call (a tuple: one is made per call)."""

    request_id: int
    service: str
    #: Milliseconds the data plane gave the call when it sent it.
    timeout_ms: int
    #: `time.monotonic()` past which the data plane has answered the client itself.
    deadline: float
    #: The call's headers, (key, value) bytes in the order sent (empty
    #: unless the client sent some and the data plane speaks version 2).
    headers: tuple[tuple[bytes, bytes], ...] = ()
    #: Reply headers set by the handler (see `set_reply_header`); None when
    #: the data plane cannot take them (version 1).
    reply_headers: list[tuple[bytes, bytes]] | None = None

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def header(self, key: bytes) -> bytes | None:
        """The value of the first header named `key` (ASCII case-insensitive)."""
        key = key.lower()
        for k, v in self.headers:
            if k.lower() == key:
                return v
        return None

    def set_reply_header(self, key: bytes, value: bytes) -> bool:
        """Sends `key: value` back with the reply (to header-transport
        clients). False, and nothing sent, when the data plane speaks
        version 1 or beyond 128 reply headers."""
        if self.reply_headers is None or len(self.reply_headers) >= MAX_REPLY_HEADERS:
            return False
        self.reply_headers.append((bytes(key), bytes(value)))
        return True


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("thriftworker_call", default=None)


def current_call() -> CallContext | None:
    """The call the current handler serves, or None."""
    return _current.get()


def _set(ctx: CallContext | None) -> contextvars.Token[CallContext | None]:
    return _current.set(ctx)


def _reset(token: contextvars.Token[CallContext | None]) -> None:
    _current.reset(token)
