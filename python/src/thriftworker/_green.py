"""What the `gevent` and `eventlet` modes share: a bounded pool of green
threads for the calls, and a green `select` for the loop's wait, so that
waiting on the socket yields to the handlers.

The loop does not use the libraries' green ZeroMQ sockets or pollers. It
waits on the socket's ZMQ_FD itself, which is *edge*-triggered: it turns
readable when the socket's state changes, not while a message is waiting.
A handler's send processes the socket's pending commands, and with them
the news that a new call arrived, so after that send the FD is no longer
readable although a message is. pyzmq's green poller papers over this with
a 1.33 s minimum poll (a call stalled for up to 1.33 s); here the green
thread that sent a reply checks ZMQ_EVENTS and wakes the loop itself
(`Worker._serve_green`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

#: The modes this module runs.
KINDS = ("gevent", "eventlet")


class GreenRuntime:
    """The pool and the select of one green library."""

    def __init__(self, kind: str, concurrency: int) -> None:
        if kind == "gevent":
            import gevent.pool
            import gevent.select

            pool: Any = gevent.pool.Pool(concurrency)
            self.spawn: Callable[..., Any] = pool.spawn
            self.select: Callable[..., tuple[list[int], list[int], list[int]]] = gevent.select.select
        elif kind == "eventlet":
            eventlet = import_eventlet()
            from eventlet.green import select as green_select

            pool = eventlet.GreenPool(concurrency)
            self.spawn = pool.spawn_n
            self.select = green_select.select
        else:
            raise ValueError(f"not a green mode: {kind!r}")
        self._pool = pool

    def wait(self, fds: list[int], timeout: float) -> list[int]:
        """The fds of `fds` that are readable, waiting at most `timeout`
        seconds; other green threads run meanwhile."""
        readable, _, _ = self.select(fds, [], [], timeout)
        return readable


def import_eventlet() -> Any:
    """eventlet, without the deprecation notice it prints on import (eventlet
    is maintained in bugfix mode upstream; docs/python-worker.md says so and
    suggests gevent for new code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its EventletDeprecationWarning
        import eventlet

    return eventlet


def monkey_patch(kind: str) -> None:
    """Makes the process's blocking calls (sockets, sleeps, locks) yield to
    the other green threads: the first thing a green worker process does."""
    if kind == "gevent":
        from gevent import monkey

        monkey.patch_all()
    elif kind == "eventlet":
        import_eventlet().monkey_patch()
