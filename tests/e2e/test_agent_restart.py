"""An agent that restarts takes its guests back (docs/vms.md, "Agent restarts"). A server and one
agent joined to it with the libvirt driver, on loopback; a 2-replica set of real guests serving
nginx's page through the server's balancer. The agent stopped for an upgrade (SIGUSR2) or killed
with SIGKILL, and started again within its node's lease, keeps the same guests (the same qemu processes, the same replicas in `vm
status`), and the balancer serves throughout. An agent back only after the lease lapsed finds its
guests given up: it destroys them, and the set's replicas start afresh. And a set's standby guest
on a joined agent is promoted in place over the agent channel, also after a restarted agent took
it back."""

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

import pytest

import blixard

from blixard.cli import find_agent
from conftest import _stop, poll
from test_guests import DB, Writer, promote_in_place, qemu_pid

REPO = Path(__file__).resolve().parents[2]
GUESTS = Path("/var/lib/blixard-guests")  # the libvirt driver's files

PAGE = """{ pkgs, ... }: {
  microvm = { mem = 256; vcpu = 1; };
  services.nginx = {
    enable = true;
    virtualHosts.default.locations."/".return = "200 'kept'";
  };
  networking.firewall.allowedTCPPorts = [ 80 ];
}
"""


class Setup:
    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.server: subprocess.Popen | None = None
        self.agents: dict[str, subprocess.Popen] = {}
        self.address = self.token = ""

    @property
    def agent(self) -> subprocess.Popen:
        return self.agents["n1"]

    def start_server(self) -> None:
        data = self.tmp / "server"
        data.mkdir()
        with open(data / "server.log", "wb") as log:
            self.server = subprocess.Popen(
                [find_agent(), "--server", "--no-local-node", "--listen", "127.0.0.1:0",
                 "--data-dir", str(data), "--node-lease", "8s"],
                stdout=log, stderr=subprocess.STDOUT)
        state = data / "server.json"
        poll(lambda: state.exists() or self.server.poll() is not None, 30)
        info = json.loads(state.read_text())
        self.address, self.token = info["address"], info["token"]

    def agent_dir(self, name: str) -> Path:
        return self.tmp / ("agent" if name == "n1" else f"agent-{name}")

    def start_agent(self, name: str = "n1") -> None:
        data = self.agent_dir(name)
        data.mkdir(exist_ok=True)
        with open(data / "agent.log", "ab") as log:
            self.agents[name] = subprocess.Popen(
                [find_agent(), "--join", self.address, "--token", self.token, "--name", name,
                 "--data-dir", str(data), "--vm-driver", "libvirt", "--vm-snapshots", "0"],
                stdout=log, stderr=subprocess.STDOUT)

    def agent_log(self, name: str = "n1") -> str:
        return (self.agent_dir(name) / "agent.log").read_text(errors="replace")

    def server_log(self) -> str:
        return (self.tmp / "server" / "server.log").read_text(errors="replace")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, BLIXARD_ADDR=self.address, BLIXARD_TOKEN=self.token)
        out = subprocess.run([sys.executable, "-m", "blixard", *args], env=env,
                             capture_output=True, text=True, timeout=240)
        if check:
            assert out.returncode == 0, out.stderr + out.stdout
        return out

    def phase(self, name: str = "n1") -> str:
        nodes = blixard.connect(self.address, token=self.token).nodes()
        return next((n.get("status", {}).get("phase", "") for n in nodes
                     if n["metadata"]["name"] == name), "")

    def status(self, vm: str = "web") -> dict:
        return json.loads(self.cli("vm", "status", vm, "-o", "json").stdout)["status"]


@pytest.fixture
def setup(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("qemu:///system needs root")
    state = tmp_path / "libvirtd.state"
    subprocess.run([str(REPO / "scripts/libvirtd"), "start", str(state)], check=True)
    s = Setup(tmp_path)
    try:
        s.start_server()
        s.start_agent()
        poll(lambda: s.phase() == "Ready", 30)
        yield s
    finally:
        for agent in s.agents.values():
            _stop(agent)  # its guests with it
        _stop(s.server)
        subprocess.run([str(REPO / "scripts/libvirtd"), "stop", str(state)], check=False)


def guests() -> dict[str, int]:
    """Our running domains and their qemu processes."""
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--name"],
                         capture_output=True, text=True, check=True)
    found = {}
    for name in out.stdout.split():
        if name.startswith("blixard-"):
            try:
                found[name] = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
            except (OSError, ValueError):
                found[name] = 0
    return found


def get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as r:
        return r.read().decode()


class Poller(threading.Thread):
    """GETs the balancer until stopped, counting answers and failures."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.stop, self.ok, self.failed = address, threading.Event(), 0, []

    def run(self):
        while not self.stop.is_set():
            try:
                assert get(self.address) == "kept"
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failed.append(repr(e))
            time.sleep(0.05)


def test_a_restarted_agent_takes_its_guests_back(setup, tmp_path):
    config = tmp_path / "web.nix"
    config.write_text(PAGE)
    setup.cli("vm", "create", "web", "--config", str(config), "--replicas", "2", "--wait")
    before = setup.status()
    replicas = sorted(i["name"] for i in before["instances"])
    assert len(replicas) == 2, before
    running = poll(lambda: len(guests()) == 2 and guests(), 30)
    assert all(running.values()), running
    lb = poll(lambda: setup.status().get("endpoints"), 10)[0]["address"]
    assert get(lb) == "kept"
    # What the next agent acts on is root's alone, apart from what qemu's user may write.
    records = [p for name in replicas for p in GUESTS.glob(f"*/kept/{name}.*.pb")]
    assert len(records) == 2, records
    for record in records:
        assert record.stat().st_uid == 0 and record.stat().st_mode & 0o077 == 0, record
        assert record.parent.stat().st_mode & 0o077 == 0, record.parent
    assert not list(records[0].parent.parent.glob("replicas/*/*.pb"))

    poller = Poller(lb)
    poller.start()
    try:
        # Stopped for an upgrade (SIGUSR2), then killed (no goodbye): each time its guests run on
        # under libvirtd, the server holds them, and the agent started again takes them back.
        for stop, taken in (("SIGUSR2", 1), ("SIGKILL", 2)):
            setup.agent.send_signal(getattr(signal, stop))
            assert setup.agent.wait(timeout=30) == (0 if stop == "SIGUSR2" else -signal.SIGKILL)
            assert guests() == running, stop
            # Shown as held while the agent is away.
            held = poll(lambda: [i for i in setup.status()["instances"]
                                 if "is disconnected: held" in i.get("message", "")], 10)
            assert sorted(i["name"] for i in held) == replicas, held
            setup.start_agent()
            poll(lambda: setup.phase() == "Ready", 30)
            poll(lambda: setup.agent_log().count("took back 2 replica(s)") == taken, 10)
            poll(lambda: setup.server_log().count(", 2 adopted") == taken, 10)
            ok_after = poller.ok
            poll(lambda: poller.ok > ok_after + 10, 20)  # served under the new agent too
    finally:
        poller.stop.set()
        poller.join()
    assert not poller.failed, poller.failed[:5]
    assert guests() == running, "a guest was restarted"
    after = setup.status()
    assert sorted(i["name"] for i in after["instances"]) == replicas, after
    assert after["readyReplicas"] == 2, after

    # The adopted guests are the agent's again: a scale-down stops one of them.
    setup.cli("vm", "scale", "web", "--replicas", "1", "--wait")
    poll(lambda: len(guests()) == 1, 60)
    assert set(guests().items()) < set(running.items())

    # Back only after the lease lapsed: the server gave the guest up and placed the replica
    # again (nowhere to go until the node is back); the agent destroys the old guest.
    kept = guests()
    setup.agent.kill()
    setup.agent.wait()
    poll(lambda: setup.phase() == "Lost", 20)
    setup.start_agent()
    poll(lambda: setup.phase() == "Ready", 30)
    fresh = poll(lambda: setup.status().get("readyReplicas") == 1
                 and len(guests()) == 1 and guests() != kept and guests(), 120)
    assert not set(fresh.items()) & set(kept.items())
    assert get(lb) == "kept"
    print(f"agent restart: {poller.ok} requests through the balancer, 0 failed")


def test_a_standby_guest_on_a_joined_agent_is_promoted_in_place(setup, tmp_path):
    """The promotion in place of test_guests.py, over the agent channel: the set's guests run on a
    joined agent, not the server's own node."""
    pool = Path(tempfile.mkdtemp(prefix="blixard-e2e-pool-"))
    pool.chmod(0o755)  # qemu (libvirt's user) opens the volume's image there
    try:
        promote_in_place(setup.cli, pool, tmp_path)
    finally:
        shutil.rmtree(pool, ignore_errors=True)


def test_a_standby_guest_taken_back_by_a_restarted_agent_is_promoted_in_place(setup, tmp_path):
    """The standby's agent (n2) restarts and takes its guest back; then the primary's guest (on
    n1) is killed, and the adopted standby is promoted in place: the same qemu, the same run,
    the next epoch, and the old primary's writes on the volume."""
    setup.start_agent("n2")
    poll(lambda: setup.phase("n2") == "Ready", 30)
    pool = Path(tempfile.mkdtemp(prefix="blixard-e2e-pool-"))
    pool.chmod(0o755)  # qemu (libvirt's user) opens the volume's image there
    try:
        setup.cli("storage", "pool", "create", "shared", "--type", "shared-dir",
                  "--path", str(pool))
        config = tmp_path / "db.json"
        config.write_text(json.dumps({"memory": "256M", "ports": [5432],
                                      "command": ["/usr/bin/python3", "-c", DB]}))
        setup.cli("vm", "create", "db", "--config", str(config), "--replicas", "2",
                  "--storage-class", "replicated", "--storage-size", "64M",
                  "--primary-election-policy", "oldest-first")

        def settled():
            st = setup.status("db")
            return st if st.get("primary") and st.get("readyReplicas") == 2 and \
                st.get("endpoints") else None

        st = poll(settled, 180, 0.5)
        epoch = int(st["primaryEpoch"])
        old = next(i for i in st["instances"] if i.get("role") == "primary")
        standby = next(i for i in st["instances"] if i.get("role") == "replica")
        assert {old["node"], standby["node"]} == {"n1", "n2"}, st["instances"]  # spread
        standby_pid = qemu_pid(standby["name"])
        lb = st["endpoints"][0]["address"]

        # The standby's agent goes and comes back: its guest is taken back, not restarted.
        agent = standby["node"]
        setup.agents[agent].send_signal(signal.SIGUSR2)
        assert setup.agents[agent].wait(timeout=30) == 0
        setup.start_agent(agent)
        poll(lambda: setup.phase(agent) == "Ready", 30)
        poll(lambda: "took back 1 replica(s)" in setup.agent_log(agent), 10)
        poll(lambda: ", 1 adopted" in setup.server_log(), 10)
        assert qemu_pid(standby["name"]) == standby_pid
        assert int(setup.status("db")["primaryEpoch"]) == epoch  # no failover for a standby

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
            setup.status("db")), 60, 0.2)
        assert int(st["primaryEpoch"]) == epoch + 1
        steps = {s["step"]: s["message"] for s in st["failover"]}
        assert "promoted in place" in steps["promoted"], st["failover"]
        promoted = next(i for i in st["instances"] if i["name"] == standby["name"])
        assert promoted["role"] == "primary" and promoted["startedAt"] == standby["startedAt"]
        assert qemu_pid(standby["name"]) == standby_pid  # the adopted guest itself
        assert get(lb) == f"{epoch},{epoch + 1}"  # the old primary's line, then its own
        print(f"adopted standby promoted: first write {(first - t0) * 1000:.0f} ms after the kill")
        setup.cli("vm", "delete", "db")
        poll(lambda: not guests(), 60)
    finally:
        shutil.rmtree(pool, ignore_errors=True)
