"""A worker process's loop: one ZeroMQ DEALER socket speaking the worker
protocol (docs/worker-protocol.md) to one data plane. Where calls run is
the mode: inline on the socket's thread, on a bounded thread pool, as
asyncio tasks, in gevent or eventlet green threads (`_green`), or as
Deferreds in the Twisted reactor (`_twisted`).

The socket is only ever used by the thread that calls `run()`. In `threads`
mode each finished call is put on a queue and a byte is written to a pipe
that the loop polls together with the socket, so a reply leaves as soon as
it is ready and the loop never blocks on a handler.

What the loop guarantees the data plane:
- never more calls at once than the credit announced in READY;
- a HEARTBEAT whenever it has sent nothing for one interval (inline mode:
  between calls, so a handler that runs for longer than
  `heartbeat_liveness` intervals gets the worker declared dead; run long
  handlers in `threads` mode);
- exactly one REPLY per REQUEST of the current registration; replies meant
  for a connection that is gone are dropped;
- on `stop()` (SIGTERM/SIGINT from the CLI): DISCONNECT, the calls in
  flight finished and answered, then it waits for the data plane's goodbye
  (at most `leave_timeout`) before it closes the socket;
- after a DISCONNECT from the data plane (it restarted, or evicted us) or
  `heartbeat_liveness` silent intervals: READY again, with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio as zmq_asyncio

from . import codec, context, wire
from ._fd import drain, poke
from ._green import GreenRuntime
from .processors import CallProcessor, adapt

log = logging.getLogger("thriftworker")

MODES = ("inline", "threads", "asyncio", "gevent", "eventlet", "twisted")
#: Messages handled in a row before the loop looks at its timers again.
_BURST = 256
#: Replies held back in a burst (inline and threads modes) before they are sent anyway.
_COALESCE = 16

# pyzmq's Socket methods without their Python layer (flag enums, typing
# casts): a third of a worker's CPU per call went there (cProfile under
# bench/run's load). Same semantics for bytes frames.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def default_prefetch(mode: str, concurrency: int) -> int:
    """Calls held ready by default: 16 inline (short handlers back to back:
    +55% calls/s over 0 at 64 connections in bench/run), `concurrency` with
    threads, none with asyncio."""
    if mode == "inline":
        return 16
    # Threads: one waiting per thread. Asyncio, gevent, eventlet, twisted:
    # every call starts at once (a task, a green thread, a Deferred), so
    # holding more would only run more at once.
    return concurrency if mode == "threads" else 0


class Refused(Exception):
    """The data plane refused our READY (wrong token, unknown service)."""


@dataclass
class _Registration:
    """What holds for one connection to the data plane."""

    session: int
    registered: bool = False
    ever: bool = False
    #: The worker protocol version of this registration: READY goes as the
    #: newest; a data plane that speaks only version 1 refuses it and gets
    #: READY version 1 (no call headers).
    version: int = wire.VERSION
    ready_sent_at: float | None = None
    next_ready_at: float = 0.0
    backoff: float = 0.1


class Worker:
    """Serves `services` ({"Echo": processor, ...}) for the data plane at
    `endpoint` until `stop()` is called.

    `mode`: "inline" (one call at a time, on the socket's thread: the least
    overhead per call), "threads" (`concurrency` calls at once on a thread
    pool: for handlers that block), "asyncio" (coroutine handlers),
    "gevent"/"eventlet" (green threads; the process should be
    monkey-patched), "twisted" (Deferreds in the reactor; once per process).
    The credit announced is the calls run at once (1 inline, `concurrency`
    otherwise) plus `prefetch`: calls held ready at the worker, so it does
    not sit idle for the round trip between a reply and the next call (a
    held call whose deadline passes is not run); by default 16 inline,
    `concurrency` with threads, 0 otherwise (`default_prefetch`).

    The worker token comes from `token`, else the file `token_file`, else
    the environment variable THRIFTWORKER_WORKER_TOKEN.

    `max_requests` (if not 0): leave gracefully after that many calls (the
    supervisor replaces the process). `parent_pid`: leave gracefully once
    that process (the supervisor) is no longer our parent. `on_ready(worker_id)` is called each
    time the data plane accepts the worker. `zmq_context`: the ZeroMQ context
    of the socket (default: pyzmq's shared instance); refused in asyncio
    mode, which opens a `zmq.asyncio` context of its own.
    """

    def __init__(
        self,
        endpoint: str,
        services: Mapping[str, Any],
        *,
        mode: str = "inline",
        concurrency: int = 1,
        prefetch: int | None = None,
        token: str | bytes | None = None,
        token_file: str | None = None,
        heartbeat_liveness: int = 3,
        leave_timeout: float = 10.0,
        max_requests: int = 0,
        parent_pid: int | None = None,
        on_ready: Callable[[str], None] | None = None,
        zmq_context: zmq.Context[Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "inline" and concurrency != 1:
            raise ValueError("inline mode runs one call at a time: use mode='threads' for concurrency > 1")
        if not 1 <= concurrency <= wire.MAX_CREDIT:
            raise ValueError(f"concurrency must be between 1 and {wire.MAX_CREDIT}")
        if prefetch is None:
            prefetch = default_prefetch(mode, concurrency)
        if not 0 <= prefetch <= wire.MAX_CREDIT - concurrency:
            raise ValueError(f"prefetch must be between 0 and {wire.MAX_CREDIT - concurrency}")
        if not services:
            raise ValueError("give at least one service: services={'Name': processor}")
        self.endpoint = endpoint
        self.mode = mode
        self.concurrency = concurrency
        # What the data plane may send: the calls that run, plus the ones
        # held ready so the worker never waits a round trip for the next.
        self.credit = concurrency + prefetch
        self.processors: dict[str, CallProcessor] = {n: adapt(p) for n, p in services.items()}
        if mode == "inline":
            for p in self.processors.values():
                if hasattr(p, "exclusive"):
                    p.exclusive = True  # one call at a time: it may reuse its protocol objects
        needs = {"asyncio": "serve_async", "twisted": "serve_deferred"}.get(mode)
        for name, p in self.processors.items():
            if needs is not None and not hasattr(p, needs):
                raise TypeError(f"service {name!r}: {mode} mode needs a processor with {needs}")
        if mode == "asyncio" and zmq_context is not None:
            raise ValueError("asyncio mode opens its own ZeroMQ context (zmq.asyncio): do not pass zmq_context")
        self.token = _load_token(token, token_file)
        self.liveness = heartbeat_liveness
        self.leave_timeout = leave_timeout
        self.max_requests = max_requests
        self.parent_pid = parent_pid
        self._served = 0
        self._on_ready_cb = on_ready
        self.worker_id: str | None = None
        self._ctx = zmq_context or zmq.Context.instance()
        self._sock: zmq.Socket[Any] | None = None
        self._sock_fd = -1
        self._poller = zmq.Poller()
        self._green: GreenRuntime | None = None
        self._green_waiting = False
        self._reactor_loop: Any = None
        self._apoller: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reg = _Registration(session=0)
        #: Reply-header lists of calls in flight (version 2 registrations only).
        self._reply_headers: dict[int, list[tuple[bytes, bytes]]] = {}
        self._heartbeat = 1.0
        self._last_sent = self._last_recv = time.monotonic()
        self._outstanding: set[int] = set()
        self._running = 0
        self._stop = threading.Event()
        self._leaving_since: float | None = None
        self._bye = False
        self._pool: _CallThreads | None = None
        self._results: queue.SimpleQueue[tuple[int, int, bytes]] = queue.SimpleQueue()
        # Threads mode: the loop is (about to be) blocked in poll, so a
        # finished call must wake it; otherwise it finds the result itself.
        self._polling = False
        self._outbox: list[list[bytes]] = []
        self._coalesce = mode in ("inline", "threads")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- public ---------------------------------------------------------
    def stop(self) -> None:
        """Leave gracefully (thread-safe; also safe from a signal handler)."""
        self._stop.set()
        self._wake()

    @property
    def wakeup_fd(self) -> int:
        """A file descriptor whose writes wake the loop (for `signal.set_wakeup_fd`)."""
        return self._wake_w

    def run(self) -> None:
        """Serves until `stop()`; raises `Refused` if the first READY is refused."""
        if self.mode == "threads":
            self._pool = _CallThreads(self.concurrency, self._serve_on_pool)
        elif self.mode in ("gevent", "eventlet"):
            # Waiting yields to the handlers' green threads (the process is
            # expected to be monkey-patched: thriftworker-py does it first).
            self._green = GreenRuntime(self.mode, self.concurrency)
        try:
            if self.mode == "asyncio":
                asyncio.run(self._run_async())
            elif self.mode == "twisted":
                from ._twisted import ReactorLoop

                self._reactor_loop = ReactorLoop(self)
                self._reactor_loop.run()
            else:
                self._open_socket()
                while not self._done():
                    self._turn()
        finally:
            if self._sock is not None:
                self._sock.close(linger=2000)  # the last REPLYs and DISCONNECT go out
            if self._pool is not None:
                self._pool.shutdown()
            os.close(self._wake_r)
            os.close(self._wake_w)

    async def _run_async(self) -> None:
        """The asyncio mode: the same loop, awaiting the socket and the wake
        pipe on the event loop; each call is a task (`serve_async` awaits
        handler methods that are coroutines)."""
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq_asyncio.Context()
        self._open_socket()
        try:
            while not self._done():
                self._before_poll()
                events = dict(await self._apoller.poll(timeout=self._poll_ms()))
                if self._wake_r in events:
                    drain(self._wake_r)
                self._read_burst()
        finally:
            for t in self._tasks:
                t.cancel()

    # -- the loop -------------------------------------------------------
    def _done(self) -> bool:
        if self._leaving_since is None:
            return False
        if self._running or not self._results.empty():
            return False
        return self._bye or time.monotonic() - self._leaving_since > self.leave_timeout

    def _turn(self) -> None:
        self._before_poll()
        if self._green is not None:
            woke = self._green_wait()
        elif self._pool is not None:
            self._polling = True  # before looking at the results: see _serve_on_pool
            wait = 0 if not self._results.empty() else self._poll_ms()
            woke = self._wake_r in dict(self._poller.poll(timeout=wait))
            self._polling = False
        else:
            woke = self._wake_r in dict(self._poller.poll(timeout=self._poll_ms()))
        if woke:
            drain(self._wake_r)
        if self._pool is not None:
            self._send_results()
        self._read_burst()

    def _before_poll(self) -> None:
        """Leaving, registration and heartbeats: what is due before waiting."""
        now = time.monotonic()
        if self.parent_pid is not None and not self._stop.is_set() and os.getppid() != self.parent_pid:
            # Our supervisor is gone (killed): leave rather than serve on unwatched.
            log.warning("supervisor %d is gone: leaving", self.parent_pid)
            self._stop.set()
        if self._stop.is_set() and self._leaving_since is None:
            self._leave(now)
        if self._leaving_since is None:
            self._keep_registered(now)
        if self._reg.registered and now - self._last_sent >= self._heartbeat:
            self._send(wire.heartbeat())

    def _green_wait(self) -> bool:
        """Green modes: waits for the socket or the wake-up pipe, yielding
        to the handlers meanwhile; True if the pipe woke us."""
        assert self._green is not None
        if self._message_waiting():
            return False  # no wait
        self._green_waiting = True
        try:
            readable = self._green.wait([self._sock_fd, self._wake_r], self._poll_ms() / 1000.0)
        finally:
            self._green_waiting = False
        return self._wake_r in readable

    def _message_waiting(self) -> bool:
        """ZMQ_EVENTS says a message can be read now. ZMQ_FD is edge-triggered
        (see `_green`): after a send, this is how the green and Twisted loops
        learn of a message whose signal the send consumed."""
        sock = self._sock
        return sock is not None and bool(int(_get(sock, _EVENTS)) & _POLLIN)

    def _poll_ms(self) -> int:
        wait = self._heartbeat / 2 if self._reg.registered else 0.05
        return max(1, int(wait * 1000))

    def _read_burst(self) -> bool:
        """Handles the messages already here, up to a bound (then the loop's
        timers get their turn): in inline mode, calls back to back. True if
        it stopped at the bound (more may be waiting)."""
        try:
            return self._read_messages()
        finally:
            self._flush()

    def _read_messages(self) -> bool:
        sock = self._sock
        assert sock is not None
        for _ in range(_BURST):
            try:
                frames = [_recv(sock, _NOBLOCK)]
            except zmq.Again:
                return False
            while _get(sock, _RCVMORE):
                frames.append(_recv(sock, 0))
            self._on_message(frames)
            if self._sock is not sock:
                return False  # reconnected meanwhile: the new socket is read next
        return True

    def _leave(self, now: float) -> None:
        self._leaving_since = now
        log.info("leaving: DISCONNECT sent, %d call(s) in flight", self._running)
        if self._reg.registered:
            self._send(wire.disconnect("worker shutting down"))
        else:
            self._bye = True  # nobody to say goodbye to

    def _keep_registered(self, now: float) -> None:
        reg = self._reg
        if not reg.registered and reg.ready_sent_at is None:
            # Re-register once the calls of the earlier registration are done.
            if now >= reg.next_ready_at and self._running == 0:
                self._send_ready()
        elif reg.ready_sent_at is not None and now - reg.ready_sent_at > max(2.0, reg.backoff):
            log.warning("no answer to READY from %s: reconnecting", self.endpoint)
            reg.backoff = min(reg.backoff * 2, 5.0)
            self._open_socket()
        elif reg.registered and now - self._last_recv > self._heartbeat * self.liveness:
            log.warning("data plane silent for %.1fs: reconnecting", now - self._last_recv)
            self._open_socket()

    # -- socket ---------------------------------------------------------
    def _open_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(self.endpoint)
        self._sock = sock
        self._sock_fd = int(_get(sock, zmq.FD))
        if self._loop is not None:
            self._apoller = zmq_asyncio.Poller()
            self._apoller.register(sock, zmq.POLLIN)
            self._apoller.register(self._wake_r, zmq.POLLIN)
        elif self._reactor_loop is not None:
            self._reactor_loop.on_socket(self._sock_fd)
        elif self._green is None:
            self._poller = zmq.Poller()
            self._poller.register(sock, zmq.POLLIN)
            self._poller.register(self._wake_r, zmq.POLLIN)
        backoff = self._reg.backoff
        ever = self._reg.ever
        self._reg = _Registration(session=self._reg.session + 1, ever=ever, backoff=backoff)
        self._outstanding = set()
        self._reply_headers.clear()
        self._outbox = []  # replies for the socket that is gone
        self._send_ready()

    def _flush(self) -> None:
        """Sends the replies held back during a burst (inline and threads modes)."""
        if self._outbox:
            held, self._outbox = self._outbox, []
            for frames in held:
                self._send_now(frames)

    def _send(self, frames: list[bytes]) -> None:
        if self._outbox:
            self._flush()  # in order: held replies first
        self._send_now(frames)

    def _send_now(self, frames: list[bytes]) -> None:
        sock = self._sock
        assert sock is not None
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            _send(sock, frame, _SNDMORE if i < last else 0)
        self._last_sent = time.monotonic()

    def _send_ready(self) -> None:
        self._send(wire.ready(self.credit, self.token, list(self.processors), self._reg.version))
        self._reg.ready_sent_at = self._last_recv = time.monotonic()

    # -- messages -------------------------------------------------------
    def _on_message(self, frames: list[bytes]) -> None:
        self._last_recv = time.monotonic()
        try:
            msg = wire.decode(frames)
        except wire.WireError as e:
            log.warning("dropping a malformed message from the data plane: %s", e)
            return
        if isinstance(msg, wire.Request):
            self._on_request(msg)
        elif isinstance(msg, wire.ReadyAck):
            self._on_ready(msg)
        elif isinstance(msg, wire.Disconnect):
            self._on_disconnect(msg.reason)

    def _on_ready(self, ack: wire.ReadyAck) -> None:
        reg = self._reg
        self._heartbeat = max(ack.heartbeat_interval_ms, 10) / 1000.0
        reg.registered = reg.ever = True
        reg.ready_sent_at = None
        reg.backoff = 0.1
        reg.version = min(reg.version, ack.version)
        self._outstanding = set()
        self.worker_id = ack.worker_id
        log.info(
            "ready worker_id=%s services=%s credit=%d mode=%s",
            ack.worker_id,
            ",".join(self.processors),
            self.credit,
            self.mode,
        )
        if self._on_ready_cb is not None:
            self._on_ready_cb(ack.worker_id)
        if self._leaving_since is not None:
            # Told to stop while our READY was on its way: leave properly,
            # or calls sent to us meanwhile would be lost when we close.
            self._bye = False
            self._send(wire.disconnect("worker shutting down"))

    def _on_disconnect(self, reason: str) -> None:
        reg = self._reg
        if self._leaving_since is not None:
            self._bye = True
            return
        old_plane = "unsupported worker protocol version" in reason  # "refused: unsupported ..."
        if not reg.registered and reg.version > wire.VERSION_1 and old_plane:
            log.info("the data plane speaks worker protocol version 1: serving without call headers")
            reg.version = wire.VERSION_1
            self._send_ready()
            return
        if not reg.ever:
            raise Refused(reason)
        log.warning("data plane sent DISCONNECT (%s): registering again", reason)
        reg.registered = False
        reg.ready_sent_at = None
        reg.next_ready_at = time.monotonic() + reg.backoff
        reg.backoff = min(reg.backoff * 2, 5.0)

    def _on_request(self, req: wire.Request) -> None:
        if len(self._outstanding) >= self.credit:
            log.error(
                "CREDIT VIOLATION: request %d arrived with %d unanswered (credit %d)",
                req.request_id,
                len(self._outstanding),
                self.credit,
            )
        self._outstanding.add(req.request_id)
        deadline = time.monotonic() + req.timeout_ms / 1000.0
        if self._reg.version >= 2:
            # Reply headers are possible: the handler's list, kept until its reply.
            reply_headers: list[tuple[bytes, bytes]] = []
            self._reply_headers[req.request_id] = reply_headers
            call = context.CallContext(
                req.request_id, req.service, req.timeout_ms, deadline, req.headers, reply_headers
            )
        else:
            call = context.CallContext(req.request_id, req.service, req.timeout_ms, deadline)
        session = self._reg.session
        self._running += 1
        if self._pool is not None:
            self._pool.submit((session, call, req))
        elif self._green is not None:
            self._green.spawn(self._serve_green, session, call, req)
        elif self._reactor_loop is not None:
            self._reactor_loop.start_call(session, call, req)
        elif self._loop is not None:
            task = self._loop.create_task(self._serve_task(session, call, req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._finish(session, req.request_id, self._serve(call, req))

    def _refused(self, call: context.CallContext, req: wire.Request) -> bytes | None:
        """The REPLY of a call that must not run, or None if it may."""
        if req.service not in self.processors:
            text = f"thriftworker: this worker does not serve {req.service!r}"
            return _failure(req, codec.UNKNOWN_METHOD, text)
        if call.expired():
            # Its time is up: the data plane has answered the client already.
            return _failure(req, codec.INTERNAL_ERROR, "thriftworker: deadline passed before the call started")
        return None

    def _serve(self, call: context.CallContext, req: wire.Request) -> bytes:
        """Runs one call; always returns the bytes of its REPLY."""
        refused = self._refused(call, req)
        if refused is not None:
            return refused
        processor = self.processors[req.service]
        token = context._set(call)
        try:
            return processor.serve(req.protocol, req.message)
        except Exception as e:  # a CallProcessor of the user's that raises
            log.exception("call failed")
            return _failure(req, codec.INTERNAL_ERROR, f"thriftworker: {type(e).__name__}: {e}")
        finally:
            context._reset(token)

    async def _serve_task(self, session: int, call: context.CallContext, req: wire.Request) -> None:
        """One call in asyncio mode (a task: its context holds `current_call`)."""
        reply = self._refused(call, req)
        if reply is None:
            processor: Any = self.processors[req.service]
            context._set(call)
            try:
                reply = await processor.serve_async(req.protocol, req.message)
            except Exception as e:
                log.exception("call failed")
                reply = _failure(req, codec.INTERNAL_ERROR, f"thriftworker: {type(e).__name__}: {e}")
        self._finish(session, req.request_id, reply)

    def _serve_green(self, session: int, call: context.CallContext, req: wire.Request) -> None:
        """One call in a green mode, in its own green thread. The reply is
        sent from here: sends go through `_send`, which never yields, so the
        frames of two replies cannot interleave on the socket."""
        self._finish(session, req.request_id, self._serve(call, req))
        if self._green_waiting and self._message_waiting():
            # The send consumed the FD's signal of a message that arrived
            # meanwhile: the loop, waiting on the FD, would not see it.
            self._wake()

    def _serve_on_pool(self, session: int, call: context.CallContext, req: wire.Request) -> None:
        try:
            reply = self._serve(call, req)
        except BaseException:  # never lose a call's answer
            reply = _failure(req, codec.INTERNAL_ERROR, "thriftworker: the call failed")
        self._results.put((session, req.request_id, reply))
        # Put, then look: if the loop set _polling after our look, it sees
        # the result before it waits (it checks the queue after setting it).
        if self._polling:
            self._wake()

    def _send_results(self) -> None:
        while True:
            try:
                session, request_id, reply = self._results.get_nowait()
            except queue.Empty:
                return
            self._finish(session, request_id, reply)

    def _finish(self, session: int, request_id: int, reply: bytes) -> None:
        self._running -= 1
        self._served += 1
        if self.max_requests and self._served == self.max_requests:
            log.info("served %d calls (max_requests): leaving to be replaced", self._served)
            self._stop.set()
        headers = self._reply_headers.pop(request_id, None) if self._reply_headers else None
        if session != self._reg.session:
            return  # for an earlier connection: that registration is gone
        self._outstanding.discard(request_id)
        frames = wire.reply(request_id, reply, headers) if headers else wire.reply(request_id, reply)
        if self._coalesce:
            # Inline and threads modes: the replies of one burst (or turn)
            # leave together at its end (`_flush`), so ZeroMQ's I/O thread is
            # woken once per burst, not once per call; at most `_COALESCE` are held.
            self._outbox.append(frames)
            if len(self._outbox) >= _COALESCE:
                self._flush()
        else:
            self._send(frames)

    def _wake(self) -> None:
        poke(self._wake_w)


class _CallThreads:
    """`n` threads running calls from one queue (threads mode). Lighter per
    call than `concurrent.futures.ThreadPoolExecutor` (no Future, no
    semaphore): the loop hands over a tuple, a thread takes it."""

    def __init__(self, n: int, serve: Callable[[int, context.CallContext, wire.Request], None]) -> None:
        self._calls: queue.SimpleQueue[tuple[int, context.CallContext, wire.Request] | None] = queue.SimpleQueue()
        self._serve = serve
        self._threads = [
            threading.Thread(target=self._run, name=f"thriftworker-call-{i}", daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def submit(self, call: tuple[int, context.CallContext, wire.Request]) -> None:
        self._calls.put(call)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            self._serve(*item)

    def shutdown(self) -> None:
        """Lets each thread end after the calls already queued (daemon
        threads: a handler that never returns does not hold the process)."""
        for _ in self._threads:
            self._calls.put(None)


def _failure(req: wire.Request, kind: int, text: str) -> bytes:
    """The REPLY of a call answered without its processor."""
    return codec.failure_reply(req.protocol, req.message, kind, text)


def _load_token(token: str | bytes | None, token_file: str | None) -> bytes:
    if token is not None:
        return token.encode() if isinstance(token, str) else token
    if token_file is not None:
        with open(token_file, "rb") as f:
            value = f.read().strip()
        if not value:
            raise ValueError(f"the worker token file {token_file} is empty")
        return value
    return os.environ.get("THRIFTWORKER_WORKER_TOKEN", "").strip().encode()
