"""Smoke test of the benchmark harness (bench/): `loadgen` runs briefly
against the data plane with one Rust worker, and against the one-hop
`echo-baseline` server, and every reply it checks is valid."""

import json
import socket
import subprocess
from pathlib import Path

import pytest

from harness import binary, clean_env, wait_for


def _bench_binary(name):
    path = binary(name)
    if not Path(path).exists():
        pytest.fail(
            f"{path} not found: build it first (cargo build --workspace --bins)",
            pytrace=False,
        )
    return path


def run_loadgen(addr, protocol="binary", context=None):
    """Runs loadgen for ~2 s (4 connections x depth 4); returns its JSON report."""
    argv = [
        str(_bench_binary("loadgen")),
        "--addr", addr,
        "--connections", "4",
        "--depth", "4",
        "--warmup", "300ms",
        "--duration", "1700ms",
        "--payload", "100",
        "--protocol", protocol,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=clean_env())
    extra = ("\n" + context()) if context else ""
    assert done.returncode == 0, f"loadgen exited {done.returncode}\n{done.stderr}\n{done.stdout}{extra}"
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"loadgen printed more than one line: {done.stdout!r}"
    report = json.loads(lines[0])
    assert report["invalid"] == 0, report
    assert report["errors"] == 0, report
    assert report["calls_per_sec"] > 0, report
    assert report["calls"] > 0 and report["p50_us"] > 0, report
    assert report["p50_us"] <= report["p99_us"] <= report["max_us"], report
    return report


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_loadgen_through_the_data_plane(dataplane, worker, processes, protocol):
    dp = dataplane()
    worker(concurrency=8)
    run_loadgen(dp.addr_str("echo"), protocol, processes.tails)
    assert dp.alive(), dp.tail()


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_loadgen_against_echo_baseline(processes, protocol):
    server = processes.start("echo-baseline", [_bench_binary("echo-baseline"), "--addr", "127.0.0.1:0"])
    line = wait_for(
        lambda: next((l for l in server.stdout.splitlines() if l.startswith("listening ")), None),
        10,
        "echo-baseline's listening line",
        server.tail,
    )
    run_loadgen(line.split()[1], protocol, server.tail)
    assert server.alive(), server.tail()


def test_loadgen_fails_on_a_refused_connection():
    """Nothing listens on the port: loadgen must exit non-zero, with errors counted."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    done = subprocess.run(
        [str(_bench_binary("loadgen")), "--addr", f"127.0.0.1:{port}", "--connections", "1",
         "--duration", "200ms", "--warmup", "0s"],
        capture_output=True, text=True, timeout=30, env=clean_env(),
    )
    assert done.returncode != 0, done
    assert json.loads(done.stdout.strip().splitlines()[-1])["errors"] >= 1, done.stdout
