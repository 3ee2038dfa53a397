#!/usr/bin/env python3
"""An independent thriftworker worker: Python + pyzmq (libzmq), written from
docs/worker-protocol.md alone. Serves the example services Echo and Calc with
the Python code generated from examples/idl/echo.thrift (tests/e2e/gen).

    pyworker.py --endpoint ipc:///tmp/tw/w.sock [--concurrency 2]
                [--services Echo,Calc] [--token TOKEN]

stdout: `ready worker_id=<id>` each time the data plane accepts our READY.
stderr: logs; `CREDIT VIOLATION` if the data plane ever has more unanswered
REQUESTs at this worker than the credit it announced.
Exit: 0 after SIGTERM/SIGINT (DISCONNECT sent, calls in flight finished),
2 when the first READY is refused (`refused: <reason>` on stdout).

Threading: the ZeroMQ socket is used by the main thread only. Calls run on a
thread pool; each finished call is put on a queue and a byte is written to a
pipe that the main thread polls together with the socket.
"""

import argparse
import concurrent.futures
import logging
import os
import queue
import signal
import struct
import sys
import threading
import time

import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

from echo import Calc, Echo  # noqa: E402
from echo.ttypes import EchoError  # noqa: E402
from thrift.Thrift import TApplicationException, TMessageType  # noqa: E402
from thrift.protocol import TBinaryProtocol, TCompactProtocol  # noqa: E402
from thrift.transport import TTransport  # noqa: E402

VERSION = 0x01
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = 0x01, 0x02, 0x03, 0x04, 0x05
LIVENESS = 3  # intervals of silence before we consider the data plane gone

log = logging.getLogger("pyworker")


class LaxBinaryProtocol(TBinaryProtocol.TBinaryProtocol):
    """Non-strict binary. thrift-py's readMessageBegin returns the method name
    of a non-strict message as bytes (so the processor cannot find it);
    decode it like the strict path does."""

    def __init__(self, trans):
        super().__init__(trans, strictRead=False, strictWrite=False)

    def readMessageBegin(self):
        name, mtype, seqid = super().readMessageBegin()
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return name, mtype, seqid


def protocol(kind, trans):
    if kind == 0:
        return TBinaryProtocol.TBinaryProtocol(trans, strictRead=True, strictWrite=True)
    if kind == 1:
        return LaxBinaryProtocol(trans)
    if kind == 2:
        return TCompactProtocol.TCompactProtocol(trans)
    raise ValueError(f"unknown protocol {kind}")


class Handler:
    """Echo and Calc, with the semantics of the IDL comments."""

    def __init__(self):
        self._lock = threading.Lock()
        self._notified = 0

    def echo(self, message):
        return message

    def notify(self, message):
        with self._lock:
            self._notified += 1

    def notified(self):
        with self._lock:
            return self._notified

    def fail(self, message, code):
        raise EchoError(message=message, code=code)

    def slow(self, message, sleep_ms):
        time.sleep(max(sleep_ms, 0) / 1000.0)
        return message

    def whoami(self):
        return f"py:{os.getpid()}"

    def add(self, a, b):
        return a + b


PROCESSORS = {"Echo": Echo.Processor, "Calc": Calc.Processor}


def run_call(handler, service, proto, message):
    """Runs one call; returns the reply message (b"" for a oneway call or
    when nothing at all can be produced)."""
    seen = {}
    try:
        oprot = protocol(proto, TTransport.TMemoryBuffer())
        processor = PROCESSORS[service](handler)
        processor.on_message_begin(lambda name, mtype, seqid: seen.update(name=name, mtype=mtype, seqid=seqid))
        processor.process(protocol(proto, TTransport.TMemoryBuffer(message)), oprot)
        if seen.get("mtype") == TMessageType.ONEWAY:
            return b""
        return oprot.trans.getvalue()
    except Exception as e:  # undecodable call: answer a TApplicationException if we can
        log.warning("call failed: %r", e)
        if "seqid" not in seen or seen.get("mtype") == TMessageType.ONEWAY:
            return b""
        try:
            oprot = protocol(proto, TTransport.TMemoryBuffer())
            oprot.writeMessageBegin(seen["name"], TMessageType.EXCEPTION, seen["seqid"])
            TApplicationException(TApplicationException.PROTOCOL_ERROR, f"pyworker: cannot decode the call: {e!r}").write(oprot)
            oprot.writeMessageEnd()
            return oprot.trans.getvalue()
        except Exception:
            return b""


class Worker:
    def __init__(self, args):
        self.endpoint = args.endpoint
        self.credit = args.concurrency
        self.token = args.token.encode()
        self.services = [s for s in args.services.split(",") if s]
        self.handler = Handler()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.credit)
        self.results = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.ctx = zmq.Context()
        self.sock = None
        self.session = 0  # bumped on every new socket: replies of older ones are dropped
        self.outstanding = set()  # request ids of this registration not yet answered
        self.running = 0  # calls on the pool, any session
        self.registered = False
        self.ever_registered = False
        self.ready_sent_at = None
        self.backoff = 0.1
        self.next_ready_at = 0.0
        self.heartbeat = 1.0
        self.last_sent = self.last_recv = time.monotonic()
        self.stopping = False
        self.signalled = None

    # -- socket ---------------------------------------------------------
    def open_socket(self):
        if self.sock is not None:
            self.sock.close(linger=0)
        self.session += 1
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(self.endpoint)
        self.registered = False
        self.outstanding = set()
        self.send_ready()

    def send(self, cmd, *frames):
        self.sock.send_multipart([bytes([VERSION, cmd]), *frames])
        self.last_sent = time.monotonic()

    def send_ready(self):
        self.send(READY, struct.pack(">I", self.credit), self.token, *(s.encode() for s in self.services))
        self.ready_sent_at = self.last_recv = time.monotonic()

    # -- messages from the data plane -------------------------------------
    def on_message(self, frames):
        self.last_recv = time.monotonic()
        header = frames[0]
        if len(header) != 2 or header[0] != VERSION:
            log.warning("dropping malformed message, header %r", header)
            return
        cmd = header[1]
        if cmd == READY and len(frames) >= 3 and len(frames[1]) == 4:
            self.heartbeat = max(struct.unpack(">I", frames[1])[0], 10) / 1000.0
            worker_id = frames[2].decode("utf-8", "replace")
            self.registered = self.ever_registered = True
            self.ready_sent_at = None
            self.backoff = 0.1
            self.outstanding = set()
            print(f"ready worker_id={worker_id}", flush=True)
            log.info("registered as %s, heartbeat %.3fs", worker_id, self.heartbeat)
        elif cmd == REQUEST and len(frames) >= 4 and len(frames[1]) == 13:
            request_id, timeout_ms, proto = struct.unpack(">QIB", frames[1])
            if len(self.outstanding) >= self.credit:
                print("CREDIT VIOLATION", file=sys.stderr, flush=True)
                log.error("request %d arrived with %d unanswered (credit %d)", request_id, len(self.outstanding), self.credit)
            self.outstanding.add(request_id)
            service = frames[2].decode("utf-8", "replace")
            log.info("request id=%d service=%s timeout_ms=%d protocol=%d", request_id, service, timeout_ms, proto)
            self.running += 1
            self.pool.submit(self.call, self.session, request_id, service, proto, frames[3])
        elif cmd == HEARTBEAT:
            pass
        elif cmd == DISCONNECT:
            reason = frames[1].decode("utf-8", "replace") if len(frames) > 1 else ""
            if not self.ever_registered:
                print(f"refused: {reason}", flush=True)
                log.error("READY refused: %s", reason)
                raise SystemExit(2)
            log.warning("data plane sent DISCONNECT: %s", reason)
            self.registered = False
            self.ready_sent_at = None
            self.next_ready_at = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, 5.0)
        else:
            log.warning("dropping unexpected message, command %d with %d frames", cmd, len(frames))

    def call(self, session, request_id, service, proto, message):
        try:
            if service not in PROCESSORS or service not in self.services:
                log.warning("request for a service we do not serve: %r", service)
                reply = b""
            else:
                reply = run_call(self.handler, service, proto, message)
        except Exception:
            log.exception("call crashed")
            reply = b""
        self.results.put((session, request_id, reply))
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full, so the main thread will wake anyway

    def drain_results(self):
        while True:
            try:
                session, request_id, reply = self.results.get_nowait()
            except queue.Empty:
                return
            self.running -= 1
            if session != self.session:
                continue  # sent by an earlier socket: that data plane connection is gone
            self.outstanding.discard(request_id)
            self.send(REPLY, struct.pack(">Q", request_id), reply)

    # -- main loop --------------------------------------------------------
    def run(self):
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.open_socket()
        while True:
            if self.signalled and not self.stopping:
                self.stopping = True
                log.info("signal %d: leaving, %d calls in flight", self.signalled, self.running)
                self.send(DISCONNECT, b"worker shutting down")
            if self.stopping and self.running == 0 and self.results.empty():
                break
            now = time.monotonic()
            if not self.stopping:
                if not self.registered and self.ready_sent_at is None and now >= self.next_ready_at and self.running == 0:
                    self.send_ready()  # re-register once our earlier calls are answered
                elif self.ready_sent_at is not None and now - self.ready_sent_at > max(2.0, self.backoff):
                    log.warning("no answer to READY, reconnecting")
                    self.backoff = min(self.backoff * 2, 5.0)
                    self.open_socket()
                elif self.registered and now - self.last_recv > self.heartbeat * LIVENESS:
                    log.warning("data plane silent for %.1fs, reconnecting", now - self.last_recv)
                    self.open_socket()
            if self.registered and now - self.last_sent >= self.heartbeat:
                self.send(HEARTBEAT)
            poller = zmq.Poller()
            poller.register(self.sock, zmq.POLLIN)
            poller.register(self.wake_r, zmq.POLLIN)
            wait = self.heartbeat if self.registered else 0.05
            events = dict(poller.poll(timeout=max(1, int(wait * 1000 / 2))))
            if self.wake_r in events:
                try:
                    while os.read(self.wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            self.drain_results()
            while self.sock.poll(0, zmq.POLLIN):
                self.on_message(self.sock.recv_multipart())
        self.sock.close()  # linger: the last REPLYs and the DISCONNECT go out
        self.ctx.term()
        self.pool.shutdown()

    def on_signal(self, signum, _frame):
        # Only a flag: the handler may run between two frames of a multipart
        # send, so the main loop sends the DISCONNECT (the wakeup fd wakes it).
        self.signalled = signum


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True, help="data plane ROUTER endpoint (ipc:// or tcp://)")
    p.add_argument("--concurrency", type=int, default=2, help="calls run at once (the READY credit)")
    p.add_argument("--services", default="Echo,Calc", help="comma-separated services to serve")
    p.add_argument("--token", default="", help="worker token expected by the data plane")
    args = p.parse_args()
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"pyworker[{os.getpid()}] %(levelname)s %(message)s")
    try:
        Worker(args).run()
    except SystemExit as e:
        os._exit(e.code if isinstance(e.code, int) else 1)  # don't wait on pool threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
