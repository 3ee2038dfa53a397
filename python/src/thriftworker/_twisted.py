"""The `twisted` mode: the worker's loop inside the Twisted reactor (the
txZMQ model). Each socket's ZMQ_FD (one per data plane) and the wake-up
pipe are reactor readers, the loop's timers (heartbeats, registration,
leaving, resolution) one `callLater` chain, and each call a Deferred:
processors generated with `thrift --gen py:twisted` (handlers return
Deferreds), or any other processor whose handlers return values, Deferreds
or coroutines.

ZMQ_FD is edge-triggered (see `_green`): after a reply is sent the loop
reads its socket again if ZMQ_EVENTS says a message is waiting, since the
send may have consumed the FD's signal. While a connection is not up yet,
a signal on its FD runs the timers too (the connection may be up: READY).

The reactor runs once per process (Twisted cannot restart it), so this
mode is for `thriftworker-py --mode twisted` processes, not for workers
started and stopped inside a larger program.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._fd import drain

if TYPE_CHECKING:
    from .worker import Worker


class _Reader:
    """An IReadDescriptor for a bare file descriptor."""

    def __init__(self, fd: int, on_read: Any) -> None:
        self._fd = fd
        self._on_read = on_read

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:  # Twisted's interface names
        self._on_read()

    def connectionLost(self, reason: object) -> None:
        pass

    def logPrefix(self) -> str:
        return "thriftworker"


class ReactorLoop:
    """Runs `worker`'s loop in the reactor until it is done."""

    def __init__(self, worker: Worker) -> None:
        from twisted.internet import reactor
        from twisted.internet.interfaces import IReadDescriptor
        from zope.interface import directlyProvides

        self._reactor: Any = reactor
        self._provides: Any = lambda reader: directlyProvides(reader, IReadDescriptor)
        self._worker = worker
        #: One reader per socket, by session.
        self._readers: dict[Any, _Reader] = {}
        self._timer: Any = None
        self._read_scheduled = False
        self._error: BaseException | None = None

    def run(self) -> None:
        """Serves until the worker is done; raises what stopped it early
        (`Refused`)."""
        self._add(_Reader(self._worker._wake_r, self._on_wake))
        self._reactor.callWhenRunning(self._guarded, self._start)
        self._reactor.run(installSignalHandlers=False)
        if self._error is not None:
            raise self._error

    # -- called by the worker ---------------------------------------------
    def sync_sockets(self, sessions: list[Any]) -> None:
        """The worker's sockets are now those of `sessions`: read each when its FD signals."""
        for sess in [s for s in self._readers if s not in sessions]:
            self.forget_socket(sess)
        added = False
        for sess in sessions:
            if sess not in self._readers:
                reader = _Reader(sess.fd, self._on_readable)
                self._readers[sess] = reader
                self._add(reader)
                added = True
        if added:
            self._schedule_read()

    def forget_socket(self, sess: Any) -> None:
        """Before a socket is closed: stop watching its FD."""
        reader = self._readers.pop(sess, None)
        if reader is not None:
            self._reactor.removeReader(reader)

    def start_call(self, sess: Any, call: Any, req: Any) -> None:
        w = self._worker
        reply = w._refused(call, req)
        if reply is not None:
            self._finished(reply, sess, req.request_id)
            return
        d = w.processors[req.service].serve_deferred(req.protocol, req.message)  # type: ignore[attr-defined]
        d.addErrback(self._failed, req)
        d.addCallback(self._finished, sess, req.request_id)

    # -- reactor callbacks ----------------------------------------------------
    def _add(self, reader: _Reader) -> None:
        self._provides(reader)
        self._reactor.addReader(reader)

    def _start(self) -> None:
        self._worker._start()
        self._tick()

    def _on_wake(self) -> None:
        drain(self._worker._wake_r)
        self._guarded(self._tick)

    def _on_readable(self) -> None:
        self._read_scheduled = False
        self._guarded(self._tick if self._worker._connecting else self._read)

    def _read(self) -> None:
        if self._worker._read_burst():
            self._schedule_read()  # more is waiting: let the reactor breathe first
        self._check_done()

    def _schedule_read(self) -> None:
        if not self._read_scheduled:
            self._read_scheduled = True
            self._reactor.callLater(0, self._on_readable)

    def _tick(self) -> None:
        """The loop's timers, then the next tick."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._worker._before_poll()
        self._read()
        if self._reactor.running and not self._check_done():
            self._timer = self._reactor.callLater(self._worker._poll_ms() / 1000.0, self._guarded, self._tick)

    def _check_done(self) -> bool:
        if self._worker._done() and self._reactor.running:
            self._reactor.stop()
            return True
        return False

    def _finished(self, reply: bytes, sess: Any, request_id: int) -> None:
        w = self._worker
        w._finish(sess, request_id, reply)
        if w._message_waiting(sess):
            self._schedule_read()  # the send may have consumed the FD's signal
        if w._leaving_since is not None:
            self._guarded(self._tick)

    def _failed(self, failure: Any, req: Any) -> bytes:
        from . import codec

        e = failure.value
        return codec.failure_reply(
            req.protocol, req.message, codec.INTERNAL_ERROR, f"thriftworker: {type(e).__name__}: {e}"
        )

    def _guarded(self, fn: Any, *args: Any) -> None:
        """Runs `fn`; an exception (a refused READY) stops the reactor and
        is raised by `run`, instead of being logged and lost by Twisted."""
        try:
            fn(*args)
        except BaseException as e:
            if self._error is None:
                self._error = e
            if self._reactor.running:
                self._reactor.stop()
