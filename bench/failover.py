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
2-replica set of real guests (TCG here), and N rounds of SIGKILL to the primary's qemu; with
--promote-signal the workload takes the primary role while it runs instead of starting again.

Also counted: writes acknowledged by an old epoch after the new one's first (must be 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import blixard
from bench_util import qemu_pid, replica_pid, wait
from blixard.cli import find_agent
from netns_cluster import NetnsCluster

# A replica: a standby idles; the primary acknowledges each POST with its epoch. With
# BLIXARD_PROMOTE_SIGNAL (--promote-signal) a standby guest takes the primary role while it runs,
# told by SIGUSR1, its new environment in /run/blixard/role (docs/vms.md).
DB = r"""
import http.server, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if os.environ.get("BLIXARD_ROLE") != "primary":
    if not os.environ.get("BLIXARD_PROMOTE_SIGNAL"):
        while True:
            time.sleep(60)
    import threading
    told = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: told.set())
    while not told.wait(1):
        pass
    os.environ.update(l.split("=", 1) for l in open("/run/blixard/role").read().splitlines())
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


def create_set(c, work: Path, replicas: int, memory: str, env: dict | None = None) -> None:
    c.create_storage_pool("shared", str(work / "shared"), pool_type="shared-dir")
    config = work / "db.yaml"
    config.write_text(json.dumps({"memory": memory, "ports": [5432], "env": env or {},
                                  "command": ["/usr/bin/python3", "-c", DB]}))
    c.create_vm("db", config, replicas=replicas, storage_class="replicated",
                storage_size="64M", primary_election_policy="oldest-first")


class Failovers:
    """Rounds of a lost primary on set "db": each step's time from the loss, per kind."""

    def __init__(self, c, replicas: int, timeout: float):
        self.c, self.replicas, self.timeout = c, replicas, timeout
        self.figures = {}
        self.stale = 0  # writes acknowledged by an old epoch after the new one's first
        self.writer = Writer(wait(self.settled, timeout)["endpoints"][0]["address"])

    def settled(self):
        # (Spread at first; a slot started again while its node was away stays where it went: a
        # standby, so that node may hold two.)
        st = self.c.vm("db").status()
        ok = st.get("primary") and st.get("readyReplicas") == self.replicas and st.get("endpoints")
        return st if ok else None

    def round(self, kind: str, lose) -> dict:
        """Loses the primary with `lose(instance)`; returns that instance."""
        writer = self.writer
        st = wait(self.settled, self.timeout)
        epoch = int(st["primaryEpoch"])
        primary = next(i for i in st["instances"] if i.get("role") == "primary")
        wait(lambda: writer.acks and writer.acks[-1][1] == epoch, self.timeout)
        wall, t0 = time.time(), time.monotonic()
        lose(primary)
        first = wait(lambda: next((t for t, e in writer.acks if e > epoch and t > t0), None),
                     self.timeout)
        self.stale += sum(1 for t, e in writer.acks if t > first and e <= epoch)
        st = wait(lambda: (lambda s: s if s.get("failover") and s["failover"][-1]["step"]
                           == "balancer-switched" and int(s["primaryEpoch"]) > epoch
                           else None)(self.c.vm("db").status()), self.timeout)
        steps = {s["step"]: at(s) for s in st["failover"]}
        figures = self.figures.setdefault(kind, {s: [] for s in STEPS + ("first write",)})
        for name in STEPS:
            figures[name].append((steps[name] - wall) * 1000)
        figures["first write"].append((first - t0) * 1000)
        print(f"{kind} {len(figures['first write']) - 1}: " +
              ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in figures.items()), flush=True)
        return primary

    def report(self, what: str) -> None:
        self.writer.stopping = True
        self.writer.join(5)
        for kind, steps in self.figures.items():
            print(f"{kind} ({len(steps['first write'])} failovers, {what}): " +
                  "; ".join(f"{k} p50 {statistics.median(v):.0f} / max {max(v):.0f} ms"
                            for k, v in steps.items()))
        print(f"writes acknowledged by an old epoch after the new one's first: {self.stale}; "
              f"writes failed in all: {self.writer.failed} of "
              f"{self.writer.failed + len(self.writer.acks)}")


def promotions(c) -> None:
    """Where the guests' promotions in place went, from the driver's line in each new primary's
    log ("blixard: promoted in place in N ms under epoch E: volume fenced ..., standby workload
    stopped ..., volume flushed and mounted ..., primary workload to ready ...")."""
    steps = {}
    for line in c.vm("db").logs():
        text = line.get("text", "")
        if not text.startswith("blixard: promoted in place in "):
            continue
        steps.setdefault("promotion", []).append(int(re.search(r"in place in (\d+) ms", text)[1]))
        for name, ms in re.findall(r"(volume fenced|standby workload stopped|volume flushed and "
                                   r"mounted|primary workload to ready|workload signalled to "
                                   r"take the role, to ready) (\d+) ms", text):
            steps.setdefault(name, []).append(int(ms))
    if steps:
        print(f"promotions in place ({len(steps['promotion'])}, the node's and the guest's "
              "clocks): " + "; ".join(f"{k} p50 {statistics.median(v):.0f} / max {max(v)} ms"
                                      for k, v in steps.items()))


def guests(rounds: int, promote_signal: bool) -> int:
    """Failovers of real guests on one node: the primary's qemu killed."""
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
        create_set(c, work, 2, "256M",
                   {"BLIXARD_PROMOTE_SIGNAL": "USR1"} if promote_signal else None)
        failovers = Failovers(c, 2, 300)
        for _ in range(rounds):
            failovers.round("guest", lambda p: os.kill(qemu_pid(p["name"]), signal.SIGKILL))
        failovers.report("TCG" + (", the workload signalled" if promote_signal else ""))
        promotions(c)
        c.delete_vm("db")
        wait(lambda: not c.vms(), 60)
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cut-rounds", type=int, default=5)
    ap.add_argument("--lease", default="4s")
    ap.add_argument("--guests", type=int, default=0, metavar="N",
                    help="N failovers of real guests on one node instead")
    ap.add_argument("--promote-signal", action="store_true",
                    help="with --guests: the workload takes the primary role while it runs "
                         "(BLIXARD_PROMOTE_SIGNAL=USR1) instead of being started again")
    args = ap.parse_args()
    if args.guests:
        return guests(args.guests, args.promote_signal)
    cluster = NetnsCluster(args.lease, "bf")
    try:
        for name in ("n1", "n2", "n3"):
            cluster.start(name)
        create_set(cluster.client, cluster.work, 3, "64M")
        failovers = Failovers(cluster.client, 3, 60)
        for _ in range(args.rounds):
            failovers.round("process", lambda p: os.kill(
                replica_pid(p["name"], b"BLIXARD_ROLE=primary"), signal.SIGKILL))
        for _ in range(args.rounds):
            lost = failovers.round("agent", lambda p: cluster.kill(p["node"]))
            cluster.start(lost["node"])
        for _ in range(args.cut_rounds):
            lost = failovers.round("cut", lambda p: cluster.cut(p["node"]))
            cluster.restore(lost["node"])
            wait(lambda: cluster.ready(lost["node"]), 60)
        failovers.report(f"lease {args.lease}")
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
