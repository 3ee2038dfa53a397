"""A real data plane (target/debug/thriftworker) for the tests that need
one: started on port 0 everywhere, its addresses read from its ready file
(as tests/e2e does), stopped at the end. Build it first:
`cargo build -p thriftworker`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BINARY = Path(os.environ.get("THRIFTWORKER_TARGET_DIR", ROOT / "target" / "debug")) / "thriftworker"
#: No wait in these tests is longer than this (seconds).
MAX_WAIT = 20.0

T = TypeVar("T")

CONFIG = """
[server]
shutdown_timeout = "5s"
[admin]
address = "127.0.0.1:0"
[metrics]
address = "127.0.0.1:0"
[workers]
endpoints = [{endpoint}]
heartbeat_interval = "{heartbeat}"
heartbeat_liveness = 3
[[services]]
name = "Echo"
timeout = "15s"
queue_timeout = "10s"
[services.method_timeouts]
slow = "30s"
[[listeners]]
name = "echo"
address = "127.0.0.1:0"
services = ["Echo"]
"""


def wait_for(
    predicate: Callable[[], T | None], what: str, timeout: float = 10.0, context: Callable[[], str] | None = None
) -> T:
    """Polls `predicate` until it returns something truthy (returned), or
    fails after `timeout` seconds naming `what` (and `context()`)."""
    assert timeout <= MAX_WAIT
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(0.02)


class DataPlane:
    """One `thriftworker` process serving Echo, its worker endpoint `endpoint`
    (tcp://127.0.0.1:0 picks a port: `self.worker_endpoint` is the bound one)."""

    def __init__(self, tmp: Path, name: str, endpoint: str = "tcp://127.0.0.1:0", heartbeat: str = "1s") -> None:
        if not BINARY.exists():
            pytest.skip(f"{BINARY} is not built: run `cargo build -p thriftworker` first")
        self.name = name
        config = tmp / f"{name}.toml"
        config.write_text(CONFIG.format(endpoint=json.dumps(endpoint), heartbeat=heartbeat))
        ready = tmp / f"{name}.ready.json"
        self.log_path = tmp / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("THRIFTWORKER_")}
        env["NO_COLOR"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(BINARY), "--config", str(config), "--ready-file", str(ready)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

        def read_ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"data plane {name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                info: dict[str, Any] = json.loads(ready.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return None
            return info

        try:
            info = wait_for(read_ready, f"data plane {name}'s ready file", MAX_WAIT, self.log)
        except BaseException:
            self.kill()
            raise
        self.worker_endpoint: str = info["worker_endpoints"][0]
        host, port = info["listeners"]["echo"].rsplit(":", 1)
        self.echo_addr = (host.strip("[]"), int(port))
        self.metrics_addr: str = info["metrics"]

    @property
    def worker_port(self) -> int:
        return int(self.worker_endpoint.rsplit(":", 1)[1])

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace")
        return f"--- data plane {self.name} log (tail) ---\n" + "\n".join(text.splitlines()[-40:])

    def count(self, text: str) -> int:
        return self.log_path.read_text(errors="replace").count(text)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5) as r:
            body: bytes = r.read()
        return body.decode()

    def worker_credit(self) -> dict[str, int]:
        """`thriftworker_worker_credit` by worker id: each registration's credit here."""
        pattern = r'^thriftworker_worker_credit\{worker="([^"]+)"\} (\d+)$'
        return {m[1]: int(m[2]) for m in re.finditer(pattern, self.metrics(), re.MULTILINE)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
