#!/usr/bin/env python3
"""A killed replica out of the load balancer (bench/RESULTS.md, "Real guests"): a set of 3
replicas behind the server's balancer, a client fetching a page through it in a loop (a new
connection each), and one replica killed from the host: SIGKILL to a sandbox replica's process, or
to a guest's qemu (libvirt driver).

What is measured from the kill, per round:

- out of the balancer: the last connection the balancer sends to the dead replica. The bench
  takes the dead replica's host port as soon as the kill frees it and answers every connection
  there with a 503: each one is a connection the balancer still sent to the dead replica (and a
  failed request for the client). Without this listener the balancer would find the port refusing
  and skip to the next replica, and the client would see nothing at all.
- failure-free from: the client's last failed request (the first moment from which every request
  succeeds; 0 when none failed).
- status: when `vm status` no longer counts it ready.

HAProxy's default health checks (inter 2s, fall 3) take 4-6 s to take a dead server out; a
connection refused meanwhile is retried on another server only with `option redispatch` and
`retries`.

    .venv/bin/python bench/lb_failover.py --rounds 10 [--guest-rounds 5] [--agent PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import blixard
from bench_util import qemu_pid, replica_pid
from bench_util import wait as _wait

REPO = Path(__file__).resolve().parents[1]
PYTHON = "/usr/bin/python3"
SERVER = """\
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
class P(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2")
        self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), P).serve_forever()
"""
GUEST = """{ ... }: {
  microvm = { mem = 256; vcpu = 1; };
  services.nginx = { enable = true; virtualHosts.default.locations."/".return = "200 'ok'"; };
  networking.firewall.allowedTCPPorts = [ 80 ];
}
"""


def wait(cond, timeout=120.0, step=0.005):
    return _wait(cond, timeout, step)


class Spy:
    """Takes a dead replica's host port and counts the connections still sent to it."""

    def __init__(self, port: int):
        self.port, self.hits, self.bound_at = port, [], None
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        deadline = time.monotonic() + 5
        while not self.stop.is_set():
            try:
                self.sock.bind(("", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.0005)
        self.bound_at = time.monotonic()
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.hits.append(time.monotonic())
            try:
                conn.sendall(b"HTTP/1.0 503 Dead\r\nContent-Length: 4\r\n\r\ndead")
            except OSError:
                pass
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


class Client:
    """Fetches the page through the balancer in a loop: (when it ended, whether it was good)."""

    def __init__(self, address: str):
        self.address, self.results = address, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(f"http://{self.address}/", timeout=2) as r:
                    ok = r.read() == b"ok"
            except Exception:  # noqa: BLE001 - a failed request is what is counted
                ok = False
            self.results.append((time.monotonic(), ok))

    def close(self):
        self.stop.set()
        self.thread.join()


def kills(c, name: str, replicas: int, rounds: int, find_pid) -> dict:
    def ready():
        st = c.vm(name).status()
        return st.get("readyReplicas") == replicas and st.get("endpoints") and st

    st = wait(ready, 300)
    lb = st["endpoints"][0]["address"]
    out, clean, status, failed, total = [], [], [], 0, 0
    for i in range(rounds):
        st = wait(ready, 300)
        victim = next(x for x in st["instances"] if x["name"] == f"{name}-{1 + i % replicas}")
        host_port = int(next(iter(victim["hostPorts"].values())))
        pid = wait(lambda: find_pid(victim), 30)
        client = Client(lb)
        time.sleep(0.5)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        spy = Spy(host_port)

        def gone():
            s = c.vm(name).status()
            return s.get("readyReplicas", replicas) < replicas or all(
                x["name"] != victim["name"] or x.get("phase") != "Running" or
                x.get("restarts", 0) != victim.get("restarts", 0) for x in s.get("instances", []))
        wait(gone, 30, step=0.001)
        status.append(time.monotonic() - killed)
        time.sleep(3)
        client.close()
        spy.close()
        after = [(t, ok) for t, ok in client.results if t >= killed]
        failures = [t for t, ok in after if not ok]
        out.append(max(spy.hits) - killed if spy.hits else 0.0)
        clean.append(max(failures) - killed if failures else 0.0)
        failed += len(failures)
        total += len(after)
        print(f"  kill {i + 1}: last connection to it {out[-1] * 1000:.1f} ms "
              f"({len(spy.hits)} sent to it), failure-free from {clean[-1] * 1000:.1f} ms, "
              f"status {status[-1] * 1000:.1f} ms, spy bound after "
              f"{((spy.bound_at or killed) - killed) * 1000:.1f} ms", flush=True)
    return {"out": out, "clean": clean, "status": status, "failed": failed, "total": total}


def report(what: str, r: dict) -> None:
    def p(xs):
        return f"p50 {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms"

    print(f"{what}, {len(r['out'])} kills: last connection sent to it {p(r['out'])}; "
          f"failure-free from {p(r['clean'])}; status {p(r['status'])}; "
          f"client requests failed {r['failed']} of {r['total']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10, help="sandbox kills")
    ap.add_argument("--guest-rounds", type=int, default=5, help="guest (qemu) kills; 0: none")
    ap.add_argument("--agent", help="blixard-agent to run (default: the one beside this Python)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="blixard-bench-lb-"))
    state = tmp / "libvirtd.state"
    env = dict(os.environ, BLIXARD_DATA_DIR=str(tmp / "data"))
    if args.agent:
        env["BLIXARD_AGENT"] = args.agent
    up = ["up", "--listen", "127.0.0.1:0"]
    if args.guest_rounds:
        subprocess.run([str(REPO / "scripts/libvirtd"), "start", str(state)], check=True)
        up += ["--vm-driver", "libvirt"]
    try:
        subprocess.run([sys.executable, "-m", "blixard", *up], env=env, check=True,
                       capture_output=True)
        info = json.loads((tmp / "data" / "server.json").read_text())
        c = blixard.connect(info["address"], token=info["token"])
        print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
        if args.rounds:
            c.apply_objects({"vms": [{"metadata": {"name": "lbs"}, "spec": {
                "type": "long-lived", "memory": 64, "vcpu": 1, "ports": [80], "replicas": 3,
                "driver": "sandbox", "command": [PYTHON, "-c", SERVER]}}]})
            report("sandbox replica (SIGKILL to its process)",
                   kills(c, "lbs", 3, args.rounds,
                         lambda victim: replica_pid(victim["name"])))
            c.delete_vm("lbs")
        if args.guest_rounds:
            config = tmp / "page.nix"
            config.write_text(GUEST)
            c.create_vm("lbg", config=str(config), replicas=3)
            report("guest (SIGKILL to its qemu)",
                   kills(c, "lbg", 3, args.guest_rounds, lambda victim: qemu_pid(victim["name"])))
            c.delete_vm("lbg")
    finally:
        subprocess.run([sys.executable, "-m", "blixard", "down"], env=env, capture_output=True)
        if args.guest_rounds:
            subprocess.run([str(REPO / "scripts/libvirtd"), "stop", str(state)])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
