"""Scenario 1 with real guests, through the CLI as a user runs it: `blixard up --vm-driver
libvirt` (libvirtd started here if it is not running, and stopped again), the seed's webapp.nix
verbatim as three microVMs serving nginx's page through the load balancer, a scale, a rolling
update to a v2 page with a client polling the balancer (no failed request), a broken v3 that halts
while v2 keeps serving, a rollback, and no guest left behind after `vm delete`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from conftest import poll

REPO = Path(__file__).resolve().parents[2]
SEED_WEBAPP = REPO / "tests/data/specs/scenario1/webapp.nix"

# v2 and a broken v3: the same set, its page changed (v3's nginx refuses its own config).
PAGE = """{ pkgs, ... }: {
  microvm = { mem = 256; vcpu = 1; };
  services.nginx = {
    enable = true;
    virtualHosts.default.locations."/".%s;
  };
  networking.firewall.allowedTCPPorts = [ 80 ];
}
"""


@pytest.fixture
def guests(tmp_path):
    """`blixard` on a fresh data dir with the libvirt driver; yields a CLI runner."""
    state = tmp_path / "libvirtd.state"
    subprocess.run([str(REPO / "scripts/libvirtd"), "start", str(state)], check=True)
    env = dict(os.environ, BLIXARD_DATA_DIR=str(tmp_path / "data"))
    env.pop("BLIXARD_ADDR", None)
    env.pop("BLIXARD_TOKEN", None)

    def cli(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "blixard", *args], env=env,
                             capture_output=True, text=True, timeout=timeout)
        if check:
            assert out.returncode == 0, out.stderr + out.stdout
        return out

    try:
        cli("up", "--listen", "127.0.0.1:0", "--vm-driver", "libvirt")
        yield cli
    finally:
        cli("down", check=False)
        subprocess.run([str(REPO / "scripts/libvirtd"), "stop", str(state)], check=False)


def status(cli, name: str) -> dict:
    return json.loads(cli("vm", "status", name, "-o", "json").stdout)["status"]


def get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as r:
        return r.read().decode()


def domains() -> list[str]:
    """Our running domains: the replicas' guests, and for a few seconds after a shape's first
    start a template the driver boots and saves for snapshot starts (it runs until saved)."""
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--name"],
                         capture_output=True, text=True, check=True)
    return [n for n in out.stdout.split() if n.startswith("blixard-")]


class Poller(threading.Thread):
    """GETs the balancer until stopped, counting answers by body and failures."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.stop, self.ok, self.failed = address, threading.Event(), [], []

    def run(self):
        while not self.stop.is_set():
            try:
                self.ok.append(get(self.address))
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failed.append(repr(e))
            time.sleep(0.02)


def test_scenario1_seed_webapp_nix_as_real_guests(guests, tmp_path):
    cli = guests
    cli("vm", "create", "webapp", "--config", str(SEED_WEBAPP), "--replicas", "3", "--wait")
    st = status(cli, "webapp")
    assert st["readyReplicas"] == 3
    drivers = {i["driver"] + "/" + i["accel"] for i in st["instances"]}
    assert drivers <= {"libvirt/tcg", "libvirt/kvm"} and len(drivers) == 1, drivers
    text = cli("vm", "status", "webapp").stdout
    assert "running on [local]" in text and "libvirt/" in text, text
    lb = poll(lambda: status(cli, "webapp").get("endpoints"), 10)[0]["address"]
    page = get(lb)
    assert "Welcome to nginx!" in page, page
    assert "port 80 accepts connections" in cli("vm", "logs", "webapp-2").stdout
    poll(lambda: len(domains()) == 3, 60)  # (a snapshot template may still be being saved)

    cli("vm", "scale", "webapp", "--replicas", "4", "--wait")
    assert status(cli, "webapp")["readyReplicas"] == 4
    cli("vm", "scale", "webapp", "--replicas", "2", "--wait")
    poll(lambda: len(domains()) == 2, 30)

    v2, v3 = tmp_path / "webapp-v2.nix", tmp_path / "webapp-v3.nix"
    v2.write_text(PAGE % "return = \"200 'v2 page'\"")
    v3.write_text(PAGE % "proxyPass = \"nothttp://x\"")  # nginx: invalid URL prefix
    poller = Poller(lb)
    poller.start()
    try:
        cli("vm", "update", "webapp", "--config", str(v2), "--strategy", "rolling")
        assert get(lb) == "v2 page"
        broken = cli("vm", "update", "webapp", "--config", str(v3), check=False)
        assert broken.returncode == 9, broken.stdout + broken.stderr
        assert "halted" in broken.stdout + broken.stderr
        assert int(status(cli, "webapp")["servingRevision"]) == 2  # int64: a JSON string
        assert get(lb) == "v2 page"
    finally:
        poller.stop.set()
        poller.join()
    assert not poller.failed, poller.failed[:5]
    assert "v2 page" in poller.ok and len(poller.ok) > 50, len(poller.ok)
    print(f"rolling update over guests: {len(poller.ok)} requests, {len(poller.failed)} failed")

    cli("vm", "rollback", "webapp", "--to-revision", "1")
    assert "Welcome to nginx!" in get(lb)

    cli("vm", "delete", "webapp")
    poll(lambda: not domains(), 60)


# A replica of a set with a primary: a standby idles; the primary appends its epoch to a log on
# the volume once, acknowledges each POST with its epoch and answers GET with the whole log.
DB = r"""
import http.server, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if os.environ.get("BLIXARD_ROLE") != "primary":
    while True:
        time.sleep(60)
epoch = os.environ["BLIXARD_EPOCH"]
log = os.path.join(os.environ["BLIXARD_VOLUME"], "log")
with open(log, "a") as f:
    f.write(epoch + "\n"); f.flush(); os.fsync(f.fileno())
class Db(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.answer(epoch.encode())
    def do_GET(self):
        self.answer(",".join(open(log).read().split()).encode())
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Db).serve_forever()
"""


def qemu_pid(replica: str) -> int:
    """The pid of the qemu running `replica` ("db-1": domain "blixard-<hash>-db-1.<n>")."""
    for pidfile in Path("/run/libvirt/qemu").glob("*.pid"):
        if pidfile.stem.rsplit(".", 1)[0].endswith("-" + replica):
            pid = int(pidfile.read_text())
            os.kill(pid, 0)
            return pid
    raise AssertionError(f"no qemu runs {replica}")


class Writer(threading.Thread):
    """POSTs to the balancer until stopped: (time, epoch) of each acknowledged write."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.stop, self.acks = address, threading.Event(), []

    def run(self):
        while not self.stop.is_set():
            try:
                req = urllib.request.Request(f"http://{self.address}/w", data=b"", method="POST")
                with urllib.request.urlopen(req, timeout=0.5) as r:
                    self.acks.append((time.monotonic(), int(r.read())))
            except Exception:  # noqa: BLE001 - writes in flight on the dying primary fail
                time.sleep(0.005)


def test_a_guest_standby_is_promoted_in_place_when_the_primary_dies(guests, tmp_path):
    """Scenario 2 on guests: the primary's qemu killed, its standby guest (booted with the set's
    volume attached, unmounted) is promoted in place (a role change: no new guest, no restart)
    under the next epoch; the balancer reaches it, no write is acknowledged by the old epoch
    after the new one's first, and the new primary reads what the old one wrote."""
    cli = guests
    # qemu (libvirt's user) opens the volume's image in the pool: not under pytest's 0700 tmp.
    pool = Path(tempfile.mkdtemp(prefix="blixard-e2e-pool-"))
    pool.chmod(0o755)
    try:
        promote_in_place(cli, pool, tmp_path)
    finally:
        shutil.rmtree(pool, ignore_errors=True)


def promote_in_place(cli, pool: Path, tmp_path: Path,
                     before_kill: Callable[[dict], None] | None = None) -> None:
    """The set `db` on `pool`; its primary's qemu killed once `before_kill` (if any) had the
    settled status; its standby promoted in place."""
    cli("storage", "pool", "create", "shared", "--type", "shared-dir", "--path", str(pool))
    config = tmp_path / "db.json"
    config.write_text(json.dumps({"memory": "256M", "ports": [5432],
                                  "command": ["/usr/bin/python3", "-c", DB]}))
    cli("vm", "create", "db", "--config", str(config), "--replicas", "2", "--storage-class",
        "replicated", "--storage-size", "64M", "--primary-election-policy", "oldest-first")

    def settled():
        st = status(cli, "db")
        return st if st.get("primary") and st.get("readyReplicas") == 2 and \
            st.get("endpoints") else None

    st = poll(settled, 180, 0.5)
    epoch = int(st["primaryEpoch"])
    old = next(i for i in st["instances"] if i.get("role") == "primary")
    standby = next(i for i in st["instances"] if i.get("role") == "replica")
    lb = st["endpoints"][0]["address"]
    if before_kill:
        before_kill(st)
    standby_pid = qemu_pid(standby["name"])
    writer = Writer(lb)
    writer.start()
    try:
        poll(lambda: writer.acks and writer.acks[-1][1] == epoch, 30)
        t0 = time.monotonic()
        os.kill(qemu_pid(old["name"]), signal.SIGKILL)
        first = poll(lambda: next((t for t, e in writer.acks if e > epoch and t > t0), None),
                     120, 0.02)
        poll(lambda: sum(1 for t, e in writer.acks if t > first) >= 20, 30)
    finally:
        writer.stop.set()
        writer.join()
    stale = [e for t, e in writer.acks if t > first and e <= epoch]
    assert not stale, f"{len(stale)} writes acknowledged by the old epoch after the new one's"
    st = poll(lambda: (lambda s: s if s.get("primary") == standby["name"] and
                       s["failover"][-1]["step"] == "balancer-switched" else None)(
        status(cli, "db")), 60, 0.2)
    assert int(st["primaryEpoch"]) == epoch + 1
    steps = {s["step"]: s["message"] for s in st["failover"]}
    assert "promoted in place" in steps["promoted"], st["failover"]
    assert list(steps) == ["detected", "promoting", "fenced", "volume-attached", "promoted",
                           "balancer-switched"], st["failover"]
    promoted = next(i for i in st["instances"] if i["name"] == standby["name"])
    # The same run as before: not started again.
    assert promoted["role"] == "primary" and promoted["startedAt"] == standby["startedAt"]
    assert promoted.get("restarts", 0) == standby.get("restarts", 0)
    assert qemu_pid(standby["name"]) == standby_pid  # the same guest
    # The old primary's epoch line, then the new one's: the volume moved with the role.
    assert get(lb) == f"{epoch},{epoch + 1}"
    print(f"guest failover: first write through the balancer {(first - t0) * 1000:.0f} ms after "
          f"the kill; steps: " + "; ".join(f"{s['step']} {s['message']}" for s in st["failover"]))
    # The old primary's slot comes back as a standby.
    poll(lambda: (lambda s: s.get("readyReplicas") == 2 and s)(status(cli, "db")), 180, 0.5)
    cli("vm", "delete", "db")
    poll(lambda: not domains(), 60)
