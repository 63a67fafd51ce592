"""Scenario 2's failover on three agents in network namespaces (issue 14's split-brain suite): a
set with a primary on a shared pool, a writer through the load balancer, and the primary's agent
killed (`kill -9`), cut off (its link down) or paused (SIGSTOP past the lease). In every case at
most one epoch writes at a time, no acknowledged write is lost, the balancer reaches the new
primary, and the old primary's slot comes back as a standby.

The replica is a small write-ahead log (a stand-in for PostgreSQL that shows every write): each
write through its port is appended to the set's volume with its epoch and the machine's monotonic
time and fsync'd before it is acknowledged, and the primary writes a line of its own every 20 ms
(as a database's background writer does) so a primary that outlives its fence shows in the log
even when nothing can reach it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from conftest import poll

LOG_DB = r"""
import http.server, os, signal, sys, threading, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
me = os.environ["BLIXARD_REPLICA"]
if os.environ.get("BLIXARD_ROLE") != "primary":
    print("standby", me, flush=True)
    while True:
        time.sleep(60)
epoch = os.environ["BLIXARD_EPOCH"]
fd = os.open(os.path.join(os.environ["BLIXARD_VOLUME"], "wal"),
             os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
lock = threading.Lock()
def append(kind, what):
    with lock:
        os.write(fd, f"{epoch} {time.monotonic():.6f} {me} {kind} {what}\n".encode())
        os.fsync(fd)
def background():
    n = 0
    while True:
        n += 1
        append("bg", n)
        time.sleep(0.02)
threading.Thread(target=background, daemon=True).start()
class Db(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        seq = self.path.rsplit("/", 1)[-1]
        append("write", seq)
        body = f"{me} {epoch}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("primary", me, "epoch", epoch, flush=True)
http.server.ThreadingHTTPServer(("", int(os.environ["PORT_5432"])), Db).serve_forever()
"""


class Writer:
    """Writes to `address` (the balancer, or a replica directly) in a loop; keeps what was
    acknowledged, by whom, when. Its writes are numbered from `first` + 1."""

    def __init__(self, address: str, first: int = 0):
        self.address = address
        self.acks: List[Tuple[float, int, str, int]] = []  # (time, seq, replica, epoch)
        self.failed = 0
        self._stop = threading.Event()
        self._seq = first
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._seq += 1
            try:
                req = urllib.request.Request(f"http://{self.address}/w/{self._seq}", data=b"",
                                             method="POST")
                with urllib.request.urlopen(req, timeout=0.5) as r:
                    replica, epoch = r.read().decode().split()
                self.acks.append((time.monotonic(), self._seq, replica, int(epoch)))
            except (OSError, http.client.HTTPException, ValueError):
                # (A connection cut mid-answer by a dying primary: not acknowledged.)
                self.failed += 1
                time.sleep(0.01)

    def first_ack_after(self, epoch: int) -> Optional[float]:
        """When the first write of an epoch newer than `epoch` was acknowledged."""
        return next((t for t, _, _, e in self.acks if e > epoch), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def read_wal(path: Path) -> List[Tuple[int, float, str, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        epoch, t, replica, kind, what = line.split()
        out.append((int(epoch), float(t), replica, kind, what))
    return out


def check_wal(path: Path, acks) -> None:
    """One writer at a time: in time order, the epochs never go back (an old primary writing
    after a newer one began is a split brain); every acknowledged write is in the log."""
    wal = sorted(read_wal(path), key=lambda x: x[1])
    newest = 0
    for epoch, t, replica, kind, what in wal:
        assert epoch >= newest, (
            f"split brain: {replica} (epoch {epoch}) wrote at {t:.3f} after epoch {newest} began")
        newest = epoch
    written = {int(what) for _, _, _, kind, what in wal if kind == "write"}
    lost = [seq for _, seq, _, _ in acks if seq not in written]
    assert not lost, f"acknowledged writes not in the log: {lost[:10]}"


def _status(client, name: str) -> dict:
    return client.vm(name).status()


def _primary(client, name: str) -> dict:
    st = _status(client, name)
    return next(i for i in st["instances"] if i.get("role") == "primary")


@pytest.mark.parametrize("fault", ["kill", "cut", "pause"])
def test_primary_failover_is_fenced(cluster, tmp_path, fault):
    for name in ("n1", "n2", "n3"):
        cluster.start_agent(name)
    client = cluster.client()
    shared = tmp_path / "shared"  # every agent's namespace sees it: the shared pool
    client.create_storage_pool("shared", str(shared), pool_type="shared-dir")
    config = tmp_path / "db.yaml"
    config.write_text(json.dumps({
        "memory": "64M", "ports": [5432],
        "command": ["/usr/bin/python3", "-c", LOG_DB]}))
    client.create_vm("db", config, replicas=3, storage_class="replicated", storage_size="1G",
                     primary_election_policy="oldest-first")
    st = poll(lambda: (lambda s: s if s.get("primary") and s.get("readyReplicas") == 3
                       and s.get("endpoints") else None)(_status(client, "db")), timeout=60)
    primary = _primary(client, "db")
    old, node = primary["name"], primary["node"]
    nodes = {i["node"] for i in st["instances"]}
    assert len(nodes) == 3, st  # spread: the standbys are elsewhere
    writer = Writer(st["endpoints"][0]["address"])
    # And straight to the primary's own port, past the balancer: a primary that outlived its
    # fence would take these.
    direct = Writer(f"{primary['address']}:{primary['hostPorts']['5432']}", first=1_000_000)
    try:
        poll(lambda: writer.acks, timeout=20)
        agent = cluster.agents[node]
        began = time.monotonic()
        if fault == "kill":
            agent.proc.send_signal(signal.SIGKILL)
            agent.proc.wait(10)
        elif fault == "cut":
            agent.cut()
        else:
            agent.proc.send_signal(signal.SIGSTOP)
        first = poll(lambda: writer.first_ack_after(1), timeout=30)
        took = first - began
        promoted = _primary(client, "db")
        new, new_node = promoted["name"], promoted["node"]
        assert new != old and new_node != node
        # The agent comes back (its link, its process): what it ran under the old epoch is
        # gone, and its slot rejoins as a standby.
        if fault == "cut":
            time.sleep(0.5)  # (the writer keeps writing meanwhile)
            agent.restore()
        elif fault == "pause":
            agent.proc.send_signal(signal.SIGCONT)
        else:
            cluster.start_agent(node)
        poll(lambda: (lambda s: s.get("readyReplicas") == 3 and any(
            i["name"] == old and i.get("role") == "replica" and i.get("phase") == "Running"
            for i in s["instances"]))(_status(client, "db")), timeout=60)
        time.sleep(0.5)  # writes after the old one came back: still only the new epoch's
    finally:
        writer.stop()
        direct.stop()
    st = _status(client, "db")
    epoch = int(st["primaryEpoch"])
    assert st["primary"] == new and epoch >= 2, st
    steps = [s["step"] for s in st["failover"]]
    assert steps[0] == "detected" and steps[-1] == "balancer-switched", steps
    check_wal(shared / "db-data" / "wal", writer.acks + direct.acks)
    new_first = writer.first_ack_after(1)
    late = [a for a in direct.acks if a[0] > new_first]
    assert not late, f"the old primary took writes after the new one's first: {late[:5]}"
    assert direct.acks, "the direct writer never reached the primary"
    assert {e for _, _, _, e in writer.acks} == {1, epoch}
    print(f"\n{fault}: first write accepted by the new primary {took * 1000:.0f} ms after the "
          f"fault; {writer.failed} writes failed meanwhile; steps "
          + ", ".join(f"{s['step']} +{s.get('elapsed', '0s')}" for s in st["failover"]))
