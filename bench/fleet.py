#!/usr/bin/env python3
"""bench/fleet.py: several data planes, every worker attached to each.

Two runs, on the release binaries (`cargo build --release -p thriftworker
-p thriftworker-examples -p thriftworker-bench` first, or `bash bench/run`):

1. **Load through 2 data planes.** Data planes A and B (worker endpoints
   127.0.0.1:PORT and 127.0.0.2:PORT, one name behind a hosts file, as a
   headless Service would give them), WORKERS echo-workers given that name,
   and one `loadgen` per data plane at the same time. Prints calls/s per data
   plane, errors, and how each worker's credit is split (from /metrics).
2. **Rolling drain.** Three data planes A, B, C; each in turn is taken out of
   the name, sent SIGTERM, waited for (it must exit 0) and started again,
   while a `loadgen` runs through each of the other two. Prints each phase's
   calls/s and errors; every run must have 0.

    python3 bench/fleet.py                   # WORKERS=2, 8 s per load run
    WORKERS=3 DURATION=15s python3 bench/fleet.py

Clients of the data plane being drained are not part of phase 2: the drain
of one data plane (calls read are answered, then connections close) is what
the single-data-plane drain tests cover; here the question is whether the
other replicas lose anything while workers move their credit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("BIN_DIR", REPO / "target" / "release"))
WORKERS = int(os.environ.get("WORKERS", "2"))
DURATION = os.environ.get("DURATION", "8s")
NAME = "dataplanes.bench"
PROCS: list[subprocess.Popen[bytes]] = []


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} fleet: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(pred, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"fleet: timed out after {timeout}s waiting for {what}")


class DataPlane:
    def __init__(self, tmp: Path, n: int, port: int, gen: int) -> None:
        self.n = n
        self.endpoint = f"tcp://127.0.0.{n}:{port}"
        cfg = tmp / f"dp{n}-{gen}.toml"
        ready = tmp / f"dp{n}-{gen}.json"
        cfg.write_text(
            f"""[server]
shutdown_timeout = "10s"
[workers]
endpoints = ["{self.endpoint}"]
[[services]]
name = "Echo"
timeout = "30s"
queue_timeout = "20s"
max_queue = 100000
[[listeners]]
name = "echo"
address = "127.0.0.{n}:0"
services = ["Echo"]
"""
        )
        self.log = open(tmp / f"dp{n}-{gen}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [BIN / "thriftworker", "--config", cfg, "--ready-file", ready, "--admin-addr", "off",
             "--metrics-addr", f"127.0.0.{n}:0"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        PROCS.append(self.proc)
        info = wait(lambda: ready.exists() and ready.read_text().strip() and json.loads(ready.read_text()), 20,
                    f"data plane {n} ready file")
        self.addr = info["listeners"]["echo"]
        self.metrics_addr = info["metrics"]

    def credits(self) -> list[int]:
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sorted(int(v) for v in re.findall(r'^thriftworker_worker_credit\{worker="[^"]+"\} (\d+)$', text, re.M))


def loadgen(addr: str, duration: str, out: dict[str, dict[str, float]], key: str) -> threading.Thread:
    def run() -> None:
        r = subprocess.run(
            [BIN / "loadgen", "--addr", addr, "--connections", "16", "--depth", "4",
             "--duration", duration, "--warmup", "1s"],
            capture_output=True, text=True, check=False,
        )
        try:
            out[key] = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            out[key] = {"calls_per_sec": 0, "errors": -1, "stderr": r.stderr[-500:]}  # type: ignore[dict-item]

    t = threading.Thread(target=run)
    t.start()
    return t


def publish(hosts: Path, ns: list[int]) -> None:
    hosts.write_text("".join(f"127.0.0.{n} {NAME}\n" for n in ns))


def main() -> int:
    for b in ("thriftworker", "echo-worker", "loadgen"):
        if not (BIN / b).exists():
            raise SystemExit(f"fleet: {BIN / b} not found: cargo build --release -p thriftworker "
                             "-p thriftworker-examples -p thriftworker-bench")
    tmp = Path(tempfile.mkdtemp(prefix="twfleet"))
    port = free_port()
    hosts = tmp / "hosts"
    bad = 0
    try:
        dps = {n: DataPlane(tmp, n, port, 0) for n in (1, 2)}
        publish(hosts, [1, 2])
        for i in range(WORKERS):
            PROCS.append(subprocess.Popen(
                [BIN / "echo-worker", "--endpoint", f"tcp://{NAME}:{port}", "--services", "Echo",
                 "--hosts-file", hosts, "--resolve-interval", "500ms"],
                stdout=subprocess.DEVNULL, stderr=open(tmp / f"worker{i}.log", "wb"),  # noqa: SIM115
            ))
        for dp in dps.values():
            wait(lambda dp=dp: len(dp.credits()) == WORKERS, 20, f"{WORKERS} workers at data plane {dp.n}")
        total = 4 + 256
        log(f"run 1: {WORKERS} echo-workers (credit {total} each) attached to A and B; loadgen 16x4 on each for {DURATION}")
        results: dict[str, dict[str, float]] = {}
        threads = [loadgen(dp.addr, DURATION, results, f"dp{n}") for n, dp in dps.items()]
        for t in threads:
            t.join()
        print("\n## Load through 2 data planes\n")
        print("| data plane | calls/s | p50 µs | p99 µs | errors | invalid | worker credits here |")
        print("|---|--:|--:|--:|--:|--:|---|")
        for n, dp in dps.items():
            r = results[f"dp{n}"]
            errors = int(r.get("errors", -1)) + int(r.get("invalid", 0))
            bad += errors != 0
            print(f"| {'AB'[n - 1]} (127.0.0.{n}) | {r.get('calls_per_sec', 0):,.0f} | {r.get('p50_us', '-')} | "
                  f"{r.get('p99_us', '-')} | {r.get('errors')} | {r.get('invalid', 0)} | {dp.credits()} |")
        both = sum(results[f"dp{n}"].get("calls_per_sec", 0) for n in dps)
        print(f"\nTogether: {both:,.0f} calls/s.")

        # Run 2: rolling drain over A, B, C.
        dps[3] = DataPlane(tmp, 3, port, 0)
        publish(hosts, [1, 2, 3])
        wait(lambda: len(dps[3].credits()) == WORKERS, 20, "workers at C")
        print("\n## Rolling drain (each data plane out of the name, SIGTERM, restarted; load on the other two)\n")
        print("| phase | drained | load on | calls/s each | errors | drained exit | back with workers in |")
        print("|---|---|---|---|--:|--:|--:|")
        for phase, victim in enumerate((1, 2, 3), 1):
            others = [n for n in (1, 2, 3) if n != victim]
            results = {}
            threads = [loadgen(dps[n].addr, DURATION, results, f"dp{n}") for n in others]
            time.sleep(2)  # load running (1 s warm-up) before the drain
            publish(hosts, others)
            time.sleep(1)  # like a pod's preStop: out of the name first
            dps[victim].proc.send_signal(signal.SIGTERM)
            rc = dps[victim].proc.wait(30)
            started = time.monotonic()
            dps[victim] = DataPlane(tmp, victim, port, phase)
            publish(hosts, [1, 2, 3])
            wait(lambda v=victim: len(dps[v].credits()) == WORKERS, 20, f"workers back at {victim}")
            back = time.monotonic() - started
            for t in threads:
                t.join()
            errors = sum(int(results[f"dp{n}"].get("errors", -1)) + int(results[f"dp{n}"].get("invalid", 0))
                         for n in others)
            bad += errors != 0 or rc != 0
            rates = ", ".join(f"{'ABC'[n - 1]} {results[f'dp{n}'].get('calls_per_sec', 0):,.0f}" for n in others)
            print(f"| {phase} | {'ABC'[victim - 1]} | {'+'.join('ABC'[n - 1] for n in others)} | {rates} | "
                  f"{errors} | {rc} | {back:.2f} s |")
        print(f"\nMachine: {os.cpu_count()} CPUs; `{' '.join(sys.argv)}` WORKERS={WORKERS} DURATION={DURATION}.")
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in PROCS:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    if bad:
        log(f"{bad} run(s) had errors or a non-zero exit; logs in {tmp}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
