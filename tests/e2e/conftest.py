"""Fixtures of the end-to-end tests: the data plane, workers (the Rust
echo-worker or tests/e2e/pyworker.py), and process bookkeeping. Every process
a test starts is killed at teardown, and a failing test's report carries the
output tails of all of them."""

import copy
import os
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import harness
from harness import MAX_WAIT, Process, binary, clean_env, wait_for


def _require(path):
    if not Path(path).exists():
        pytest.fail(
            f"{path} not found: build it first (cargo build --workspace --bins), "
            "or set THRIFTWORKER_TARGET_DIR to the directory holding the binaries",
            pytrace=False,
        )
    return path


class Processes:
    """Every process started by one test, newest last."""

    def __init__(self):
        self.all = []

    def start(self, name, argv, env=None):
        p = Process(name, argv, env)
        self.all.append(p)
        return p

    def tails(self):
        return "\n".join(p.tail() for p in self.all)

    def kill_all(self):
        for p in reversed(self.all):
            p.kill()


@pytest.fixture
def processes():
    procs = Processes()
    yield procs
    procs.kill_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    procs = getattr(item, "funcargs", {}).get("processes")
    if report.failed and procs is not None and procs.all:
        report.sections.append(("processes (output tails)", procs.tails()))


@pytest.fixture
def short_tmp():
    """A short directory under /tmp: ipc:// paths must stay under ~100 bytes."""
    d = tempfile.mkdtemp(prefix="tw", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


class DataPlane:
    def __init__(self, process, endpoint, ready, config, config_path):
        self.process = process
        self.proc = process.proc
        self.pid = process.pid
        self.endpoint = endpoint
        self.ready = ready
        self.config = config
        self.config_path = config_path

    @property
    def stderr(self):
        return self.process.stderr

    def tail(self):
        return self.process.tail()

    def addr(self, listener="echo"):
        """(host, port) of a listener, as bound."""
        host, port = self.ready["listeners"][listener].rsplit(":", 1)
        return host.strip("[]"), int(port)

    def addr_str(self, listener="echo"):
        return self.ready["listeners"][listener]

    @property
    def admin_addr(self):
        """"127.0.0.1:PORT" of the admin API, from the ready file."""
        addr = self.ready.get("admin")
        if not addr:
            pytest.fail(
                f"the ready file has no admin address (is this a thriftworker with the admin API?): {self.ready}",
                pytrace=False,
            )
        return addr

    @property
    def metrics_addr(self):
        """"127.0.0.1:PORT" of /metrics, /healthz and /readyz, from the ready file."""
        addr = self.ready.get("metrics")
        if not addr:
            pytest.fail(f"the ready file has no metrics address: {self.ready}", pytrace=False)
        return addr

    def metrics(self):
        """The text of /metrics now."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5) as r:
            return r.read().decode()

    def count(self, text):
        return self.stderr.count(text)

    def registered(self):
        return self.count("worker registered")

    def wait_log(self, text, count=1, timeout=10.0, context=None):
        wait_for(
            lambda: self.count(text) >= count,
            timeout,
            f"{count} line(s) containing {text!r} in the data plane's log",
            context or self.tail,
        )

    def wait_registered(self, n, timeout=10.0, context=None):
        self.wait_log("worker registered", n, timeout, context)

    def terminate(self, sig=None):
        import signal

        self.process.signal(sig or signal.SIGTERM)

    def wait_exit(self, timeout=15.0):
        return self.process.wait_exit(timeout)

    def alive(self):
        return self.process.alive()


@pytest.fixture
def dataplane(processes, short_tmp):
    """Starts `thriftworker` and waits for its ready file.

        dp = dataplane()                                  # base_config()
        dp = dataplane(services={"Echo": {"timeout": "300ms"}},
                       listeners={"echo": {"max_frame_size": 1024}},
                       workers={"heartbeat_interval": "200ms"})
        dp = dataplane(config={...})                      # a whole config dict

    `endpoint` fixes the worker endpoint (default ipc://<short tmp>/w.sock);
    `endpoint_flag=True` passes it with --worker-endpoint instead of the
    config; `args` are extra command-line flags; `env` extra environment."""
    _require(binary("thriftworker"))
    started = []

    def start(config=None, *, endpoint=None, endpoint_flag=False, args=(), env=None, **overrides):
        n = len(started)
        endpoint = endpoint or f"ipc://{short_tmp}/w.sock"
        assert len(endpoint) <= 100, f"ipc path too long: {endpoint}"
        if config is None:
            config = harness.apply_overrides(harness.base_config(endpoint), **overrides)
        else:
            config = copy.deepcopy(config)
        argv = [binary("thriftworker")]
        if endpoint_flag:
            config["workers"].pop("endpoints", None)
            argv += ["--worker-endpoint", endpoint]
        config_path = short_tmp / f"dp{n}.toml"
        config_path.write_text(harness.to_toml(config))
        ready_path = short_tmp / f"dp{n}.ready.json"
        argv += ["--config", config_path, "--ready-file", ready_path, *args]
        process = processes.start(f"thriftworker#{n}", argv, clean_env(**(env or {})))

        def ready():
            if not process.alive():
                raise AssertionError(f"thriftworker exited before it was ready\n{process.tail()}")
            try:
                return json.loads(ready_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return None

        info = wait_for(ready, MAX_WAIT, f"the ready file {ready_path}", process.tail)
        dp = DataPlane(process, endpoint, info, config, config_path)
        started.append(dp)
        return dp

    start.started = started
    return start


class Worker:
    def __init__(self, kind, process):
        self.kind = kind
        self.process = process
        self.proc = process.proc
        self.pid = process.pid

    @property
    def stderr(self):
        return self.process.stderr

    @property
    def stdout(self):
        return self.process.stdout

    def signal(self, sig):
        self.process.signal(sig)

    def alive(self):
        return self.process.alive()

    def requests_seen(self):
        """pyworker only: REQUESTs received so far (it logs each one)."""
        return self.stderr.count("request id=")


@pytest.fixture
def worker(processes, dataplane):
    """Starts a worker against the newest data plane (or `endpoint`) and, if
    `wait`, waits until that data plane logs one more `worker registered`.

        worker()                      # Rust examples/echo-worker
        worker("py", concurrency=3)   # tests/e2e/pyworker.py
        worker("pkg", mode="threads", target="pyapp:thriftpy2")   # thriftworker-py
    """

    def start(kind="rust", *, concurrency=None, services=None, token=None, token_file=None,
              endpoint=None, dp=None, wait=True, env=None, mode="inline", target="pyapp:apache",
              workers=None, args=()):
        dp = dp or (dataplane.started[-1] if dataplane.started else None)
        endpoint = endpoint or dp.endpoint
        extra_env = dict(env or {})
        if kind == "rust":
            argv = [_require(binary("echo-worker")), "--endpoint", endpoint]
            if concurrency is not None:
                argv += ["--concurrency", concurrency]
            if services is not None:
                argv += ["--services", services]
            if token_file is not None:
                argv += ["--token-file", token_file]
            if token is not None:
                extra_env["THRIFTWORKER_WORKER_TOKEN"] = token
            argv += list(args)
        elif kind == "py":
            argv = [sys.executable, harness.PYWORKER, "--endpoint", endpoint]
            if concurrency is not None:
                argv += ["--concurrency", concurrency]
            if services is not None:
                argv += ["--services", services]
            if token is not None:
                argv += ["--token", token]
            assert token_file is None, "pyworker takes --token"
        elif kind == "pkg":
            # The `thriftworker` Python package (python/), installed in the venv.
            # `workers=None`: one worker in the process (`--single`); else the
            # supervisor with that many worker processes.
            argv = [sys.executable, "-m", "thriftworker", "--endpoint", endpoint, "--mode", mode, *args, target]
            argv += ["--single"] if workers is None else ["--workers", workers]
            if concurrency is not None:
                argv += ["--concurrency", concurrency]
            if token_file is not None:
                argv += ["--token-file", token_file]
            if token is not None:
                extra_env["THRIFTWORKER_WORKER_TOKEN"] = token
            extra_env["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__))
        else:
            raise ValueError(kind)
        before = dp.registered() if dp else 0
        expected = workers if kind == "pkg" and workers is not None else 1
        n = sum(1 for p in processes.all if p.name.startswith(f"{kind}-worker"))
        process = processes.start(f"{kind}-worker#{n}", argv, clean_env(**extra_env))
        w = Worker(kind, process)
        if wait:
            dp.wait_registered(before + expected, MAX_WAIT, context=processes.tails)
            if kind == "py":
                wait_for(lambda: "ready worker_id=" in w.stdout, 5, "pyworker's ready line", processes.tails)
            if kind == "pkg":
                ready = lambda: (w.stdout + w.stderr).count("ready worker_id=") >= expected  # noqa: E731
                wait_for(ready, 5, "the worker's ready line", processes.tails)
        return w

    return start


# -- the admin API ----------------------------------------------------------------


@pytest.fixture
def thriftctl(dataplane):
    """A harness.Thriftctl for the newest data plane's admin API (or `dp`).

        ctl = thriftctl()
        ctl = thriftctl(dp, token="s3cret")         # THRIFTCTL_TOKEN
        ctl = thriftctl(dp, token_file=path)        # --token-file
    """
    _require(binary("thriftctl"))

    def make(dp=None, *, token=None, token_file=None, env=None):
        dp = dp or dataplane.started[-1]
        return harness.Thriftctl(dp.admin_addr, token=token, token_file=token_file, env=env)

    return make


@pytest.fixture(scope="session")
def admin_pb(tmp_path_factory):
    """Python modules for thriftworker.admin.v1, generated from
    proto/thriftworker/admin/v1/admin.proto with grpc_tools.protoc:
    `admin_pb.pb` (messages) and `admin_pb.grpc` (AdminStub)."""
    import importlib
    import types

    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("admin_pb")
    # Compiled as the Python package `twadmin_v1`, not `thriftworker.admin.v1`
    # (its path under proto/): `thriftworker` is the Python worker package
    # installed in this venv, which would shadow the generated one. The proto
    # package, and so every gRPC name on the wire, is unchanged.
    src = out / "src"
    (src / "twadmin_v1").mkdir(parents=True)
    shutil.copy(harness.REPO / "proto" / "thriftworker" / "admin" / "v1" / "admin.proto", src / "twadmin_v1")
    include = Path(protoc.__file__).resolve().parent / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{src}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(src / "twadmin_v1" / "admin.proto"),
    ])
    assert rc == 0, "grpc_tools.protoc failed on admin.proto"
    sys.path.insert(0, str(out))
    try:
        pb = importlib.import_module("twadmin_v1.admin_pb2")
        grpc_mod = importlib.import_module("twadmin_v1.admin_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return types.SimpleNamespace(pb=pb, grpc=grpc_mod)


@pytest.fixture
def admin_channel():
    """grpc channels to admin APIs, closed at teardown: `admin_channel(dp)`."""
    import grpc

    channels = []

    def open_channel(dp):
        ch = grpc.insecure_channel(dp.admin_addr)
        channels.append(ch)
        return ch

    yield open_channel
    for ch in channels:
        ch.close()
