"""An agent that restarts takes its guests back (docs/vms.md, "Agent restarts"). A server and one
agent joined to it with the libvirt driver, on loopback; a 2-replica set of real guests serving
nginx's page through the server's balancer. The agent stopped for an upgrade (SIGUSR2) or killed
with SIGKILL, and started again within its node's lease, keeps the same guests (the same qemu
processes, the same replicas in `vm status`), and the balancer serves throughout. An agent back only after the lease lapsed finds its
guests given up: it destroys them, and the set's replicas start afresh. And a set's standby guest
on a joined agent is promoted in place over the agent channel, also after a restarted agent took
it back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import poll
from joined import Joined, get, restarts_keep_what_runs
from test_guests import promote_in_place, qemu_pid

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


@pytest.fixture
def setup(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("qemu:///system needs root")
    state = tmp_path / "libvirtd.state"
    subprocess.run([str(REPO / "scripts/libvirtd"), "start", str(state)], check=True)
    s = Joined(tmp_path, ["--vm-driver", "libvirt", "--vm-snapshots", "0"])
    try:
        s.start_server()
        s.start_agent()
        poll(lambda: s.phase() == "Ready", 30)
        yield s
    finally:
        s.stop()  # the agents' guests with them
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

    served = restarts_keep_what_runs(setup, guests, lb, replicas, 60)
    print(f"agent restart: {served} requests through the balancer, 0 failed")


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
    """As above, but the standby's agent (n2) restarts and takes its guest back before the
    primary's guest (on n1) is killed: the adopted standby is promoted in place."""
    setup.start_agent("n2")
    poll(lambda: setup.phase("n2") == "Ready", 30)

    def restart_the_standbys_agent(st: dict) -> None:
        old = next(i for i in st["instances"] if i.get("role") == "primary")
        standby = next(i for i in st["instances"] if i.get("role") == "replica")
        assert {old["node"], standby["node"]} == {"n1", "n2"}, st["instances"]  # spread
        pid = qemu_pid(standby["name"])
        agent = standby["node"]
        setup.agents[agent].send_signal(signal.SIGUSR2)
        assert setup.agents[agent].wait(timeout=30) == 0
        setup.start_agent(agent)
        poll(lambda: setup.phase(agent) == "Ready", 30)
        poll(lambda: "took back 1 replica(s)" in setup.agent_log(agent), 10)
        poll(lambda: ", 1 adopted" in setup.server_log(), 10)
        assert qemu_pid(standby["name"]) == pid  # taken back, not started again
        assert setup.status("db")["primaryEpoch"] == st["primaryEpoch"]  # a standby: no failover

    pool = Path(tempfile.mkdtemp(prefix="blixard-e2e-pool-"))
    pool.chmod(0o755)  # qemu (libvirt's user) opens the volume's image there
    try:
        promote_in_place(setup.cli, pool, tmp_path, before_kill=restart_the_standbys_agent)
    finally:
        shutil.rmtree(pool, ignore_errors=True)
