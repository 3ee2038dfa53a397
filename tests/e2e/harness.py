"""Shared helpers of the end-to-end tests: processes with captured output,
deadlines, the data plane's config, Thrift clients and raw framed sockets.

Everything that waits takes a deadline and fails with a message that includes
the output tails of the processes involved.
"""

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE / "gen"))

from echo import Calc, Echo  # noqa: E402
from echo.ttypes import EchoError  # noqa: E402,F401  (re-exported for the tests)
from thrift.Thrift import TApplicationException, TMessageType  # noqa: E402
from thrift.protocol import TBinaryProtocol, TCompactProtocol, TMultiplexedProtocol  # noqa: E402
from thrift.protocol.THeaderProtocol import THeaderProtocol  # noqa: E402
from thrift.transport import TSocket, TSSLSocket, TTransport  # noqa: E402
from thrift.transport.THeaderTransport import (  # noqa: E402
    THeaderClientType,
    THeaderSubprotocolID,
    THeaderTransformID,
)

TARGET_DIR = Path(os.environ.get("THRIFTWORKER_TARGET_DIR", REPO / "target" / "debug"))
PYWORKER = HERE / "pyworker.py"
MAX_WAIT = 20.0  # no wait in these tests is longer than this
# The credit of an echo-worker started with its defaults: --concurrency 4 + --prefetch 256.
RUST_DEFAULT_CREDIT = 4 + 256

UNKNOWN_METHOD = TApplicationException.UNKNOWN_METHOD  # 1
INVALID_MESSAGE_TYPE = TApplicationException.INVALID_MESSAGE_TYPE  # 2
INTERNAL_ERROR = TApplicationException.INTERNAL_ERROR  # 6


def binary(name):
    return TARGET_DIR / name


# -- waiting ------------------------------------------------------------------


def wait_for(predicate, timeout=10.0, message="condition", context=None, interval=0.02):
    """Polls `predicate` until it returns a truthy value (returned) or
    `timeout` seconds pass (AssertionError with `message` and `context()`)."""
    assert timeout <= MAX_WAIT, "waits are capped at %ss" % MAX_WAIT
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = ("\n" + context()) if context else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{extra}")
        time.sleep(interval)


# -- processes ----------------------------------------------------------------


def clean_env(**extra):
    """The environment for a child: ours without THRIFTWORKER_* settings (a
    stray variable would change what the test means), no colours. An extra
    variable given as None is removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THRIFTWORKER_")}
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


class Process:
    """A child process whose stdout and stderr are read by threads into
    buffers the test can search while it runs."""

    def __init__(self, name, argv, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self._lock = threading.Lock()
        self._out = []
        self._err = []
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else clean_env(),
        )
        self.pid = self.proc.pid
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, pipe, sink):
        for line in iter(pipe.readline, b""):
            with self._lock:
                sink.append(line.decode("utf-8", "replace"))
        pipe.close()

    @property
    def stdout(self):
        with self._lock:
            return "".join(self._out)

    @property
    def stderr(self):
        with self._lock:
            return "".join(self._err)

    def tail(self, lines=40):
        with self._lock:
            err = self._err[-lines:]
            out = self._out[-10:]
        rc = self.proc.poll()
        state = "running" if rc is None else f"exited with {rc}"
        text = f"--- {self.name} (pid {self.pid}, {state}) stderr tail ---\n" + "".join(err)
        if out:
            text += f"--- {self.name} stdout tail ---\n" + "".join(out)
        return text

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait_exit(self, timeout=10.0, context=None):
        """Waits for the process to exit; returns its exit code."""
        wait_for(lambda: not self.alive(), timeout, f"{self.name} to exit", context or self.tail)
        for t in self._threads:
            t.join(timeout=2)
        return self.proc.returncode

    def kill(self):
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)  # a SIGSTOPped child still dies of SIGKILL, but be tidy
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for t in self._threads:
            t.join(timeout=1)


# -- the data plane's config ----------------------------------------------------


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(config):
    """Writes the subset of TOML the data plane's config uses: tables,
    arrays of tables, sub-tables of those, scalars and arrays of scalars."""
    lines = []

    def table(header, d, array=False):
        lines.append(f"[[{header}]]" if array else f"[{header}]")
        for k, v in d.items():
            if v is not None and not isinstance(v, dict):
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{header}.{k}", v)
        lines.append("")

    for k, v in config.items():
        if isinstance(v, dict):
            table(k, v)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                table(k, item, array=True)
        else:
            raise TypeError(f"top-level key {k} must be a table or an array of tables")
    return "\n".join(lines)


def base_config(endpoint):
    """Two services and two listeners, like examples/echo.toml, on port 0.
    Timeouts are generous: tests that are about timeouts set their own."""
    return {
        "server": {"shutdown_timeout": "10s", "log_format": "text"},
        "admin": {"address": "127.0.0.1:0"},
        "metrics": {"address": "127.0.0.1:0"},
        "workers": {"endpoints": [endpoint], "heartbeat_interval": "1s", "heartbeat_liveness": 3},
        "services": [
            {
                "name": "Echo",
                "timeout": "15s",
                "queue_timeout": "10s",
                "max_queue": 1024,
                "strip_service_prefix": True,
                "method_timeouts": {"slow": "30s"},
            },
            {"name": "Calc", "timeout": "15s", "queue_timeout": "10s"},
        ],
        "listeners": [
            {"name": "echo", "address": "127.0.0.1:0", "services": ["Echo"]},
            {"name": "mux", "address": "127.0.0.1:0", "services": ["Echo", "Calc"], "protocol": "auto"},
        ],
    }


def apply_overrides(config, server=None, workers=None, services=None, listeners=None, admin=None, metrics=None):
    """`services`/`listeners` map a name to the keys to change (None deletes a
    key; a name not in the config adds a new entry)."""
    for section, changes in (("server", server), ("workers", workers), ("admin", admin), ("metrics", metrics)):
        config.setdefault(section, {})
        for k, v in (changes or {}).items():
            if v is None:
                config[section].pop(k, None)
            else:
                config[section][k] = v
    for section, changes in (("services", services), ("listeners", listeners)):
        for name, keys in (changes or {}).items():
            entry = next((e for e in config[section] if e["name"] == name), None)
            if entry is None:
                entry = {"name": name}
                config[section].append(entry)
            for k, v in keys.items():
                if v is None:
                    entry.pop(k, None)
                else:
                    entry[k] = v
    return config


def make_pki(d, ca="ca", servers=("server",), clients=("client",)):
    """A CA (`ca`.pem/.key), server certificates for localhost/127.0.0.1
    (`NAME`.pem/.key, CN=NAME) and client certificates, signed by it, with
    the openssl command line tool (EC P-256 keys). Returns `d`."""
    import shutil

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    def key(name):
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key")

    key(ca)
    run("req", "-x509", "-new", "-key", f"{ca}.key", "-subj", f"/CN=thriftworker test {ca}", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", f"{ca}.pem")
    server_ext = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    client_ext = "extendedKeyUsage=clientAuth\n"
    for name, ext in [(s, server_ext) for s in servers] + [(c, client_ext) for c in clients]:
        key(name)
        run("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(ext + "basicConstraints=CA:FALSE\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return d


# -- Thrift: protocols, clients, raw frames -------------------------------------


class LaxBinaryProtocol(TBinaryProtocol.TBinaryProtocol):
    """Non-strict binary (no version word). thrift-py returns the method name
    of a non-strict message as bytes; decode it like the strict path does."""

    def __init__(self, trans):
        super().__init__(trans, strictRead=False, strictWrite=False)

    def readMessageBegin(self):
        name, mtype, seqid = super().readMessageBegin()
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return name, mtype, seqid


PROTOCOLS = ("binary", "lax", "compact")


def make_protocol(kind, trans):
    if kind == "binary":
        return TBinaryProtocol.TBinaryProtocol(trans, strictRead=True, strictWrite=True)
    if kind == "lax":
        return LaxBinaryProtocol(trans)
    if kind == "compact":
        return TCompactProtocol.TCompactProtocol(trans)
    raise ValueError(kind)


TRANSPORTS = ("framed", "buffered", "header")


@contextlib.contextmanager
def thrift_client(addr, protocol="binary", service=Echo, multiplexed=None, timeout=MAX_WAIT,
                  transport="framed", zlib=False, tls=None):
    """A generated Python client on TSocket + `transport`: "framed"
    (TFramedTransport), "buffered" (TBufferedTransport: unframed) or "header"
    (THeaderProtocol over `protocol`, binary or compact; `zlib` adds the zlib
    transform; set info headers with `client._oprot.set_header(b"k", b"v")`
    before a call: they go with the next call only). `addr` is
    (host, port); `multiplexed` names the service for TMultiplexedProtocol;
    `tls`: TSSLSocket's keyword arguments (ca_certs, certfile, keyfile...)."""
    if tls is None:
        sock = TSocket.TSocket(addr[0], addr[1])
    else:
        sock = TSSLSocket.TSSLSocket(addr[0], addr[1], **tls)
    sock.setTimeout(int(timeout * 1000))
    if transport == "header":
        trans = sock
        sub = {"binary": THeaderSubprotocolID.BINARY, "compact": THeaderSubprotocolID.COMPACT}[protocol]
        proto = THeaderProtocol(sock, [THeaderClientType.HEADERS], default_protocol=sub)
        if zlib:
            proto.add_transform(THeaderTransformID.ZLIB)
    else:
        trans = TTransport.TFramedTransport(sock) if transport == "framed" else TTransport.TBufferedTransport(sock)
        proto = make_protocol(protocol, trans)
    if multiplexed:
        proto = TMultiplexedProtocol.TMultiplexedProtocol(proto, multiplexed)
    trans.open()
    try:
        yield service.Client(proto)
    finally:
        trans.close()


def encode_message(name, args, seqid, protocol="binary", mtype=TMessageType.CALL):
    """A complete Thrift message: header then the args struct (`args` is a
    generated *_args instance, or None for an empty struct)."""
    buf = TTransport.TMemoryBuffer()
    p = make_protocol(protocol, buf)
    p.writeMessageBegin(name, mtype, seqid)
    if args is None:
        p.writeStructBegin("args")
        p.writeFieldStop()
        p.writeStructEnd()
    else:
        args.write(p)
    p.writeMessageEnd()
    return buf.getvalue()


def frame(payload):
    return struct.pack(">i", len(payload)) + payload


class Message:
    """A decoded reply: name, type, seqid, and `value`: the *_result struct
    for a REPLY, the TApplicationException for an EXCEPTION."""

    def __init__(self, name, mtype, seqid, value):
        self.name, self.mtype, self.seqid, self.value = name, mtype, seqid, value

    def __repr__(self):
        return f"Message(name={self.name!r}, type={self.mtype}, seqid={self.seqid}, value={self.value!r})"


def decode_message(data, protocol="binary", result_cls=None):
    p = make_protocol(protocol, TTransport.TMemoryBuffer(data))
    name, mtype, seqid = p.readMessageBegin()
    if mtype == TMessageType.EXCEPTION:
        value = TApplicationException()
        value.read(p)
    elif result_cls is not None:
        value = result_cls()
        value.read(p)
    else:
        value = None
    p.readMessageEnd()
    return Message(name, mtype, seqid, value)


class RawConnection:
    """A plain TCP socket speaking framed Thrift by hand."""

    def __init__(self, addr, timeout=MAX_WAIT):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def close(self):
        self.sock.close()

    def reset(self):
        """Closes with a TCP reset, as a client that is gone. (A plain close
        sends FIN, which the data plane must take as a half-close: the
        client may still read the answers to the calls it sent.)"""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def send_call(self, name, args, seqid, protocol="binary", mtype=TMessageType.CALL):
        self.send(frame(encode_message(name, args, seqid, protocol, mtype)))

    def _read(self, n, deadline):
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"no complete frame within the deadline ({len(self._buf)} bytes buffered)")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed by the data plane ({len(self._buf)} bytes buffered)")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def recv_frame(self, timeout=MAX_WAIT):
        deadline = time.monotonic() + timeout
        (length,) = struct.unpack(">i", self._read(4, deadline))
        assert 0 < length < 100_000_000, f"bad frame length {length} from the data plane"
        return self._read(length, deadline)

    def recv_message(self, protocol="binary", result_cls=None, timeout=MAX_WAIT):
        return decode_message(self.recv_frame(timeout), protocol, result_cls)

    def call(self, name, args, seqid, protocol="binary", result_cls=None, timeout=MAX_WAIT):
        self.send_call(name, args, seqid, protocol)
        return self.recv_message(protocol, result_cls, timeout)

    def closed_by_peer(self, timeout=5.0):
        """True once the data plane has closed this connection (EOF or reset);
        bytes it sends before closing are ignored. False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except socket.timeout:
                return False
        return False


# -- the admin API: thriftctl ---------------------------------------------------


class CtlResult:
    """A finished thriftctl run: `rc`, `stdout`, `stderr`, and `json` (stdout
    parsed)."""

    def __init__(self, argv, proc):
        self.argv = argv
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def json(self):
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"thriftctl printed no JSON ({e}): {self}") from None

    def __repr__(self):
        return f"CtlResult(argv={self.argv!r}, rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr!r})"


def thriftctl_env(**extra):
    """clean_env() without THRIFTCTL_* settings either."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("THRIFTCTL_")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Thriftctl:
    """Runs the real `thriftctl` binary against one admin address.

        ctl = Thriftctl("127.0.0.1:4242")
        ctl.ok("services", "list")                         # -o json, rc 0: parsed JSON
        ctl.fails("NOT_FOUND", "services", "get", "Nope")  # rc 1: its one stderr line
        ctl.run("stats")                                   # a CtlResult, any rc
    """

    def __init__(self, addr, token=None, token_file=None, env=None):
        self.addr = addr
        self.token = token
        self.token_file = token_file
        self.env = dict(env or {})

    def argv(self, *args, addr=True):
        argv = [str(binary("thriftctl"))]
        if addr and self.addr is not None:
            argv += ["--addr", self.addr]
        if self.token_file is not None:
            argv += ["--token-file", str(self.token_file)]
        return argv + [str(a) for a in args]

    def env_for(self, env=None):
        extra = dict(self.env)
        if self.token is not None:
            extra["THRIFTCTL_TOKEN"] = self.token
        extra.update(env or {})
        return thriftctl_env(**extra)

    def run(self, *args, timeout=15.0, env=None, addr=True):
        argv = self.argv(*args, addr=addr)
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env_for(env),
            timeout=timeout,
        )
        return CtlResult(argv, proc)

    def ok(self, *args, **kw):
        """-o json and exit status 0: the parsed output."""
        r = self.run("-o", "json", *args, **kw)
        assert r.rc == 0, f"thriftctl failed: {r}"
        assert r.stderr == "", f"thriftctl succeeded but wrote to stderr: {r}"
        return r.json

    def fails(self, code, *args, **kw):
        """Exit status 1 and exactly one stderr line naming the gRPC status
        `code`; returns that line."""
        r = self.run(*args, **kw)
        assert r.rc == 1, f"expected exit status 1 ({code}): {r}"
        lines = r.stderr.splitlines()
        assert len(lines) == 1, f"expected one stderr line: {r}"
        assert lines[0].startswith("thriftctl: "), r
        assert f": {code}: " in lines[0] or lines[0].endswith(f": {code}"), f"expected {code}: {r}"
        assert r.stdout == "", r
        return lines[0]


def free_port():
    """A TCP port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_addr(addr):
    """"host:port" (IPv6 in brackets) as (host, port)."""
    host, port = addr.rsplit(":", 1)
    return host.strip("[]"), int(port)


def echo_args(message):
    return Echo.echo_args(message=message)


def slow_args(message, sleep_ms):
    return Echo.slow_args(message=message, sleep_ms=sleep_ms)


def raw_echo(conn, message, seqid, protocol="binary", name="echo", timeout=MAX_WAIT):
    """Calls echo on a RawConnection; returns the decoded Message."""
    return conn.call(name, echo_args(message), seqid, protocol, Echo.echo_result, timeout)


def app_error(call):
    """Runs `call`, which must raise a TApplicationException; returns it."""
    try:
        value = call()
    except TApplicationException as e:
        return e
    raise AssertionError(f"expected a TApplicationException, got the value {value!r}")


__all__ = [
    "Calc",
    "Echo",
    "EchoError",
    "TApplicationException",
    "TMessageType",
]


# -- load ---------------------------------------------------------------------


class SteadyLoad:
    """`threads` clients calling echo in a loop until stopped; every failure
    (exception or wrong answer) is kept."""

    def __init__(self, addr, threads=4, slow_ms=0):
        self.slow_ms = slow_ms
        self.addr = addr
        self.stop_flag = threading.Event()
        self.calls = 0
        self.failures = []
        self.pids = set()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, i):
        n = 0
        while not self.stop_flag.is_set() and len(self.failures) < 100:
            try:
                with thrift_client(self.addr) as client:
                    for _ in range(20):
                        n += 1
                        msg = f"{i}-{n}"
                        got = client.slow(msg, self.slow_ms) if self.slow_ms else client.echo(msg)
                        who = client.whoami()
                        with self.lock:
                            self.calls += 2
                            self.pids.add(who)
                            if got != msg:
                                self.failures.append(f"wrong answer {got!r} for {msg!r}")
            except Exception as e:  # noqa: BLE001 - every failure counts
                with self.lock:
                    self.failures.append(repr(e))

    def wait_calls(self, n, what):
        start = self.calls
        wait_for(lambda: self.calls >= start + n, 20, what, lambda: "\n".join(self.failures[-5:]))

    def finish(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)
        return self.failures
