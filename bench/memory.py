#!/usr/bin/env python3
"""Memory and scale check for issue-5 targets: idle RSS, RSS per idle client
connection at N connections, and N workers registered at once.

    python3 bench/memory.py [--connections 10000] [--workers 256]

Starts target/release/thriftworker (build it first: bench/run does), opens
the connections from this process (raising RLIMIT_NOFILE), connects the
workers as raw pyzmq DEALERs speaking READY (needs pyzmq: use .venv/bin/python),
checks one call per 1,000 connections still works, and prints JSON.
"""
import argparse, json, os, resource, signal, socket, struct, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")

def wait_for(pred, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")

def echo_call(sock, seqid):
    name = b"echo"
    arg = b"x" * 16
    body = struct.pack(">I", 0x80010001) + struct.pack(">I", len(name)) + name + struct.pack(">i", seqid)
    body += b"\x0b\x00\x01" + struct.pack(">I", len(arg)) + arg + b"\x00"
    sock.sendall(struct.pack(">I", len(body)) + body)
    hdr = b""
    while len(hdr) < 4:
        hdr += sock.recv(4 - len(hdr))
    n = struct.unpack(">I", hdr)[0]
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data))
    return data

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=256)
    args = ap.parse_args()
    import zmq

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + args.workers + 1000
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, hard)), hard))
    d = tempfile.mkdtemp(prefix="twmem")
    cfg = os.path.join(d, "c.toml")
    with open(cfg, "w") as f:
        f.write(f"""[admin]\nenabled = false\n[metrics]\nenabled = false\n[workers]\nendpoints = ["ipc://{d}/w.sock"]\nheartbeat_interval = "30s"\n
[[services]]\nname = "Echo"\n[[listeners]]\nname = "echo"\naddress = "127.0.0.1:0"\nservices = ["Echo"]\nmax_connections = {args.connections + 10}\nbacklog = 4096\n""")
    ready = os.path.join(d, "ready.json")
    env = dict(os.environ)
    dp = subprocess.Popen([os.path.join(ROOT, "target/release/thriftworker"), "--config", cfg, "--ready-file", ready],
                          stderr=open(os.path.join(d, "dp.err"), "w"),
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard))))
    try:
        wait_for(lambda: os.path.exists(ready), "ready file")
        r = json.load(open(ready))
        host, port = r["listeners"]["echo"].rsplit(":", 1)
        port = int(port)
        time.sleep(0.5)
        idle = rss_kib(dp.pid)
        # Workers: raw DEALERs, READY with credit 1.
        ctx = zmq.Context()
        socks = []
        for i in range(args.workers):
            s = ctx.socket(zmq.DEALER)
            s.connect(r["worker_endpoints"][0])
            s.send_multipart([b"\x01\x01", struct.pack(">I", 1), b"", b"Echo"])
            socks.append(s)
        acks = 0
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        end = time.time() + 30
        pending = set(range(len(socks)))
        while pending and time.time() < end:
            for s, _ in poller.poll(500):
                f = s.recv_multipart()
                if f[0] == b"\x01\x01":
                    i = socks.index(s)
                    if i in pending:
                        pending.discard(i)
                        acks += 1
        with_workers = rss_kib(dp.pid)
        conns = []
        for i in range(args.connections):
            c = socket.create_connection((host, port))
            conns.append(c)
        err = os.path.join(d, "dp.err")
        time.sleep(1.0)
        with_conns = rss_kib(dp.pid)
        # A call on a sample of connections: answered by the worker sockets below.
        served = 0
        for w in socks[:1]:
            pass
        # Serve calls from worker 0 in-line: send a call, answer it as the worker.
        import threading
        stop = False
        def serve():
            while not stop:
                for s, _ in poller.poll(100):
                    f = s.recv_multipart()
                    if f[0] == b"\x01\x02":
                        meta, svc, msg = f[1], f[2], f[3]
                        # Reply: same name/seqid, REPLY type, result field 0 string "x"*16.
                        nlen = struct.unpack(">I", msg[4:8])[0]
                        name = msg[8:8 + nlen]
                        seqid = msg[8 + nlen:12 + nlen]
                        rep = struct.pack(">I", 0x80010002) + struct.pack(">I", nlen) + name + seqid
                        rep += b"\x0b\x00\x00" + struct.pack(">I", 16) + b"x" * 16 + b"\x00"
                        s.send_multipart([b"\x01\x03", meta[:8], rep])
                    elif f[0] == b"\x01\x04":
                        s.send_multipart([b"\x01\x04"])
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        for i in range(0, args.connections, 1000):
            data = echo_call(conns[i], i)
            assert struct.unpack(">I", data[:4])[0] == 0x80010002, data[:8]
            served += 1
        stop = True
        t.join()
        out = {
            "idle_rss_kib": idle,
            "workers_registered": acks,
            "rss_with_workers_kib": with_workers,
            "per_worker_kib": round((with_workers - idle) / max(1, args.workers), 2),
            "connections": len(conns),
            "rss_with_connections_kib": with_conns,
            "per_connection_kib": round((with_conns - with_workers) / max(1, len(conns)), 2),
            "sample_calls_ok": served,
        }
        print(json.dumps(out))
        for c in conns:
            c.close()
        for s in socks:
            s.close(0)
        ctx.term()
    finally:
        dp.send_signal(signal.SIGKILL)
        dp.wait()

if __name__ == "__main__":
    main()
