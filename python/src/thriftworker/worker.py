"""A worker process's loop: one ZeroMQ DEALER socket per data plane,
speaking the worker protocol (docs/worker-protocol.md) to each. Where calls
run is the mode: inline on the sockets' thread, on a bounded thread pool, as
asyncio tasks, in gevent or eventlet green threads (`_green`), or as
Deferreds in the Twisted reactor (`_twisted`).

The sockets are only ever used by the thread that calls `run()`. In
`threads` mode each finished call is put on a queue and a byte is written
to a pipe that the loop polls together with the sockets, so a reply leaves
as soon as it is ready and the loop never blocks on a handler.

Several data planes (a list of endpoints, or a name that resolves to
several addresses, `endpoints`): one connection each, the worker's credit
shared between them (`credit.CreditBook`) and moved with CREDIT (version 3).
With one data plane nothing of that shows: READY carries the full credit,
as it always did. Each mode waits on every socket at once: a `zmq.Poller`
(inline, threads), a `zmq.asyncio.Poller` (asyncio), the green `select` on
every ZMQ_FD (gevent, eventlet), one reactor reader per ZMQ_FD (twisted).
The sockets are ZMQ_IMMEDIATE: a data plane takes part in the split (and
is sent READY) once its connection is up, so an address where nothing
listens holds no credit.

What the loop guarantees each data plane:
- never more calls at once than the credit announced there, and never more
  at once over all data planes than the worker's credit;
- a HEARTBEAT whenever it has sent nothing for one interval (inline mode:
  between calls, so a handler that runs for longer than
  `heartbeat_liveness` intervals gets the worker declared dead; run long
  handlers in `threads` mode);
- exactly one REPLY per REQUEST of the current registration; replies meant
  for a connection that is gone are dropped;
- on `stop()` (SIGTERM/SIGINT from the CLI): DISCONNECT, the calls in
  flight finished and answered, then it waits for the data plane's goodbye
  (at most `leave_timeout`) before it closes the socket; the same for a
  data plane whose address is no longer among the endpoints' addresses;
- after a DISCONNECT from the data plane (it restarted, or evicted us),
  a lost connection or `heartbeat_liveness` silent intervals: READY again,
  with backoff;
- a data plane of an older version (no CREDIT) that holds more than its
  share while another waits for credit is left the same graceful way, then
  connected to again at once and registered with its share
  (docs/worker-protocol.md, rule 6).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq
import zmq.asyncio as zmq_asyncio

from . import codec, context, wire
from ._fd import drain, poke
from ._green import GreenRuntime
from .credit import CREDIT, READY, CreditBook, Share
from .endpoints import (
    DEFAULT_RESOLVE_INTERVAL,
    MAX_RESOLVE_INTERVAL,
    MIN_RESOLVE_INTERVAL,
    Resolver,
    ResolverThread,
    read_hosts,
)
from .processors import CallProcessor, adapt

log = logging.getLogger("thriftworker")

MODES = ("inline", "threads", "asyncio", "gevent", "eventlet", "twisted")
#: Messages handled in a row (per socket) before the loop looks at its timers again.
_BURST = 256
#: Replies held back in a burst (inline and threads modes) before they are sent anyway.
_COALESCE = 16
#: Messages queued on a socket before a send fails (it never should: what
#: a worker sends is bounded by its credit, plus a few control messages).
_SNDHWM = 2 * wire.MAX_CREDIT + 1024
#: Seconds between looks at a connection not up yet (its ZMQ_FD wakes the loop sooner).
_CONNECT_POLL = 0.5
#: Seconds between looks at an unregistered connection (READY due, or answered late).
_UNREGISTERED_POLL = 0.05

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
_POLLOUT = int(zmq.POLLOUT)
#: A connection not up after this long is logged ("cannot reach"), then
#: again at doubling intervals up to the maximum.
_UNREACHABLE_FIRST = 2.0
_UNREACHABLE_MAX = 60.0


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


class _Plane(Share):
    """One data plane (one address): its share of the credit, and its
    connection if it has one."""

    __slots__ = ("backoff", "endpoint", "sess", "wanted")

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.endpoint = endpoint
        self.sess: _Session | None = None
        #: Among the endpoints' addresses (else: left, then forgotten).
        self.wanted = True
        #: Wait before the next READY after a DISCONNECT or an unanswered READY.
        self.backoff = 0.1


class _Session:
    """One connection (DEALER socket) to one data plane, and the
    registration it carries. A call remembers its session: its reply goes
    out only if the session is still open."""

    __slots__ = (
        "broken",
        "bye",
        "closed",
        "connected",
        "fd",
        "heartbeat",
        "last_recv",
        "last_sent",
        "leaving_since",
        "next_ready_at",
        "outbox",
        "outstanding",
        "plane",
        "ready_sent_at",
        "registered",
        "reply_headers",
        "sock",
        "unreachable_every",
        "unreachable_warn_at",
        "version",
    )

    def __init__(self, plane: _Plane, sock: zmq.Socket[Any], fd: int) -> None:
        self.plane = plane
        self.sock = sock
        self.fd = fd
        self.closed = False
        #: A peer is attached (ZMQ_IMMEDIATE: POLLOUT seen): READY may go.
        self.connected = False
        #: While not connected: when to say so next, and then how often
        #: (2 s, doubling to a minute: ZeroMQ keeps trying by itself).
        self.unreachable_every = _UNREACHABLE_FIRST
        self.unreachable_warn_at = time.monotonic() + _UNREACHABLE_FIRST
        #: A send found no connection: reconnect.
        self.broken = False
        self.registered = False
        #: The worker protocol version of this registration: READY goes as
        #: the newest; a data plane that speaks an older one refuses it and
        #: is sent READY one version lower.
        self.version = wire.VERSION
        self.ready_sent_at: float | None = None
        self.next_ready_at = 0.0
        self.heartbeat = 1.0
        self.last_sent = self.last_recv = time.monotonic()
        #: Request ids of the current registration not answered yet.
        self.outstanding: set[int] = set()
        #: Reply-header lists of calls in flight (version 2+ registrations only).
        self.reply_headers: dict[int, list[tuple[bytes, bytes]]] = {}
        #: Replies held back during a burst (inline and threads modes).
        self.outbox: list[list[bytes]] = []
        #: DISCONNECT sent (stop, or the address is gone), and the goodbye.
        self.leaving_since: float | None = None
        self.bye = False


class Worker:
    """Serves `services` ({"Echo": processor, ...}) for the data plane(s)
    at `endpoint` until `stop()` is called.

    `endpoint`: one endpoint or a list. `ipc://PATH` and `tcp://IP:PORT`
    name one data plane each; `tcp://NAME:PORT` names every address NAME
    resolves to, resolved again every `resolve_interval` seconds and when a
    connection is lost (at most 64 data planes). `hosts_file`: a hosts(5)
    file consulted first, read at each resolution. The credit is shared
    between the data planes (docs/worker-protocol.md, version 3).

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
    time a data plane accepts the worker. `zmq_context`: the ZeroMQ context
    of the sockets (default: pyzmq's shared instance); refused in asyncio
    mode, which opens a `zmq.asyncio` context of its own.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
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
        resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
        hosts_file: str | None = None,
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
        if not MIN_RESOLVE_INTERVAL <= resolve_interval <= MAX_RESOLVE_INTERVAL:
            raise ValueError(
                f"resolve_interval must be between {MIN_RESOLVE_INTERVAL} and {MAX_RESOLVE_INTERVAL} seconds,"
                f" not {resolve_interval}"
            )
        self.endpoints: tuple[str, ...] = (endpoint,) if isinstance(endpoint, str) else tuple(endpoint)
        self._resolver = Resolver(self.endpoints, hosts_file)
        if hosts_file is not None:
            try:
                read_hosts(hosts_file)
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot use the hosts file {hosts_file}: {e}") from None
        #: The first endpoint (the only one, usually).
        self.endpoint = self.endpoints[0]
        self.resolve_interval = resolve_interval
        self.hosts_file = hosts_file
        self.mode = mode
        self.concurrency = concurrency
        # What the data planes together may send: the calls that run, plus
        # the ones held ready so the worker never waits a round trip for the next.
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
        #: The id the last data plane to accept us gave us.
        self.worker_id: str | None = None
        self._ctx = zmq_context or zmq.Context.instance()
        self._book = CreditBook(self.credit, self._starved)
        self._planes: dict[str, _Plane] = {}
        #: The open connections. Replaced, never changed in place: a loop
        #: over it may open or close one.
        self._sessions: list[_Session] = []
        self._resolving: ResolverThread | None = None
        #: The sockets changed (or one connected): rebuild what the loop waits on.
        self._poll_dirty = False
        #: Some connection is not up yet (the Twisted loop then runs its timers on reads).
        self._connecting = False
        #: Registered at some data plane once: a refusal after that is not fatal.
        self._ever = False
        self._poller = zmq.Poller()
        self._wait_fds: list[int] = []
        self._green: GreenRuntime | None = None
        self._green_waiting = False
        self._reactor_loop: Any = None
        self._apoller: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Calls received and not finished, over every data plane, and the most ever.
        self._running = 0
        self._peak = 0
        self._stop = threading.Event()
        self._leaving_since: float | None = None
        self._closed = False
        self._pool: _CallThreads | None = None
        self._results: queue.SimpleQueue[tuple[_Session, int, bytes]] = queue.SimpleQueue()
        # Threads mode: the loop is (about to be) blocked in poll, so a
        # finished call must wake it; otherwise it finds the result itself.
        self._polling = False
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

    @property
    def peak_held(self) -> int:
        """The most calls this worker held at once (over every data plane):
        never more than `credit`."""
        return self._peak

    def credit_shares(self) -> dict[str, int]:
        """The credit announced at each data plane now (READY or CREDIT), by endpoint."""
        return {p.endpoint: p.announced for p in self._planes.values() if p.announced}

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
                self._start()
                while not self._done():
                    self._turn()
        finally:
            if self._resolving is not None:
                self._resolving.stop()
            for sess in self._sessions:
                sess.sock.close(linger=2000)  # the last REPLYs and DISCONNECT go out
            if self._pool is not None:
                self._pool.shutdown()
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)
            log.info(
                "worker stopped: served %d call(s), most calls held at once %d (credit %d)",
                self._served,
                self._peak,
                self.credit,
            )

    async def _run_async(self) -> None:
        """The asyncio mode: the same loop, awaiting the sockets and the wake
        pipe on the event loop; each call is a task (`serve_async` awaits
        handler methods that are coroutines)."""
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq_asyncio.Context()
        self._start()
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
    def _start(self) -> None:
        """Attaches to the endpoints' data planes (names: as they resolve)."""
        if self._resolver.fixed:
            self._apply(self._resolver.resolve())
        else:
            self._resolving = ResolverThread(self._resolver, self.resolve_interval, self._resolved)
            self._resolving.start()
        self._rebuild_polling()

    def _resolved(self) -> None:
        """(The resolver's thread) a new answer: wake the loop to take it."""
        if not self._closed:
            self._wake()

    def _done(self) -> bool:
        if self._leaving_since is None:
            return False
        if self._running or not self._results.empty():
            return False
        if time.monotonic() - self._leaving_since > self.leave_timeout:
            return True
        return all(sess.bye for sess in self._sessions)

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
        """Leaving, resolution, registration and heartbeats: what is due before waiting."""
        now = time.monotonic()
        if self.parent_pid is not None and not self._stop.is_set() and os.getppid() != self.parent_pid:
            # Our supervisor is gone (killed): leave rather than serve on unwatched.
            log.warning("supervisor %d is gone: leaving", self.parent_pid)
            self._stop.set()
        if self._stop.is_set() and self._leaving_since is None:
            self._leave(now)
        if self._resolving is not None and self._leaving_since is None:
            found = self._resolving.take()
            if found is not None:
                self._apply(found)
        for sess in self._sessions:
            if not sess.closed:
                self._keep(sess, now)
        if self._poll_dirty:
            self._rebuild_polling()

    def _rebuild_polling(self) -> None:
        """What the loop waits on: every socket (POLLOUT too while its
        connection is not up) and the wake-up pipe."""
        self._poll_dirty = False
        self._connecting = any(not s.connected for s in self._sessions)
        if self._loop is not None:
            apoller = zmq_asyncio.Poller()
            for sess in self._sessions:
                apoller.register(sess.sock, zmq.POLLIN if sess.connected else zmq.POLLIN | zmq.POLLOUT)
            apoller.register(self._wake_r, zmq.POLLIN)
            self._apoller = apoller
        elif self._reactor_loop is not None:
            self._reactor_loop.sync_sockets(self._sessions)
        elif self._green is not None:
            self._wait_fds = [sess.fd for sess in self._sessions] + [self._wake_r]
        else:
            poller = zmq.Poller()
            for sess in self._sessions:
                poller.register(sess.sock, zmq.POLLIN if sess.connected else zmq.POLLIN | zmq.POLLOUT)
            poller.register(self._wake_r, zmq.POLLIN)
            self._poller = poller

    def _green_wait(self) -> bool:
        """Green modes: waits for a socket or the wake-up pipe, yielding
        to the handlers meanwhile; True if the pipe woke us."""
        assert self._green is not None
        for sess in self._sessions:
            if self._message_waiting(sess):
                return False  # no wait
        self._green_waiting = True
        try:
            readable = self._green.wait(self._wait_fds, self._poll_ms() / 1000.0)
        finally:
            self._green_waiting = False
        return self._wake_r in readable

    def _message_waiting(self, sess: _Session) -> bool:
        """ZMQ_EVENTS says a message can be read now. ZMQ_FD is edge-triggered
        (see `_green`): after a send, this is how the green and Twisted loops
        learn of a message whose signal the send consumed."""
        return not sess.closed and bool(int(_get(sess.sock, _EVENTS)) & _POLLIN)

    def _poll_ms(self) -> int:
        wait = _CONNECT_POLL
        for sess in self._sessions:
            if sess.registered:
                wait = min(wait, sess.heartbeat / 2)
            elif sess.connected:
                wait = min(wait, _UNREGISTERED_POLL)
        return max(1, int(wait * 1000))

    def _read_burst(self) -> bool:
        """Handles the messages already here, up to a bound per socket (then
        the loop's timers get their turn): in inline mode, calls back to
        back. True if it stopped at a bound (more may be waiting)."""
        more = False
        for sess in self._sessions:
            try:
                if self._read_messages(sess):
                    more = True
            finally:
                if sess.outbox:
                    self._flush(sess)
        return more

    def _read_messages(self, sess: _Session) -> bool:
        sock = sess.sock
        for _ in range(_BURST):
            if sess.closed:
                return False
            try:
                frames = [_recv(sock, _NOBLOCK)]
            except zmq.Again:
                return False
            while _get(sock, _RCVMORE):
                frames.append(_recv(sock, 0))
            self._on_message(sess, frames)
        return True

    def _leave(self, now: float) -> None:
        """stop(): DISCONNECT to every data plane; the loop ends once every
        call is answered and every goodbye is in (or `leave_timeout`)."""
        self._leaving_since = now
        log.info("leaving: DISCONNECT sent, %d call(s) in flight", self._running)
        if self._resolving is not None:
            self._resolving.stop(timeout=0)
        for sess in self._sessions:
            if sess.leaving_since is None:
                self._say_goodbye(sess, now, "worker shutting down")

    def _say_goodbye(self, sess: _Session, now: float, reason: str) -> None:
        sess.leaving_since = now
        self._book.leaving(sess.plane)
        if sess.registered:
            self._send(sess, wire.disconnect(reason))
        elif sess.ready_sent_at is None:
            sess.bye = True  # nobody to say goodbye to
        # else: READY on its way: DISCONNECT once it is answered (`_on_ready`).

    def _keep(self, sess: _Session, now: float) -> None:
        """One connection's timers: up yet, READY due or unanswered,
        silence, heartbeat, goodbye."""
        plane = sess.plane
        if not sess.connected:
            if not int(_get(sess.sock, _EVENTS)) & _POLLOUT:
                # Not up yet: ZeroMQ keeps trying; say so now and then.
                if now >= sess.unreachable_warn_at:
                    log.warning(
                        "cannot reach the data plane at %s (for %.0fs): still trying",
                        plane.endpoint,
                        now - sess.last_recv,
                    )
                    sess.unreachable_every = min(sess.unreachable_every * 2, _UNREACHABLE_MAX)
                    sess.unreachable_warn_at = now + sess.unreachable_every
                return
            sess.connected = True
            self._poll_dirty = True
            if sess.leaving_since is not None:
                sess.bye = True
                return
            sess.last_recv = now
            self._book.connected(plane)
            self._replan()
            return
        if sess.broken:
            log.warning("connection to %s lost: reconnecting", plane.endpoint)
            self._reconnect(sess)
            return
        if sess.leaving_since is not None:
            # A data plane whose address is gone (stop() waits in `_done`):
            # closed once its calls are answered and its goodbye is in.
            goodbye = sess.bye or now - sess.leaving_since > self.leave_timeout
            if self._leaving_since is None and not plane.held and goodbye:
                if plane.wanted:
                    log.info("left the data plane at %s: connecting to it again", plane.endpoint)
                self._close(sess, linger=0 if sess.bye else 2000)
                self._after_close(plane)
                return
        elif not sess.registered and sess.ready_sent_at is None:
            # Registered again once the calls of the earlier registration are done.
            hold = now < sess.next_ready_at or plane.held > 0
            if hold != plane.hold:
                plane.hold = hold
                if not hold:
                    self._replan()
        elif sess.ready_sent_at is not None and now - sess.ready_sent_at > max(2.0, plane.backoff):
            log.warning("no answer to READY from %s: reconnecting", plane.endpoint)
            plane.backoff = min(plane.backoff * 2, 5.0)
            self._reconnect(sess)
            return
        elif sess.registered and now - sess.last_recv > sess.heartbeat * self.liveness:
            log.warning("data plane %s silent for %.1fs: reconnecting", plane.endpoint, now - sess.last_recv)
            self._reconnect(sess)
            return
        if sess.registered and now - sess.last_sent >= sess.heartbeat:
            self._send(sess, wire.heartbeat())

    # -- data planes and sockets -------------------------------------------
    def _apply(self, endpoints: list[str]) -> None:
        """The endpoints' data planes are now `endpoints`: attach to new ones,
        leave the ones that are gone."""
        for endpoint in endpoints:
            plane = self._planes.get(endpoint)
            if plane is None:
                plane = _Plane(endpoint)
                self._planes[endpoint] = plane
                self._book.add(plane)
                if len(self.endpoints) > 1 or not self._resolver.fixed:
                    log.info("attaching to the data plane at %s", endpoint)
            plane.wanted = True
            if plane.sess is None:
                self._open(plane)
        wanted = set(endpoints)
        for plane in list(self._planes.values()):
            if plane.wanted and plane.endpoint not in wanted:
                plane.wanted = False
                log.info("the data plane at %s is no longer among the endpoints' addresses: leaving it", plane.endpoint)
                sess = plane.sess
                if sess is not None and sess.leaving_since is None:
                    if sess.registered or sess.ready_sent_at is not None:
                        self._say_goodbye(sess, time.monotonic(), "worker leaving this data plane")
                    else:
                        self._close(sess, linger=0)
                self._after_close(plane)
        self._replan()

    def _open(self, plane: _Plane) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.IDENTITY, _connection_name())
        # Queue nothing for a connection that is not up: a data plane takes
        # part (and is sent READY) once it is, so one that is not there
        # holds no credit; a send that finds no connection says it is lost.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, _SNDHWM)
        if plane.endpoint.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        try:
            sock.connect(plane.endpoint)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            raise ValueError(f"cannot connect to the endpoint {plane.endpoint}: {e}") from None
        sess = _Session(plane, sock, int(_get(sock, zmq.FD)))
        plane.sess = sess
        plane.hold = False  # a new connection registers at once (a DISCONNECT's backoff was for the old one)
        self._sessions = [*self._sessions, sess]
        self._poll_dirty = True

    def _close(self, sess: _Session, linger: int) -> None:
        """Closes a connection: replies for it are dropped from now on; the
        calls it holds stay reserved until they finish."""
        sess.closed = True
        sess.outbox = []
        if self._reactor_loop is not None:
            self._reactor_loop.forget_socket(sess)
        sess.sock.close(linger=linger)
        self._sessions = [s for s in self._sessions if s is not sess]
        self._poll_dirty = True
        plane = sess.plane
        if plane.sess is sess:
            plane.sess = None
        self._book.detached(plane)

    def _after_close(self, plane: _Plane) -> None:
        """A plane whose connection closed: open a new one if it is still
        wanted (and the worker is not leaving), forget it once it is not and
        holds nothing."""
        if plane.sess is None and plane.wanted and self._leaving_since is None:
            self._open(plane)
        elif plane.sess is None and not plane.wanted and not plane.orphans:
            self._forget(plane)
        self._replan()

    def _forget(self, plane: _Plane) -> None:
        if self._planes.get(plane.endpoint) is plane:
            del self._planes[plane.endpoint]
            self._book.remove(plane)

    def _reconnect(self, sess: _Session) -> None:
        """A connection lost (or unanswered, or silent): a new one, and the
        names resolved again (the address may be gone)."""
        self._close(sess, linger=0)
        self._after_close(sess.plane)
        if self._resolving is not None:
            self._resolving.request()

    def _starved(self, planes: int, total: int) -> None:
        log.warning(
            "%d data planes but a credit of %d: %d of them get no credit (raise --prefetch or --concurrency)",
            planes,
            total,
            planes - total,
        )

    def _replan(self) -> None:
        """Does what the credit book says: READY to a data plane now
        connected, CREDIT to move credit between them, and leaving a data
        plane that cannot take CREDIT to register there again with less."""
        for share, credit, kind in self._book.plan():
            assert isinstance(share, _Plane) and share.sess is not None
            if kind == READY:
                self._send_ready(share.sess, credit)
            elif kind == CREDIT:
                log.debug("CREDIT %d to %s (was %d)", credit, share.endpoint, share.unanswered)
                self._send(share.sess, wire.credit(credit))
            else:
                # Rule 6: the book has marked it leaving (its credit stays
                # reserved until the connection closes). `_keep` closes it once
                # its calls are answered and its goodbye is in (or
                # `leave_timeout`), and `_after_close` connects again at once:
                # it is still wanted.
                sess = share.sess
                log.info(
                    "this data plane cannot take CREDIT: registering again to share the credit with another one"
                    " endpoint=%s credit=%d share=%d version=%d calls=%d",
                    share.endpoint,
                    share.announced,
                    credit,
                    sess.version,
                    share.held,
                )
                self._say_goodbye(sess, time.monotonic(), "worker registering again with a smaller share")

    def _flush(self, sess: _Session) -> None:
        """Sends the replies held back during a burst (inline and threads modes)."""
        held, sess.outbox = sess.outbox, []
        for frames in held:
            self._send_now(sess, frames)

    def _send(self, sess: _Session, frames: list[bytes]) -> None:
        if sess.outbox:
            self._flush(sess)  # in order: held replies first
        self._send_now(sess, frames)

    def _send_now(self, sess: _Session, frames: list[bytes]) -> None:
        sock = sess.sock
        last = len(frames) - 1
        try:
            for i, frame in enumerate(frames):
                _send(sock, frame, _NOBLOCK | _SNDMORE if i < last else _NOBLOCK)
        except zmq.Again:
            # ZMQ_IMMEDIATE: no connection (the data plane is gone or
            # restarting). It has forgotten this registration: reconnect.
            if not sess.broken:
                sess.broken = True
                self._wake()
            return
        sess.last_sent = time.monotonic()

    def _send_ready(self, sess: _Session, credit: int) -> None:
        self._send(sess, wire.ready(credit, self.token, list(self.processors), sess.version))
        sess.ready_sent_at = sess.last_recv = time.monotonic()

    # -- messages -------------------------------------------------------
    def _on_message(self, sess: _Session, frames: list[bytes]) -> None:
        sess.last_recv = time.monotonic()
        try:
            msg = wire.decode(frames)
        except wire.WireError as e:
            log.warning("dropping a malformed message from the data plane: %s", e)
            return
        if isinstance(msg, wire.Request):
            self._on_request(sess, msg)
        elif isinstance(msg, wire.ReadyAck):
            self._on_ready(sess, msg)
        elif isinstance(msg, wire.Disconnect):
            self._on_disconnect(sess, msg.reason)
        elif isinstance(msg, wire.CreditAck):
            self._on_credit(sess, msg.credit)

    def _on_ready(self, sess: _Session, ack: wire.ReadyAck) -> None:
        plane = sess.plane
        if sess.ready_sent_at is None:
            log.warning("dropping a READY answer from %s: no READY was sent", plane.endpoint)
            return
        sess.heartbeat = max(ack.heartbeat_interval_ms, 10) / 1000.0
        sess.registered = True
        self._ever = True
        sess.ready_sent_at = None
        plane.backoff = 0.1
        sess.version = min(sess.version, ack.version)
        sess.outstanding = set()
        self.worker_id = ack.worker_id
        self._book.registered(plane, sess.version)
        log.info(
            "ready worker_id=%s services=%s credit=%d mode=%s%s",
            ack.worker_id,
            ",".join(self.processors),
            plane.announced,
            self.mode,
            "" if len(self._planes) == 1 else f" endpoint={plane.endpoint} (of {self.credit})",
        )
        if self._on_ready_cb is not None:
            self._on_ready_cb(ack.worker_id)
        if sess.leaving_since is not None:
            # Told to leave while our READY was on its way: leave properly,
            # or calls sent to us meanwhile would be lost when we close.
            sess.bye = False
            self._book.leaving(plane)
            self._send(sess, wire.disconnect("worker shutting down"))
        else:
            self._replan()

    def _on_disconnect(self, sess: _Session, reason: str) -> None:
        plane = sess.plane
        if sess.leaving_since is not None:
            sess.bye = True
            if self._leaving_since is None and not plane.held:
                self._wake()  # `_keep` closes it now (Twisted: at its next tick, so wake it)
            return
        old_plane = "unsupported worker protocol version" in reason  # "refused: unsupported ..."
        if sess.ready_sent_at is not None and sess.version > wire.VERSION_1 and old_plane:
            sess.version -= 1
            if sess.version == wire.VERSION_1:
                log.info("the data plane speaks worker protocol version 1: serving without call headers")
            else:
                log.info(
                    "the data plane at %s speaks worker protocol version %d: its share of the credit is fixed",
                    plane.endpoint,
                    sess.version,
                )
            self._send_ready(sess, plane.announced)
            return
        if not self._ever:
            raise Refused(reason)
        log.warning("data plane sent DISCONNECT (%s): registering again", reason)
        sess.registered = False
        sess.ready_sent_at = None
        sess.next_ready_at = time.monotonic() + plane.backoff
        plane.backoff = min(plane.backoff * 2, 5.0)
        plane.hold = True
        self._book.deregistered(plane)
        self._replan()

    def _on_credit(self, sess: _Session, credit: int) -> None:
        plane = sess.plane
        if not plane.awaiting or not sess.registered:
            log.warning("dropping a CREDIT answer from %s: no CREDIT was sent", plane.endpoint)
            return
        if credit != plane.announced:
            log.warning("%s answered CREDIT %d with %d", plane.endpoint, plane.announced, credit)
        self._book.answered(plane)
        self._replan()

    def _on_request(self, sess: _Session, req: wire.Request) -> None:
        plane = sess.plane
        outstanding = sess.outstanding
        if len(outstanding) >= plane.limit:
            log.error(
                "CREDIT VIOLATION: request %d arrived with %d unanswered (credit %d)",
                req.request_id,
                len(outstanding),
                plane.limit,
            )
        outstanding.add(req.request_id)
        deadline = time.monotonic() + req.timeout_ms / 1000.0
        if sess.version >= 2:
            # Reply headers are possible: the handler's list, kept until its reply.
            reply_headers: list[tuple[bytes, bytes]] = []
            sess.reply_headers[req.request_id] = reply_headers
            call = context.CallContext(
                req.request_id, req.service, req.timeout_ms, deadline, req.headers, reply_headers
            )
        else:
            call = context.CallContext(req.request_id, req.service, req.timeout_ms, deadline)
        plane.held += 1
        self._running += 1
        if self._running > self._peak:
            self._peak = self._running
            if self._peak > self.credit:
                log.error("CREDIT VIOLATION: %d calls held at once (credit %d)", self._peak, self.credit)
        if self._pool is not None:
            self._pool.submit((sess, call, req))
        elif self._green is not None:
            self._green.spawn(self._serve_green, sess, call, req)
        elif self._reactor_loop is not None:
            self._reactor_loop.start_call(sess, call, req)
        elif self._loop is not None:
            task = self._loop.create_task(self._serve_task(sess, call, req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._finish(sess, req.request_id, self._serve(call, req))

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

    async def _serve_task(self, sess: _Session, call: context.CallContext, req: wire.Request) -> None:
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
        self._finish(sess, req.request_id, reply)

    def _serve_green(self, sess: _Session, call: context.CallContext, req: wire.Request) -> None:
        """One call in a green mode, in its own green thread. The reply is
        sent from here: sends go through `_send`, which never yields, so the
        frames of two replies cannot interleave on a socket."""
        self._finish(sess, req.request_id, self._serve(call, req))
        if self._green_waiting and self._message_waiting(sess):
            # The send consumed the FD's signal of a message that arrived
            # meanwhile: the loop, waiting on the FD, would not see it.
            self._wake()

    def _serve_on_pool(self, sess: _Session, call: context.CallContext, req: wire.Request) -> None:
        try:
            reply = self._serve(call, req)
        except BaseException:  # never lose a call's answer
            reply = _failure(req, codec.INTERNAL_ERROR, "thriftworker: the call failed")
        self._results.put((sess, req.request_id, reply))
        # Put, then look: if the loop set _polling after our look, it sees
        # the result before it waits (it checks the queue after setting it).
        if self._polling:
            self._wake()

    def _send_results(self) -> None:
        while True:
            try:
                sess, request_id, reply = self._results.get_nowait()
            except queue.Empty:
                return
            self._finish(sess, request_id, reply)

    def _finish(self, sess: _Session, request_id: int, reply: bytes) -> None:
        self._running -= 1
        self._served += 1
        if self.max_requests and self._served == self.max_requests:
            log.info("served %d calls (max_requests): leaving to be replaced", self._served)
            self._stop.set()
        headers = sess.reply_headers.pop(request_id, None) if sess.reply_headers else None
        plane = sess.plane
        if sess.closed:
            # For a connection that is gone: its registration is gone too.
            plane.orphans -= 1
            if not plane.orphans and not plane.wanted and plane.sess is None:
                self._forget(plane)
            self._replan()
            return
        plane.held -= 1
        if not plane.held and sess.leaving_since is not None:
            self._wake()  # its last call: `_keep` may close it (asyncio, green, Twisted wait on fds)
        sess.outstanding.discard(request_id)
        frames = wire.reply(request_id, reply, headers) if headers else wire.reply(request_id, reply)
        if self._coalesce:
            # Inline and threads modes: the replies of one burst (or turn)
            # leave together at its end (`_flush`), so ZeroMQ's I/O thread is
            # woken once per burst, not once per call; at most `_COALESCE` are held.
            outbox = sess.outbox
            outbox.append(frames)
            if len(outbox) >= _COALESCE:
                self._flush(sess)
        else:
            self._send(sess, frames)
        if self._book.wants:
            self._replan()

    def _wake(self) -> None:
        poke(self._wake_w)


class _CallThreads:
    """`n` threads running calls from one queue (threads mode). Lighter per
    call than `concurrent.futures.ThreadPoolExecutor` (no Future, no
    semaphore): the loop hands over a tuple, a thread takes it."""

    def __init__(self, n: int, serve: Callable[[_Session, context.CallContext, wire.Request], None]) -> None:
        self._calls: queue.SimpleQueue[tuple[_Session, context.CallContext, wire.Request] | None] = queue.SimpleQueue()
        self._serve = serve
        self._threads = [
            threading.Thread(target=self._run, name=f"thriftworker-call-{i}", daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def submit(self, call: tuple[_Session, context.CallContext, wire.Request]) -> None:
        self._calls.put(call)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            self._serve(*item)

    def shutdown(self) -> None:
        """Lets each thread end after the calls already queued (daemon
        threads: a handler that never returns does not hold the process)."""
        for _ in self._threads:
            self._calls.put(None)


_connections = 0


def _connection_name() -> bytes:
    """The ZeroMQ identity of a new connection: ``HOST/PID/N``. Each data
    plane shows it (``thriftctl workers list``), so one worker process is
    recognisable in every data plane it is attached to; N keeps a
    reconnection from being taken for the connection it replaces."""
    global _connections
    _connections += 1
    host = "".join(c for c in os.uname().nodename if c.isascii() and c.isprintable() and c not in " /")[:128]
    return f"{host}/{os.getpid()}/{_connections}".encode()


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
