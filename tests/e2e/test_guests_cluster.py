"""Scenario 1 as written, with real guests on three agents, through the CLI: `ssd-pool` and
`web-vlan` made, then the seed's `webapp.nix` as three microVMs, one per node, each with a volume
and an address on web-vlan, serving nginx's page through the server's load balancer; reached
across nodes by address over the agents' VXLAN; scaled to 5 and back; rolled to a v2 page while a
client polls the balancer (no request fails); a broken v3 halts and reverts while v2 is served
throughout; a guest whose qemu is killed from the host leaves the balancer and is replaced.

Each agent runs in a network namespace of its own with a libvirtd of its own there
(conftest.Libvirtd), as a node's libvirtd shares its host's network."""

from __future__ import annotations

import json
import os
import re
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

from conftest import poll

REPO = Path(__file__).resolve().parents[2]
NODES = ("node1", "node2", "node3")

# v2 names the guest that answers (its host name is its replica's), and its /peer is what the
# guest at PEER (a replica's address on web-vlan) serves: a request from one guest to another over
# the network. v3's nginx refuses its own config (an invalid URL prefix): its guests exit before
# they are ready.
PAGE = """{ pkgs, ... }: {
  microvm = { mem = 256; vcpu = 1; };
  services.nginx = {
    enable = true;
    virtualHosts.default.locations."/".%s;
    virtualHosts.default.locations."/peer".proxyPass = "http://PEER/";
  };
  networking.firewall.allowedTCPPorts = [ 80 ];
}
"""
V2 = PAGE % "return = \"200 'v2 page from $hostname'\""
V3 = PAGE % "proxyPass = \"nothttp://x\""


@pytest.fixture
def ssd_pool():
    """The pool's directory (every agent's: a `dir` pool is a directory on each node, and these
    nodes share a host). qemu (libvirt's user) opens the volumes: not under pytest's 0700 tmp.
    Asked for before `cluster`, so it goes after the guests."""
    path = Path(tempfile.mkdtemp(prefix="blixard-e2e-ssd-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def get(url: str, timeout: float = 5) -> str:
    if "/" not in url:
        url += "/"
    with urllib.request.urlopen(f"http://{url}", timeout=timeout) as r:
        return r.read().decode()


class Poller(threading.Thread):
    """GETs the balancer (a new connection each) until stopped: answers and failures."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.halt, self.ok, self.failed = address, threading.Event(), [], []

    def run(self):
        while not self.halt.is_set():
            try:
                self.ok.append(get(self.address))
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failed.append(f"{time.monotonic():.3f} {e!r}")
            time.sleep(0.02)

    def stop(self) -> "Poller":
        self.halt.set()
        self.join()
        return self


def st_by_name(st: dict) -> dict:
    return {i["name"]: i for i in st["instances"]}


def qemu_pid(replica: str) -> int | None:
    """The host pid of the qemu running `replica` (domain "blixard-<hash>-webapp-2.<run>"),
    whichever node's libvirtd started it."""
    name = re.compile(r"guest=blixard-[0-9a-f]{8}-" + re.escape(replica) + r"\.\d+(,|$)")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and any(
                name.search(a.decode(errors="replace")) for a in argv):
            return int(entry)
    return None


def test_scenario1_as_written_on_three_agents_with_real_guests(ssd_pool, cluster):
    for name in NODES:
        cluster.start_agent(name, libvirt=True)
    env = dict(os.environ, BLIXARD_ADDR=cluster.address, BLIXARD_TOKEN=cluster.token)

    def cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "blixard", *args], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=timeout)
        if check:
            assert out.returncode == 0, out.stderr + out.stdout
        return out

    def status() -> dict:
        return json.loads(cli("vm", "status", "webapp", "-o", "json").stdout)["status"]

    def ready(count: int):
        st = status()
        return st if st.get("phase") == "Running" and st.get("readyReplicas") == count and len(
            st.get("instances", [])) == count else None

    def domains() -> int:
        return sum(len(a.libvirtd.virsh("list", "--name").stdout.split())
                   for a in cluster.agents.values())

    def from_node(node: str, url: str) -> str:
        """GET `url` from inside `node`'s network namespace (the replicas' network is there)."""
        fetch = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                 "sys.argv[1], timeout=5).read().decode())")
        out = subprocess.run(["ip", "netns", "exec", cluster.agents[node].netns, sys.executable,
                              "-c", fetch, f"http://{url}/"], capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else f"failed: {out.stderr}"

    took = {}
    t0 = time.monotonic()
    # As the seed has it.
    cli("storage", "pool", "create", "ssd-pool", "--type", "dir", "--path", str(ssd_pool))
    cli("network", "create", "web-vlan", "--subnet", "10.88.0.0/24")
    cli("vm", "create", "webapp", "--config", "tests/data/specs/scenario1/webapp.nix",
        "--replicas", "3", "--storage-pool", "ssd-pool", "--network", "web-vlan")
    cli("vm", "start", "webapp")
    st = poll(lambda: ready(3), 240, 0.5)
    took["create 3"] = time.monotonic() - t0
    by_name = st_by_name(st)
    assert sorted(i["node"] for i in st["instances"]) == list(NODES), st
    accel = {i["driver"] + "/" + i["accel"] for i in st["instances"]}
    assert accel <= {"libvirt/tcg", "libvirt/kvm"} and len(accel) == 1, accel
    text = cli("vm", "status", "webapp").stdout
    assert "running on [node1, node2, node3]" in text and "libvirt/" in text, text
    addresses = {n: i["networkAddress"] for n, i in by_name.items()}
    assert sorted(addresses.values()) == ["10.88.0.2", "10.88.0.3", "10.88.0.4"], st
    assert domains() == 3

    # nginx's page from each guest (the ports the balancer sends to) and through the balancer.
    for i in st["instances"]:
        page = get(f"{i['address']}:{i['hostPorts']['80']}")
        assert "Welcome to nginx!" in page, (i["name"], page)
    lb = poll(lambda: status().get("endpoints"), 10)[0]["address"]
    assert all("Welcome to nginx!" in get(lb) for _ in range(6))
    # Each guest by its address on web-vlan, from its node (a node reaches its own guests; guests
    # reach each other across nodes: below, once v2 says who answers).
    for n, i in by_name.items():
        assert "Welcome to nginx!" in from_node(i["node"], addresses[n]), n
    # Each guest's volume, made on its node in the pool.
    volumes = json.loads(cli("storage", "volume", "list", "-o", "json").stdout)["items"]
    assert {v["metadata"]["name"]: v["status"]["node"] for v in volumes} == {
        n: i["node"] for n, i in by_name.items()}
    assert sorted(p.name for p in ssd_pool.glob("*.img")) == [
        "webapp-1.img", "webapp-2.img", "webapp-3.img"]

    # Scale to 5 and back to 3.
    t = time.monotonic()
    cli("vm", "scale", "webapp", "--replicas", "5")
    st = poll(lambda: ready(5), 300, 0.5)
    took["scale to 5"] = time.monotonic() - t
    assert {i["node"] for i in st["instances"]} == set(NODES), st
    assert all("Welcome to nginx!" in get(lb) for _ in range(10))
    cli("vm", "scale", "webapp", "--replicas", "3")
    st = poll(lambda: ready(3), 120, 0.5)
    assert sorted(i["name"] for i in st["instances"]) == ["webapp-1", "webapp-2", "webapp-3"]
    poll(lambda: domains() == 3, 60, 0.5)

    # A rolling update to v2 while a client polls the balancer: no request fails. (A set with
    # volumes rolls in place: each replica leaves the balancer, stops, and starts as v2.)
    peer = "webapp-3"
    (cluster.client_dir / "webapp-v2.nix").write_text(V2.replace("PEER", addresses[peer]))
    t = time.monotonic()
    poller = Poller(lb)
    poller.start()
    try:
        out = cli("vm", "update", "webapp", "--config", str(cluster.client_dir / "webapp-v2.nix"),
                  "--strategy", "rolling").stdout
    finally:
        poller.stop()
    took["rolling update"] = time.monotonic() - t
    assert "revision 2 is out" in out, out
    assert poller.failed == [], poller.failed[:5]
    assert len(poller.ok) > 50 and any("Welcome to nginx!" in a for a in poller.ok), len(poller.ok)
    st = poll(lambda: ready(3), 30, 0.5)
    assert [int(i["revision"]) for i in st["instances"]] == [2, 2, 2], st
    seen = poll(lambda: (s := {get(lb) for _ in range(9)}) == {
        f"v2 page from webapp-{k}" for k in (1, 2, 3)} and s, 20)
    print(f"rolling update: {len(poller.ok)} requests, 0 failed; {sorted(seen)}")
    # Each guest fetches webapp-3's page by its address: from the other two nodes' guests that
    # crosses the agents' VXLAN overlay.
    for n, i in st_by_name(st).items():
        via = get(f"{i['address']}:{i['hostPorts']['80']}/peer")
        assert via == f"v2 page from {peer}", (n, i["node"], by_name[peer]["node"], via)

    # A broken v3: the rollout halts and reverts to v2, which is served throughout.
    (cluster.client_dir / "webapp-v3.nix").write_text(V3.replace("PEER", addresses[peer]))
    t = time.monotonic()
    poller = Poller(lb)
    poller.start()
    try:
        broken = cli("vm", "update", "webapp", "--config",
                     str(cluster.client_dir / "webapp-v3.nix"), "--auto-revert", check=False)
        assert broken.returncode == 9, broken.stdout + broken.stderr
        assert "halted" in broken.stdout + broken.stderr, broken.stdout + broken.stderr
        st = poll(lambda: (s := ready(3)) and "reverted to revision 2" in s.get("rollout", "")
                  and all(int(i["revision"]) == 2 for i in s["instances"]) and s, 180, 0.5)
    finally:
        poller.stop()
    took["broken update, reverted"] = time.monotonic() - t
    assert int(st["servingRevision"]) == 2 and int(st["revision"]) == 3, st
    assert poller.failed == [], poller.failed[:5]
    assert poller.ok and all(a.startswith("v2 page from ") for a in poller.ok), set(poller.ok)

    # A guest's qemu killed from the host: it leaves the balancer and is replaced.
    victim = next(i for i in st["instances"] if i["name"] == "webapp-2")
    pid = qemu_pid("webapp-2")
    assert pid, "webapp-2's qemu not found"
    poller = Poller(lb)
    poller.start()
    try:
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # Not ready once its node reported the exit, and the balancer sends to the others only.
        gone = poll(lambda: (s := status())["readyReplicas"] == 2 and s, 10, 0.05)
        took["killed guest not ready"] = time.monotonic() - t
        assert {get(lb) for _ in range(6)} == {"v2 page from webapp-1", "v2 page from webapp-3"}
        st = poll(lambda: (s := ready(3)) and next(
            i for i in s["instances"] if i["name"] == "webapp-2").get("restarts", 0) >= 1
            and s, 180, 0.5)
        took["killed guest replaced"] = time.monotonic() - t
        poll(lambda: "v2 page from webapp-2" in {get(lb) for _ in range(6)}, 20)
    finally:
        poller.stop()
    assert next(i for i in gone["instances"] if i["name"] == "webapp-2")["phase"] != "Running", gone
    replaced = next(i for i in st["instances"] if i["name"] == "webapp-2")
    assert replaced["node"] == victim["node"], (victim, replaced)  # its volume is there
    assert replaced["networkAddress"] == victim["networkAddress"]
    new_pid = qemu_pid("webapp-2")
    assert new_pid and new_pid != pid
    # Only connections already on their way to the killed guest may fail.
    assert len(poller.failed) <= 2, poller.failed
    print(f"killed guest: {len(poller.ok)} requests, {len(poller.failed)} failed")
    assert from_node(replaced["node"], replaced["networkAddress"]) == "v2 page from webapp-2"

    cli("vm", "delete", "webapp")
    poll(lambda: domains() == 0, 60, 0.5)
    print("scenario 1 on three agents with guests: " + ", ".join(
        f"{k} {v:.1f} s" for k, v in took.items()))
