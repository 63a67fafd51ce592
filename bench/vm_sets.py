#!/usr/bin/env python3
"""VM sets on the sandbox driver (bench/RESULTS.md, "VM sets"): a `blixard-agent --server` with its
own node, driven through the Python SDK, beside the same replica program run as a bare process.

- create -> ready: a 1-replica set created until `vm status` says Running, p50/p99 over --rounds;
  baseline: the same command started with subprocess until its port accepts a connection.
- memory per replica: the agent's RSS growth per replica over 8 replicas (as many 1-vCPU
  replicas as 2 cores take at the 4x vCPU ratio); the replica's own RSS beside the bare one's.
- a killed replica out of the load balancer: SIGKILL a replica's process, then the time until
  the set's status no longer counts it ready (the balancer reads the same list per connection),
  and how many of a polling client's requests failed meanwhile. HAProxy's default checks (inter
  2s, fall 3) take about 6 s.
- a 5-replica rolling update: `update_vm` to the end of the rollout (minHealthyTime 1s and a 1 s
  drain per replica, the defaults).

    .venv/bin/python bench/vm_sets.py --rounds 20
"""

from __future__ import annotations

import argparse
import json
import os
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
from bench_util import pct, replica_pid
from bench_util import wait as _wait
from blixard.cli import find_agent

PYTHON = "/usr/bin/python3"
SERVER = """\
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
body = (os.environ.get("PAGE", "v1") + " " + os.environ.get("BLIXARD_REPLICA", "bare")).encode()
class P(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), P).serve_forever()
"""


def wait(cond, timeout=60.0, step=0.002):
    return _wait(cond, timeout, step)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ms(v):
    return f"{v * 1000:.1f} ms"


def spec(replicas: int, page: str = "v1") -> dict:
    return {"type": "long-lived", "memory": 64, "vcpu": 1, "ports": [80],
            "replicas": replicas, "command": [PYTHON, "-c", SERVER], "env": {"PAGE": page}}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="blixard-vm-bench-"))
    log = open(data / "server.log", "wb")
    server = subprocess.Popen([find_agent(), "--server", "--listen", "127.0.0.1:0",
                               "--data-dir", str(data / "server")], stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        state = data / "server" / "server.json"
        wait(state.exists, 30)
        info = json.loads(state.read_text())
        c = blixard.connect(info["address"], token=info["token"])

        def ready(name, n):
            st = c.vm(name).status()
            return st.get("phase") == "Running" and st.get("readyReplicas") == n and st

        # 1. create -> ready, beside the bare process.
        bare, ours = [], []
        for i in range(args.rounds):
            port = free_port()
            t0 = time.monotonic()
            p = subprocess.Popen([PYTHON, "-c", SERVER], env=dict(os.environ, PORT=str(port)))
            wait(lambda: accepts(port))
            bare.append(time.monotonic() - t0)
            p.terminate()
            p.wait()
            name = f"r{i}"
            t0 = time.monotonic()
            c.apply_objects({"vms": [{"metadata": {"name": name}, "spec": spec(1)}]})
            wait(lambda: ready(name, 1))
            ours.append(time.monotonic() - t0)
            c.delete_vm(name)
        print(f"create -> ready, {args.rounds} rounds: sandbox replica p50 {ms(pct(ours, 50))} "
              f"p99 {ms(pct(ours, 99))}; bare process p50 {ms(pct(bare, 50))} "
              f"p99 {ms(pct(bare, 99))}; ratio p50 {pct(ours, 50) / pct(bare, 50):.2f}x")

        # 2. memory per replica: the agent's growth.
        wait(lambda: not c.vms())
        before = rss_kib(server.pid)
        c.apply_objects({"vms": [{"metadata": {"name": "mem"}, "spec": spec(8)}]})
        wait(lambda: ready("mem", 8), 120)
        time.sleep(1)
        after = rss_kib(server.pid)
        pids = [replica_pid(f"mem-{i}") for i in range(1, 9)]
        replica_rss = statistics.median(rss_kib(p) for p in pids if p)
        bare_port = free_port()
        p = subprocess.Popen([PYTHON, "-c", SERVER], env=dict(os.environ, PORT=str(bare_port)))
        wait(lambda: accepts(bare_port))
        bare_rss = rss_kib(p.pid)
        p.terminate()
        p.wait()
        print(f"memory: agent +{(after - before) / 8:.0f} KiB per replica (8 replicas); "
              f"a replica's process {replica_rss:.0f} KiB, the bare process {bare_rss} KiB")
        c.delete_vm("mem")

        # 3. a killed replica out of the rotation, a client polling the balancer meanwhile.
        c.apply_objects({"vms": [{"metadata": {"name": "lb"}, "spec": spec(3)}]})
        wait(lambda: ready("lb", 3))
        lb = wait(lambda: c.vm("lb").status().get("endpoints"))[0]["address"]
        outs, failed_total, answered = [], 0, 0
        for i in range(min(args.rounds, 10)):
            wait(lambda: ready("lb", 3))
            stop, failures, answers = threading.Event(), [], []

            def poll():
                while not stop.is_set():
                    try:
                        urllib.request.urlopen(f"http://{lb}/", timeout=2).read()
                        answers.append(1)
                    except OSError:
                        failures.append(1)

            t = threading.Thread(target=poll)
            t.start()
            victim = f"lb-{1 + i % 3}"
            pid = replica_pid(victim)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)

            def out():
                st = c.vm("lb").status()
                return all(x["name"] != victim or x["phase"] != "Running" or
                           int(x.get("restarts", 0)) > 0 and replica_pid(victim) != pid
                           for x in st.get("instances", [])) and st.get("readyReplicas", 3) < 3
            wait(out, step=0.001)
            outs.append(time.monotonic() - t0)
            time.sleep(0.3)
            stop.set()
            t.join()
            failed_total += len(failures)
            answered += len(answers)
        print(f"killed replica out of the balancer, {len(outs)} kills: p50 {ms(pct(outs, 50))}, "
              f"max {ms(max(outs))}; client requests failed {failed_total} of "
              f"{failed_total + answered}")
        c.delete_vm("lb")

        # 4. a 5-replica rolling update.
        c.apply_objects({"vms": [{"metadata": {"name": "roll"}, "spec": spec(5)}]})
        wait(lambda: ready("roll", 5))
        rv = int(c.vm("roll").get()["metadata"]["resourceVersion"])
        t0 = time.monotonic()
        c.apply_objects({"vms": [{"metadata": {"name": "roll"}, "spec": spec(5, "v2")}]})

        def rolled():
            st = c.vm("roll").status()
            return (int(st.get("observedVersion", 0)) > rv and not st.get("rollout") and
                    len(st.get("instances", [])) == 5 and
                    all(int(x.get("revision", 0)) == 2 for x in st["instances"]))
        wait(rolled, 120)
        print(f"5-replica rolling update (minHealthyTime 1s, drain 1s): "
              f"{time.monotonic() - t0:.2f} s")
        c.delete_vm("roll")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        subprocess.run(["rm", "-rf", str(data)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
