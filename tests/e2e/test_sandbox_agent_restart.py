"""A restarted agent takes its sandboxed replicas back, as it does its guests (docs/vms.md, "Agent
restarts"). A server and one agent joined to it with the sandbox driver (no guests: fast), on
loopback; a 2-replica set serving HTTP through the server's balancer while a client polls it. The
agent stopped for an upgrade (SIGUSR2) or killed with SIGKILL, and started again within its node's
lease, keeps the same replica processes (their console, exit and stop its own again), and the
balancer serves throughout. An agent back only after the lease lapsed finds its replicas given
up: it kills them, and the set's replicas start afresh."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from conftest import poll
from joined import Joined, get, restarts_keep_what_runs

MARK = f"e2e-keep-{uuid.uuid4().hex[:12]}"

PAGE = f"""\
type: long-lived
memory: 64M
ports: [80]
env:
  E2E_MARK: {MARK}
command:
  - /usr/bin/python3
  - -c
  - |
    import http.server, os, signal, sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    hits = 0
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            global hits
            hits += 1
            print("hit", hits, flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"kept")
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("", int(os.environ["PORT_80"])), Page).serve_forever()
"""


@pytest.fixture
def setup(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the sandbox's replicas need a root agent")
    s = Joined(tmp_path)
    try:
        s.start_server()
        s.start_agent()
        poll(lambda: s.phase() == "Ready", 30)
        yield s
    finally:
        s.stop()  # the agent's replicas with it
        # Nothing of the test's outlives it (SIGTERM stops everything).
        poll(lambda: not replicas(), 10)


def replicas() -> dict[str, int]:
    """The replica processes of this test (their init, by the set's replica), found by the mark in
    their environment."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if f"E2E_MARK={MARK}".encode() not in env or stat[stat.rfind(")") + 2] == "Z":
            continue
        name = next(e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"BLIXARD_REPLICA="))
        # Its init (PID 1 of its namespace) only, not a thread or child.
        if any(line.startswith("NSpid:") and line.split()[-1] == "1"
               for line in (proc / "status").read_text().splitlines()):
            found[name] = int(proc.name)
    return found


def hits(setup, after: int = 0) -> dict[str, int]:
    """How many `hit` console lines of each replica the server holds past sequence `after`."""
    count: dict[str, int] = {}
    for line in setup.client().vm("web").logs(after=after):
        if line["text"].startswith("hit "):
            count[line["instance"]] = count.get(line["instance"], 0) + 1
    return count


def last_sequence(setup) -> int:
    lines = list(setup.client().vm("web").logs())
    return max((line["sequence"] for line in lines), default=0)


def test_a_restarted_agent_takes_its_sandboxed_replicas_back(setup, tmp_path):
    config = tmp_path / "web.yaml"
    config.write_text(PAGE)
    setup.cli("vm", "create", "web", "--config", str(config), "--replicas", "2", "--wait")
    before = setup.status()
    names = sorted(i["name"] for i in before["instances"])
    assert len(names) == 2, before
    poll(lambda: len(replicas()) == 2, 10)
    lb = poll(lambda: setup.status().get("endpoints"), 10)[0]["address"]
    assert get(lb) == "kept"
    # What the next agent acts on is root's alone.
    kept = setup.tmp / "agent" / "instances" / "kept"
    records = sorted(kept.glob("*.pb"))
    assert len(records) == 2, records
    assert kept.stat().st_uid == 0 and kept.stat().st_mode & 0o077 == 0
    for record in records:
        assert record.stat().st_uid == 0 and record.stat().st_mode & 0o077 == 0, record

    def taken_back(seen: int) -> None:
        # Their consoles are the new agent's: lines come from both replicas again.
        poll(lambda: len(hits(setup, seen)) == 2, 20)
        # Where they ran.
        assert [i.get("node") for i in setup.status()["instances"]] == [
            i.get("node") for i in before["instances"]]

    served = restarts_keep_what_runs(setup, replicas, lb, names, 30,
                                     before_start=lambda: last_sequence(setup),
                                     after_start=taken_back)
    print(f"sandbox agent restart: {served} requests through the balancer, 0 failed")
