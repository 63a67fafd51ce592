#!/usr/bin/env python3
"""Failover of a set with a primary (bench/RESULTS.md, "Failover"): a server and three agents in
network namespaces (netns_cluster.py), a 3-replica set on a shared pool with a primary election
policy, a client writing through the load balancer in a loop; per round the primary is lost one
way, and the time is taken from the loss to each failover step (as `vm status` times them) and
to the first write the new primary accepts through the balancer. Kinds:

- process: SIGKILL to the primary's process (its exit is reported by its agent at once);
- agent:   `kill -9` of the primary's agent (its connection closes: the server knows at once;
           the replica dies with its agent);
- cut:     the agent's link set down (only the lease tells; the fence watchdog beside the agent
           kills the primary at half the lease).

    sudo .venv/bin/python bench/failover.py --rounds 20 --cut-rounds 5 --lease 4s

With --guests N instead: one `blixard-agent --server --vm-driver libvirt` (its own node), a
2-replica set of real guests (TCG here), and N rounds of SIGKILL to the primary's qemu.

Also counted: writes acknowledged by an old epoch after the new one's first (must be 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench_util import qemu_pid, replica_pid, wait
from netns_cluster import NetnsCluster

# A replica: a standby idles; the primary acknowledges each POST with its epoch.
DB = r"""
import http.server, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if os.environ.get("BLIXARD_ROLE") != "primary":
    while True:
        time.sleep(60)
body = os.environ["BLIXARD_EPOCH"].encode()
class Db(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", int(os.environ.get("PORT_5432", "5432"))), Db).serve_forever()
"""

STEPS = ("detected", "fenced", "volume-attached", "balancer-switched")


class Writer(threading.Thread):
    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address = address
        self.acks = []  # (monotonic time, epoch)
        self.failed = 0
        self.stopping = False
        self.start()

    def run(self) -> None:
        while not self.stopping:
            try:
                req = urllib.request.Request(f"http://{self.address}/w", data=b"", method="POST")
                with urllib.request.urlopen(req, timeout=0.5) as r:
                    self.acks.append((time.monotonic(), int(r.read())))
            except (OSError, http.client.HTTPException, ValueError):
                # (A connection cut mid-answer by a dying primary: not acknowledged.)
                self.failed += 1
                time.sleep(0.005)


def at(step: dict) -> float:
    """A step's wall-clock time (its `at`, RFC 3339)."""
    return dt.datetime.fromisoformat(step["at"].replace("Z", "+00:00")).timestamp()


def guests(rounds: int) -> int:
    """Failovers of real guests on one node: the primary's qemu killed."""
    import tempfile

    import blixard
    from blixard.cli import find_agent

    work = Path(tempfile.mkdtemp(prefix="blixard-failover-guests-"))
    work.chmod(0o755)  # qemu (libvirt's user) opens the volume's image in the pool below
    log = open(work / "server.log", "wb")
    server = subprocess.Popen([find_agent(), "--server", "--listen", "127.0.0.1:0",
                               "--data-dir", str(work / "s"), "--vm-driver", "libvirt"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait(lambda: (work / "s" / "server.json").exists(), 60)
        info = json.loads((work / "s" / "server.json").read_text())
        c = blixard.connect(info["address"], token=info["token"])
        c.create_storage_pool("shared", str(work / "shared"), pool_type="shared-dir")
        config = work / "db.yaml"
        config.write_text(json.dumps({"memory": "256M", "ports": [5432],
                                      "command": ["/usr/bin/python3", "-c", DB]}))
        c.create_vm("db", config, replicas=2, storage_class="replicated", storage_size="64M",
                    primary_election_policy="oldest-first")

        def settled():
            st = c.vm("db").status()
            return st if st.get("primary") and st.get("readyReplicas") == 2 and st.get(
                "endpoints") else None

        st = wait(settled, 300)
        writer = Writer(st["endpoints"][0]["address"])
        figures = {s: [] for s in STEPS + ("first write",)}
        stale = 0
        for r in range(rounds):
            st = wait(settled, 300)
            epoch = int(st["primaryEpoch"])
            primary = next(i for i in st["instances"] if i.get("role") == "primary")
            wait(lambda: writer.acks and writer.acks[-1][1] == epoch, 60)
            wall, t0 = time.time(), time.monotonic()
            os.kill(qemu_pid(primary["name"]), signal.SIGKILL)
            first = wait(lambda: next((t for t, e in writer.acks if e > epoch and t > t0), None),
                         120)
            stale += sum(1 for t, e in writer.acks if t > first and e <= epoch)
            st = wait(lambda: (lambda s: s if s.get("failover") and s["failover"][-1]["step"]
                               == "balancer-switched" and int(s["primaryEpoch"]) > epoch
                               else None)(c.vm("db").status()), 60)
            steps = {s["step"]: at(s) for s in st["failover"]}
            for name in STEPS:
                figures[name].append((steps[name] - wall) * 1000)
            figures["first write"].append((first - t0) * 1000)
            print(f"guest {r}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in figures.items()),
                  flush=True)
        writer.stopping = True
        writer.join(5)
        print(f"guests ({rounds} failovers, TCG): " + "; ".join(
            f"{k} p50 {statistics.median(v):.0f} / max {max(v):.0f} ms"
            for k, v in figures.items()))
        print(f"writes acknowledged by an old epoch after the new one's first: {stale}")
        c.delete_vm("db")
        wait(lambda: not c.vms(), 60)
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cut-rounds", type=int, default=5)
    ap.add_argument("--lease", default="4s")
    ap.add_argument("--guests", type=int, default=0, metavar="N",
                    help="N failovers of real guests on one node instead")
    args = ap.parse_args()
    if args.guests:
        return guests(args.guests)
    cluster = NetnsCluster(args.lease, "bf")
    try:
        c = cluster.client
        for name in ("n1", "n2", "n3"):
            cluster.start(name)
        c.create_storage_pool("shared", str(cluster.work / "shared"), pool_type="shared-dir")
        config = cluster.work / "db.yaml"
        config.write_text(json.dumps({"memory": "64M", "ports": [5432],
                                      "command": ["/usr/bin/python3", "-c", DB]}))
        c.create_vm("db", config, replicas=3, storage_class="replicated", storage_size="1G",
                    primary_election_policy="oldest-first")

        def settled():
            st = c.vm("db").status()
            # (Spread at first; a slot started again while its node was away stays where it
            # went: a standby, so that node may hold two.)
            ok = st.get("primary") and st.get("readyReplicas") == 3 and st.get("endpoints")
            return st if ok else None

        st = wait(settled, 60)
        writer = Writer(st["endpoints"][0]["address"])
        figures = {k: {s: [] for s in STEPS + ("first write",)} for k in ("process", "agent",
                                                                           "cut")}
        stale = 0
        for kind, rounds in (("process", args.rounds), ("agent", args.rounds),
                             ("cut", args.cut_rounds)):
            for r in range(rounds):
                st = wait(settled, 60)
                epoch = int(st["primaryEpoch"])
                primary = next(i for i in st["instances"] if i.get("role") == "primary")
                wait(lambda: writer.acks and writer.acks[-1][1] == epoch, 20)
                wall, t0 = time.time(), time.monotonic()
                if kind == "process":
                    os.kill(replica_pid(primary["name"], b"BLIXARD_ROLE=primary"), signal.SIGKILL)
                elif kind == "agent":
                    cluster.kill(primary["node"])
                else:
                    cluster.cut(primary["node"])
                first = wait(lambda: next((t for t, e in writer.acks if e > epoch and t > t0),
                                          None), 60)
                stale += sum(1 for t, e in writer.acks if t > first and e <= epoch)
                st = wait(lambda: (lambda s: s if s.get("failover") and s["failover"][-1]["step"]
                                   == "balancer-switched" and int(s["primaryEpoch"]) > epoch
                                   else None)(c.vm("db").status()), 30)
                steps = {s["step"]: at(s) for s in st["failover"]}
                for name in STEPS:
                    figures[kind][name].append((steps[name] - wall) * 1000)
                figures[kind]["first write"].append((first - t0) * 1000)
                print(f"{kind} {r}: " + ", ".join(
                    f"{k} {v[-1]:.0f} ms" for k, v in figures[kind].items()), flush=True)
                if kind == "agent":
                    cluster.start(primary["node"])
                elif kind == "cut":
                    cluster.restore(primary["node"])
                    wait(lambda: cluster.ready(primary["node"]), 60)
        writer.stopping = True
        writer.join(5)
        for kind, steps in figures.items():
            if steps["first write"]:
                print(f"{kind} ({len(steps['first write'])} failovers, lease {args.lease}): " +
                      "; ".join(f"{k} p50 {statistics.median(v):.0f} / max {max(v):.0f} ms"
                                for k, v in steps.items()))
        print(f"writes acknowledged by an old epoch after the new one's first: {stale}; "
              f"writes failed in all: {writer.failed} of {writer.failed + len(writer.acks)}")
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
