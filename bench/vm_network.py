#!/usr/bin/env python3
"""A replica on a VM network (bench/RESULTS.md, "VM networks"): what the agent's port relay costs.
A replica on a network serves in a network namespace of its own and its host port is relayed into
it by the agent (runtime/port_forward); baseline in the same run: the same program as a replica on
the host's network, serving its host port itself. Both on one `blixard-agent --server` with its own
node, requests alternated in blocks, each a new connection and an HTTP GET (what the server's load
balancer and a client do). The script runs itself in a network namespace of its own (`unshare -n`)
so the network's bridge and guard are not the host's.

    .venv/bin/python bench/vm_network.py --requests 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blixard
from bench_util import pct
from blixard.cli import find_agent

SERVER = """\
import http.server, os, signal, socketserver, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
body = b"ok"
class P(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2")
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
socketserver.ThreadingTCPServer(("", int(os.environ["PORT"])), P).serve_forever()
"""


def get(port: int) -> float:
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.endswith(b"ok"), reply
    return time.perf_counter() - began


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    if os.environ.get("BLIXARD_BENCH_NETNS") != "1":
        env = dict(os.environ, BLIXARD_BENCH_NETNS="1")
        return subprocess.call(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"',
                                "sh", sys.executable, *sys.argv], env=env)
    data = Path(tempfile.mkdtemp(prefix="blixard-net-bench-"))
    log = open(data / "server.log", "wb")
    server = subprocess.Popen([find_agent(), "--server", "--listen", "127.0.0.1:0",
                               "--data-dir", str(data / "server")], stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        state = data / "server" / "server.json"
        deadline = time.monotonic() + 30
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        info = json.loads(state.read_text())
        c = blixard.connect(info["address"], token=info["token"])
        c.create_network("bench", "10.66.0.0/24")
        base = {"type": "long-lived", "memory": 64, "vcpu": 1, "ports": [80], "replicas": 1,
                "command": ["/usr/bin/python3", "-c", SERVER]}
        c.apply_objects({"vms": [{"metadata": {"name": "plain"}, "spec": base},
                                 {"metadata": {"name": "onnet"},
                                  "spec": dict(base, network="bench")}]})
        ports = {}
        deadline = time.monotonic() + 60
        while len(ports) < 2 and time.monotonic() < deadline:
            for name in ("plain", "onnet"):
                st = c.vm(name).status()
                if st.get("readyReplicas") == 1:
                    ports[name] = int(st["instances"][0]["hostPorts"]["80"])
            time.sleep(0.05)
        for name, port in ports.items():
            for _ in range(50):  # warm both paths
                get(port)
        times = {"plain": [], "onnet": []}
        block = 100
        for _ in range(args.requests // block):
            for name in ("plain", "onnet"):
                times[name] += [get(ports[name]) for _ in range(block)]
        print(f"{args.requests} requests each, new connection per request")
        for name, label in (("plain", "host network, its own host port"),
                            ("onnet", "on a network, host port relayed by the agent")):
            t = times[name]
            print(f"{label:48s} p50 {statistics.median(t) * 1e3:.3f} ms  "
                  f"p99 {pct(t, 99) * 1e3:.3f} ms")
        print(f"ratio p50 {statistics.median(times['onnet']) / statistics.median(times['plain']):.2f}x"
              f"  p99 {pct(times['onnet'], 99) / pct(times['plain'], 99):.2f}x")
        for name in ("plain", "onnet"):
            c.delete_vm(name)
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
